"""A real browser on the web console: it logs in and talks to the agent over WebRTC."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By

from config.schema import EngineSettings
from tests.support.browser import (
    browser_daemon,
    chrome,
    inbound_audio,
    log_in,
    pixels_of,
    row_pixels,
    save_screenshot,
    selected_pair,
    speech_seconds,
    speech_wav,
    wait_for,
)

pytestmark = pytest.mark.e2e
TOKEN = "console-test-token"
MESSAGE = "Please call me back tomorrow morning."
YES = "Yes, that is right."
LEAD_SECONDS = 1.5  # the greeting must start this soon after "Talk": the WAV's words wait for it
HEARD_SECONDS = 8.0
WEB_BADGE = (15, 123, 79)  # .badge-web in api/console/console.css (#0f7b4f)
ROW_BACKGROUNDS = {(255, 255, 255), (238, 242, 250)}  # the table, and a row under the pointer
WEB_ROW = '#live-rows tr[data-call-id][data-direction="web"]'

# Counts, in the page, the web rows the live table gains and the call's state at that moment.
# Kept on window: a navigation (a reload of the page) would lose it.
_WATCH_ROWS = f"""
window.sipaiTestWatch = {{rowState: null, mutations: 0}};
new MutationObserver(() => {{
  window.sipaiTestWatch.mutations += 1;
  if (window.sipaiTestWatch.rowState === null && document.querySelector({WEB_ROW!r})) {{
    window.sipaiTestWatch.rowState = document.getElementById("call-state").textContent;
  }}
}}).observe(document.getElementById("live-rows"), {{childList: true, subtree: true}});
"""


def test_talk_to_the_agent_from_the_console(daemon_env: dict[str, str], tmp_path: Path) -> None:
    """From the console's "Talk to the agent" a browser hears the greeting, leaves a message
    that the agent reads back and confirms, and the call ends by itself: its web record holds
    the message, and the live table showed the call while it was on, with no reload. (35-45 s:
    the receptionist's whole conversation runs in real time.)"""
    greeting = speech_seconds(EngineSettings().greeting)
    read_back = speech_seconds(f"Thank you. I have noted: {MESSAGE} Is that right?")
    wav = tmp_path / "caller.wav"
    speech_wav(wav, [greeting + LEAD_SECONDS, MESSAGE, 3.0 + read_back, YES])
    with browser_daemon(daemon_env, TOKEN) as daemon, chrome(wav) as driver:
        api = daemon.base_url
        log_in(driver, api, TOKEN)
        wait_for(driver, "return !document.getElementById('talk').disabled", 10)
        driver.execute_script(_WATCH_ROWS)
        driver.find_element(By.ID, "talk").click()
        pressed = time.monotonic()
        first_sound: float | None = None
        heard = inbound_audio(driver)
        while time.monotonic() - pressed < HEARD_SECONDS:
            heard = inbound_audio(driver)
            if first_sound is None and heard["totalAudioEnergy"] > 0.001:
                first_sound = time.monotonic() - pressed
            if heard["totalAudioEnergy"] > 0.01 and heard["bytesReceived"] > 20000:
                break
            time.sleep(0.1)
        assert heard["totalAudioEnergy"] > 0.01, f"greeting not heard within 8 s: {heard}"
        assert heard["bytesReceived"] > 20000, f"greeting not heard within 8 s: {heard}"
        assert first_sound is not None, heard
        assert first_sound <= LEAD_SECONDS, (
            f"the greeting started {first_sound:.2f} s after Talk (> {LEAD_SECONDS} s): the "
            "caller's words would overlap it"
        )
        print(f"greeting heard {first_sound:.2f} s after Talk; then {heard}")
        assert selected_pair(driver) == ("127.0.0.1", "127.0.0.1")
        state = wait_for(
            driver,
            "const s = document.getElementById('call-state').textContent;"
            " return ['ended', 'failed', 'refused'].includes(s) && s;",
            timeout=greeting + LEAD_SECONDS + 40.0,
        )
        assert state == "ended", state
        watch = driver.execute_script("return window.sipaiTestWatch || null")
        assert watch is not None, "the console page was reloaded during the call"
        assert watch["rowState"] in ("calling", "connecting", "connected"), watch  # on the call
        shot = save_screenshot(driver, tmp_path)
        pixels = row_pixels(driver, WEB_ROW)
        with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5) as client:
            deadline = time.monotonic() + 10
            calls = client.get(f"{api}/calls?direction=web").json()["calls"]
            while (not calls or calls[0]["call_status"] == "answered") and (
                time.monotonic() < deadline
            ):
                time.sleep(0.1)
                calls = client.get(f"{api}/calls?direction=web").json()["calls"]
    assert shot.stat().st_size > 0
    assert len(calls) == 1, calls
    record = calls[0]
    assert record["direction"] == "web"
    assert record["call_status"] == "completed", record
    assert record["end_cause"] == "end_call", record
    roles = [turn["role"] for turn in record["transcript"]]
    assert roles[:2] == ["agent", "caller"], record["transcript"]  # the greeting, not cut off
    callers = [t["text"].lower() for t in record["transcript"] if t["role"] == "caller"]
    assert any("call me back" in text for text in callers), record["transcript"]
    assert "tomorrow" in (record["message"] or "").lower(), record
    badge = pixels_of(pixels, WEB_BADGE)
    assert badge >= 50, f"{badge} pixels of the web badge colour in the row"
    ink = sum(
        1
        for rgb in map(tuple, pixels.reshape(-1, 3).tolist())
        if rgb not in ROW_BACKGROUNDS and rgb != WEB_BADGE
    )
    print(f"web row: {badge} pixels of the badge colour, {ink} of text; page: {shot}")
    assert ink >= 100, f"{ink} pixels of text in the row"
