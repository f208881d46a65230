"""A real browser talks to the embedded engine over WebRTC, as to OpenAI's realtime API."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.support.browser import (
    browser_daemon,
    chrome,
    inbound_audio,
    log_in,
    speech_wav,
    wait_for,
)

pytestmark = pytest.mark.e2e
TOKEN = "realtime-test-token"
EVENT_SECONDS = 15.0

# The page's own offer again, with the key the page minted and used: what a replay would do.
_OFFER_AGAIN = """
const done = arguments[arguments.length - 1];
const key = document.getElementById("key").dataset.value;
const sdp = window.sipaiTestPeers[window.sipaiTestPeers.length - 1].localDescription.sdp;
fetch("/v1/realtime/calls", {
  method: "POST",
  headers: {Authorization: "Bearer " + key, "Content-Type": "application/sdp"},
  body: sdp,
  credentials: "omit",
}).then(async (r) => done(JSON.stringify({status: r.status, body: await r.text()})),
        (e) => done(JSON.stringify({status: 0, body: String(e)})));
"""


def _events(driver: WebDriver) -> list[str]:
    """The types of the server events the page listed, in order."""
    types: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#events li')].map((li) => li.dataset.type)"
    )
    return types


def test_a_page_talks_to_the_engine_with_an_ephemeral_key(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """/console/realtime.html mints a single-use key, offers with it alone, and on
    "response.create" the engine's events come over the data channel and its voice over the
    track; the same key offered again is refused with 401; "Hang up" ends the session."""
    wav = tmp_path / "quiet.wav"
    speech_wav(wav, [1.0])
    with browser_daemon(daemon_env, TOKEN) as daemon, chrome(wav) as driver:
        api = daemon.base_url
        log_in(driver, api, TOKEN)
        driver.get(api + "/console/realtime.html")
        wait_for(driver, "return !document.getElementById('connect').disabled", 10)
        driver.find_element(By.ID, "connect").click()
        wait_for(driver, "return !document.getElementById('respond').disabled", 15)
        assert driver.find_element(By.ID, "call-state").text == "connected"
        key = driver.execute_script("return document.getElementById('key').dataset.value")
        assert key.startswith("ek_"), key
        driver.find_element(By.ID, "respond").click()
        deadline = time.monotonic() + EVENT_SECONDS
        while True:
            events, heard = _events(driver), inbound_audio(driver)
            if "response.done" in events and heard["totalAudioEnergy"] > 0.01:
                break
            assert time.monotonic() < deadline, f"not within 15 s: {events}, {heard}"
            time.sleep(0.1)
        again = json.loads(driver.execute_async_script(_OFFER_AGAIN))
        driver.find_element(By.ID, "hangup").click()
        state = driver.find_element(By.ID, "call-state").text
        deadline = time.monotonic() + 5
        while not (ended := [e for e in daemon.log_events() if e["event"] == "webrtc.ended"]):
            assert time.monotonic() < deadline, "the session did not end within 5 s of Hang up"
            time.sleep(0.1)
    print(f"events on oai-events: {events}; audio: {heard}")
    assert "session.created" in events, events
    assert "error" not in events, events
    assert again["status"] == 401, again
    assert "used" in json.loads(again["body"])["detail"], again
    assert state == "ended", state
    assert len(ended) == 1, ended
