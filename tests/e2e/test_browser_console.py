"""A real browser on the web console: it logs in, talks to the agent over WebRTC, and reads
the call's detail (transcript, black box, recording, webhook attempts)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from selenium.webdriver.common.by import By

from api.app import ApiContext, HealthReport, create_app
from api.console_auth import MAX_SESSIONS
from config.schema import EngineSettings
from media.wav import read_wav_channels
from tests.peers.receiver import Receiver
from tests.support.browser import (
    browser_daemon,
    chrome,
    fetched_by_page,
    inbound_audio,
    log_in,
    pixels_in_page,
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
# The greeting must start this soon after "Talk": the WAV's words wait exactly this long after
# the greeting's length, so a later greeting would overlap them. Measured on the 2-core test box
# (Talk -> first sound): 0.70-1.15 s as the shared box was, 1.12-1.15 s with two
# more busy loops, 1.90 s with four; 3.0 s holds under that and is still dead air a caller notices.
LEAD_SECONDS = 3.0
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


_DETAIL = """
const all = (selector) => Array.from(document.querySelectorAll(selector));
return {
  id: document.getElementById("detail-id").textContent,
  transcript: all("#detail-transcript li").map((li) => li.textContent),
  box: all("#detail-black-box tr").map((row) => [row.cells[0].textContent,
                                                 row.cells[1].textContent]),
  recording: document.getElementById("detail-recording").hidden
    ? null : document.getElementById("detail-recording").src,
  webhooks: all("#detail-webhooks tbody tr").map((row) => ({
    kind: row.dataset.webhookKind,
    state: row.cells[1].textContent,
    attempts: Array.from(row.querySelectorAll("ol.attempts li")).map((li) => (
      {status: li.dataset.status, ms: li.dataset.ms, text: li.textContent})),
  })),
};
"""
_PLAYER_SECONDS = """
const player = document.getElementById("detail-recording");
return player.readyState >= 1 && Number.isFinite(player.duration) && player.duration;
"""


def _ink(pixels: Any) -> int:
    """How many pixels are neither a row's background nor the web badge: the row's text."""
    return sum(
        1
        for rgb in map(tuple, pixels.reshape(-1, 3).tolist())
        if rgb not in ROW_BACKGROUNDS and rgb != WEB_BADGE
    )


def _heard(samples: Any, rate: int) -> str:
    """What Whisper hears in ``samples``, lower case."""
    from daemon.speech import SpeechToText  # noqa: PLC0415 - heavy, loaded by this test only
    from daemon.speech.local import WhisperTranscriber  # noqa: PLC0415

    stt = SpeechToText(WhisperTranscriber())
    text: str = asyncio.run(stt.transcribe(samples, rate))
    return text.lower()


def _record_settled(client: httpx.Client, api: str) -> dict[str, Any]:
    """The browser call's record once it is finished and its inbound.ended webhook has been
    delivered (within 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        calls = client.get(f"{api}/calls?direction=web").json()["calls"]
        record: dict[str, Any] = {}
        if len(calls) == 1:
            record = client.get(f"{api}/call/{calls[0]['call_id']}").json()
            ended = [h for h in record.get("webhooks", []) if h["kind"] == "inbound.ended"]
            if record["call_status"] != "answered" and ended and ended[0]["state"] == "delivered":
                return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no settled web record within 10 s: {calls} {record}")
        time.sleep(0.1)


def test_talk_to_the_agent_from_the_console(daemon_env: dict[str, str], tmp_path: Path) -> None:
    """From the console's "Talk to the agent" a browser hears the greeting, leaves a message
    that the agent reads back and confirms, and the call ends by itself: its web record holds
    the message, the live table showed the call while it was on (no reload) and the full-page
    screenshot shows its row; the call's detail pane then shows the transcript, the black box
    (codec opus), a recording the page plays (2 channels, the record's length, the caller's
    words on channel 1) and each webhook attempt. (40-55 s: the receptionist's whole
    conversation runs in real time, and Whisper then listens to the recording.)"""
    greeting = speech_seconds(EngineSettings().greeting)
    read_back = speech_seconds(f"Thank you. I have noted: {MESSAGE} Is that right?")
    wav = tmp_path / "caller.wav"
    speech_wav(wav, [greeting + LEAD_SECONDS, MESSAGE, 3.0 + read_back, YES])
    receiver = Receiver()
    env = daemon_env | {
        "SIPAI_RECORDINGS__ENABLED": "true",
        "SIPAI_RECORDINGS__DIRECTORY": str(tmp_path / "recordings"),
        "SIPAI_WEBHOOKS__INBOUND_URL": receiver.url,
    }
    try:
        with browser_daemon(env, TOKEN) as daemon, chrome(wav) as driver:
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
            print(f"greeting heard {first_sound:.2f} s after Talk (bound {LEAD_SECONDS} s)")
            assert first_sound <= LEAD_SECONDS, (
                f"the greeting started {first_sound:.2f} s after Talk (> {LEAD_SECONDS} s): the "
                "caller's words would overlap it"
            )
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
            in_page = pixels_in_page(driver, shot, WEB_ROW)
            pixels = row_pixels(driver, WEB_ROW)
            with httpx.Client(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5) as client:
                record = _record_settled(client, api)
            driver.find_element(By.CSS_SELECTOR, WEB_ROW).click()
            wait_for(
                driver,
                "return !document.getElementById('detail').hidden && document.querySelector("
                "'#detail-webhooks ol.attempts li')",
                10,
            )
            detail = driver.execute_script(_DETAIL)
            save_screenshot(driver, tmp_path, "detail")
            assert detail["recording"], f"no recording player in the detail: {detail}"
            played = wait_for(driver, _PLAYER_SECONDS, 10)
            status, kind, wav_bytes = fetched_by_page(driver, detail["recording"])
    finally:
        receiver.close()
    assert shot.stat().st_size > 0
    assert record["direction"] == "web"
    assert record["call_status"] == "completed", record
    assert record["end_cause"] == "end_call", record
    roles = [turn["role"] for turn in record["transcript"]]
    assert roles[:2] == ["agent", "caller"], record["transcript"]  # the greeting, not cut off
    callers = [t["text"].lower() for t in record["transcript"] if t["role"] == "caller"]
    assert any("call me back" in text for text in callers), record["transcript"]
    assert "tomorrow" in (record["message"] or "").lower(), record

    # the row, as the element's own screenshot and where it lies in the full page
    badge, ink = pixels_of(pixels, WEB_BADGE), _ink(pixels)
    page_badge, page_ink = pixels_of(in_page, WEB_BADGE), _ink(in_page)
    print(
        f"web row: {badge} pixels of the badge colour and {ink} of text; where the row lies in"
        f" the full page: {page_badge} and {page_ink}; page: {shot}"
    )
    assert badge >= 50, f"{badge} pixels of the web badge colour in the row"
    assert ink >= 100, f"{ink} pixels of text in the row"
    assert abs(page_badge - badge) <= badge // 10, (
        f"the full page shows {page_badge} badge pixels where the row lies, its own screenshot"
        f" {badge}"
    )
    assert page_ink >= 100, f"{page_ink} pixels of text where the row lies in the full page"

    # the detail pane
    assert detail["id"] == record["call_id"], detail
    assert [line.lower() for line in detail["transcript"]] == [
        f"{t['role']}{t['text']}".lower() for t in record["transcript"]
    ], detail["transcript"]
    box = dict(detail["box"])
    assert box.get("codec") == "opus", box
    figures = [k for k, v in box.items() if v.replace(".", "", 1).isdigit()]
    assert len(figures) >= 5, f"only {figures} figures in the black box: {box}"
    hooks = {hook["kind"]: hook for hook in detail["webhooks"]}
    assert set(hooks) == {h["kind"] for h in record["webhooks"]}, (detail, record["webhooks"])
    ended = hooks["inbound.ended"]
    assert ended["state"] == "delivered", ended
    stored = next(h for h in record["webhooks"] if h["kind"] == "inbound.ended")["attempts"]
    assert len(ended["attempts"]) == len(stored) >= 1, (ended, stored)
    for shown, attempt in zip(ended["attempts"], stored, strict=True):
        assert shown["status"] == str(attempt["status_code"]) == "200", (shown, attempt)
        assert float(shown["ms"]) == attempt["duration_ms"], (shown, attempt)
        assert "HTTP 200" in shown["text"], shown
        assert shown["text"].endswith(" ms"), shown
    assert len(receiver.requests()) >= 1, "the receiver got no webhook"

    # the recording, as the page plays it
    assert (status, kind) == (200, "audio/wav"), (status, kind)
    rate, frames = read_wav_channels(io.BytesIO(wav_bytes))
    wav_seconds = len(frames) / rate
    expected = record["recording"]["duration_seconds"]
    print(
        f"recording: {frames.shape[1]} channels, {wav_seconds:.2f} s (record {expected} s,"
        f" connected {record['duration_seconds']} s), the player says {played:.2f} s"
    )
    assert frames.shape[1] == 2, frames.shape
    assert abs(wav_seconds - expected) <= 0.3, f"{wav_seconds:.2f} s played vs {expected} s"
    assert abs(played - wav_seconds) <= 0.3, f"the player says {played} s, the WAV {wav_seconds}"
    caller_side = _heard(frames[:, 0].copy(), rate)
    print(f"channel 1: {caller_side!r}")
    assert "call me back" in caller_side, caller_side


def _healthy() -> HealthReport:
    return HealthReport("healthy", False, "test", 1.0, 0, 0, [])


@contextlib.contextmanager
def _serving(ctx: ApiContext) -> Iterator[str]:
    """The API of ``ctx`` served by uvicorn on a thread of its own; yields its base URL."""
    config = uvicorn.Config(create_app(ctx), host="127.0.0.1", port=0, log_config=None)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:  # uvicorn offers a flag to poll, not an event
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_page_shows_why_it_has_no_session(tmp_path: Path) -> None:
    """With no token and every console session place taken by sessions in use, the page
    shows the 503's detail in its banner instead of failing silently."""
    wav = tmp_path / "silence.wav"
    speech_wav(wav, [0.5])
    with _serving(ApiContext(health=_healthy)) as base:
        with httpx.Client(base_url=base, timeout=10) as flood:
            for _ in range(MAX_SESSIONS):  # each session opened, then presented: in use
                flood.cookies.clear()
                assert flood.get("/console/session").status_code == 200
                assert flood.get("/calls?limit=1").status_code == 200
            flood.cookies.clear()
            full = flood.get("/console/session")
        assert full.status_code == 503, full.text
        with chrome(wav) as driver:
            driver.get(base + "/")
            shown = wait_for(
                driver,
                'const w = document.getElementById("warning"); return !w.hidden && w.textContent;',
                10,
            )
        assert shown == "No console session: " + full.json()["detail"], shown


class _SlowWebCalls:
    """The web workers' side of ``POST /web/calls``, answering 201 only once released, and
    recording the calls hung up."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.hung = threading.Event()
        self.hung_up: list[str] = []

    async def offer(
        self, sdp: str, mode: Any, session: dict[str, Any] | None, caller: str, user_agent: str
    ) -> tuple[str, str]:
        for _ in range(400):  # 20 s at most
            if self.release.is_set():
                break
            await asyncio.sleep(0.05)
        return "web-7", "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\n"

    async def hangup(self, call: str) -> None:
        self.hung_up.append(call)
        self.hung.set()


def test_a_call_answered_after_the_page_hung_up_is_hung_up_at_once(tmp_path: Path) -> None:
    """When the page's call ends while its offer is posted, the 201 that still comes is hung
    up at once (DELETE on its URL), not left to the daemon's connect timeout."""
    web = _SlowWebCalls()
    wav = tmp_path / "silence.wav"
    speech_wav(wav, [0.5])
    try:
        with _serving(ApiContext(health=_healthy, web=web)) as base, chrome(wav) as driver:
            driver.get(base + "/")
            wait_for(driver, 'return !document.getElementById("talk").disabled', 10)
            driver.find_element(By.ID, "talk").click()
            state = 'return document.getElementById("call-state").textContent'
            wait_for(driver, state + ' === "calling"', 10)
            driver.execute_script("window.sipaiTestPeers.forEach((peer) => peer.close())")
            wait_for(driver, state + ' === "ended"', 10)  # the page's call is over
            web.release.set()
            web.hung.wait(5)
        assert web.hung_up == ["web-7"], web.hung_up
    finally:
        web.release.set()
