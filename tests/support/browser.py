"""Headless Chromium for the browser tests, and what they read back from it.

``chrome(wav)`` starts the Debian ``chromium`` under its own ``chromedriver`` (both from the
same Debian build: ``make test`` and ``.ci/run`` install them together), headless, as root
(``--no-sandbox``), with a fake microphone that plays ``wav`` and a fake permission prompt
that grants it. The fake capture plays the file once from its first sample, starting when
the page calls ``getUserMedia``, then sends silence: so a test lays out what "the caller"
says on that timeline with :func:`speech_wav` ([silence, speech, silence, ...], 48 kHz
mono, ending in 2 s of silence). Chromium gets ``--allow-loopback-in-peer-connection``, so
it offers 127.0.0.1 as a host candidate (it leaves loopback out of WebRTC otherwise).

Every ``RTCPeerConnection`` a page makes is kept in ``window.sipaiTestPeers`` by a script
the browser runs before each document's own (test instrumentation only: the pages under
test are unchanged), so :func:`inbound_audio` and :func:`selected_pair` can read
``getStats()`` of the page's call whatever the page's code names it.
``inbound-rtp`` ``totalAudioEnergy`` grows only while the page plays the remote track (an
``<audio autoplay>`` element); ``bytesReceived`` counts RTP either way.

When the body of ``with chrome(...)`` fails, the browser's console log (``goog:loggingPrefs``)
is attached to the exception as a note. The calls here block (Selenium's client is
synchronous): the browser tests are plain functions, not coroutines.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import time
from collections.abc import Iterator, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from media.resample import resample
from media.wav import write_wav
from tests.support.daemon import DaemonExited, DaemonProcess

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WINDOW = (1280, 900)
RATE = 48000  # Chromium's fake capture and Opus run at 48 kHz
TAIL_SECONDS = 2.0  # silence after the last part: the capture then sends silence anyway
LOG_LINES = 60  # browser console lines attached to a failure

FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root (CI); Chromium refuses to start sandboxed then
    "--disable-gpu",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",  # no update, sync or safe-browsing requests
    "--disable-component-update",
)

_KEEP_PEERS = """
(() => {
  const Native = window.RTCPeerConnection;
  if (!Native || Native.sipaiTestKept) return;
  window.sipaiTestPeers = [];
  class Kept extends Native {
    constructor(...args) { super(...args); window.sipaiTestPeers.push(this); }
  }
  Kept.sipaiTestKept = true;
  window.RTCPeerConnection = Kept;
})();
"""

_STATS = """
const done = arguments[arguments.length - 1];
const peers = window.sipaiTestPeers || [];
if (!peers.length) { done(null); return; }
peers[peers.length - 1].getStats().then(
  (report) => { const all = []; report.forEach((s) => all.push(s)); done(JSON.stringify(all)); },
  (error) => done(JSON.stringify({error: String(error)})));
"""


WEB_READY_SECONDS = 30.0


@contextlib.contextmanager
def browser_daemon(env: dict[str, str], token: str) -> Iterator[DaemonProcess]:
    """The daemon of ``env`` (:func:`tests.support.daemon_env`) with ``token`` as its API
    token, browser calls on with their ICE on 127.0.0.1 only, and the embedded engine (the
    default agent) with no registrar; yielded once its web worker is ready, stopped after."""
    config = {
        "api": {"token": token},
        "web": {"enabled": True, "ice_addresses": ["127.0.0.1"]},
    }
    with DaemonProcess(env, config=config, wait="healthy", timeout=60) as daemon:
        deadline = time.monotonic() + WEB_READY_SECONDS
        while not any(e.get("event") == "web.ready" for e in daemon.log_events()):
            if daemon.returncode is not None or time.monotonic() > deadline:
                tail = "\n".join(daemon.log_lines()[-20:])
                raise DaemonExited(
                    f"no web.ready within {WEB_READY_SECONDS} s; last lines:\n{tail}"
                )
            time.sleep(0.1)
        yield daemon


@contextlib.contextmanager
def chrome(wav: Path, window: tuple[int, int] = WINDOW) -> Iterator[webdriver.Chrome]:
    """A headless Chromium whose microphone plays ``wav``; quit when the block ends."""
    assert wav.exists(), wav
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--use-file-for-fake-audio-capture={wav}")
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.set_window_size(*window)
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": _KEEP_PEERS})
        yield driver
    except BaseException as exc:
        exc.add_note(_console(driver))
        raise
    finally:
        driver.quit()


def _console(driver: webdriver.Chrome) -> str:
    try:
        entries: list[dict[str, Any]] = driver.get_log("browser")
    except Exception as exc:  # the browser may be the thing that failed
        return f"browser console: unavailable ({exc!r})"
    lines = [f"{e.get('level')} {e.get('message')}" for e in entries[-LOG_LINES:]]
    return "browser console:\n" + ("\n".join(lines) if lines else "(empty)")


@cache
def _voice() -> Any:
    from daemon.speech.local import PiperSynthesizer  # noqa: PLC0415 - loaded once, lazily

    return PiperSynthesizer()


@cache
def _speech(text: str, rate: int) -> bytes:
    voice = _voice()
    return resample(voice.synthesize(text), voice.rate, rate).tobytes()


def piper(text: str, rate: int = RATE) -> NDArray[np.int16]:
    """``text`` spoken by the embedded Piper voice, at ``rate`` (synthesised once per process)."""
    return np.frombuffer(_speech(text, rate), dtype=np.int16).copy()


def speech_seconds(text: str) -> float:
    """How long Piper takes to say ``text``: to size the silences around what the other end says."""
    return len(piper(text)) / RATE


def speech_wav(path: Path, parts: Sequence[str | float]) -> list[tuple[float, float]]:
    """Write a 48 kHz mono WAV of ``parts`` (a number: that many seconds of silence; a string:
    Piper saying it), then 2 s of silence; return (start, end) seconds of each spoken part."""
    pieces: list[NDArray[np.int16]] = []
    spoken: list[tuple[float, float]] = []
    at = 0
    for part in parts:
        if isinstance(part, str):
            samples = piper(part)
            spoken.append((at / RATE, (at + len(samples)) / RATE))
        else:
            assert part >= 0, part
            samples = np.zeros(round(part * RATE), dtype=np.int16)
        pieces.append(samples)
        at += len(samples)
    pieces.append(np.zeros(round(TAIL_SECONDS * RATE), dtype=np.int16))
    write_wav(path, RATE, np.concatenate(pieces))
    return spoken


def stats(driver: WebDriver) -> dict[str, dict[str, Any]]:
    """``getStats()`` of the newest ``RTCPeerConnection`` of the page, by id ({} if none yet)."""
    raw = driver.execute_async_script(_STATS)
    if raw is None:
        return {}
    report = json.loads(raw)
    assert isinstance(report, list), f"getStats() failed: {report}"
    return {entry["id"]: entry for entry in report}


def inbound_audio(driver: WebDriver) -> dict[str, float]:
    """``totalAudioEnergy`` and ``bytesReceived`` of the page's incoming audio (0 before any)."""
    for entry in stats(driver).values():
        if entry["type"] == "inbound-rtp" and entry.get("kind") == "audio":
            return {
                "totalAudioEnergy": float(entry.get("totalAudioEnergy", 0.0)),
                "bytesReceived": float(entry.get("bytesReceived", 0)),
            }
    return {"totalAudioEnergy": 0.0, "bytesReceived": 0.0}


def selected_pair(driver: WebDriver) -> tuple[str, str] | None:
    """(the browser's address, the peer's address) of the ICE pair the call runs on."""
    report = stats(driver)
    for entry in report.values():
        pair_id = entry.get("selectedCandidatePairId")
        if entry["type"] == "transport" and pair_id in report:
            pair = report[pair_id]
            local = report[pair["localCandidateId"]]
            remote = report[pair["remoteCandidateId"]]
            return str(local["address"]), str(remote["address"])
    return None


def wait_for(driver: WebDriver, script: str, timeout: float, poll: float = 0.1) -> Any:
    """Run ``script`` (a JavaScript function body that returns) until it returns a truthy
    value, and return that; AssertionError naming the script after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {script} (last: {value!r})")
        time.sleep(poll)


def log_in(driver: WebDriver, base_url: str, token: str) -> None:
    """Open the console at ``base_url``, be sent to its login page, and log in with ``token``."""
    driver.get(base_url + "/")
    assert driver.current_url == base_url + "/login", driver.current_url
    driver.find_element(By.ID, "login-token").send_keys(token)
    driver.find_element(By.ID, "login-submit").click()
    wait_for(driver, f"return location.href === {json.dumps(base_url + '/')}", 10)


def row_pixels(driver: WebDriver, selector: str) -> NDArray[np.uint8]:
    """The element matching ``selector`` as the browser draws it: (height, width, 3) RGB."""
    from PIL import Image  # noqa: PLC0415 - only the tests that look at pixels need it

    png = driver.find_element(By.CSS_SELECTOR, selector).screenshot_as_png
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def pixels_of(pixels: NDArray[np.uint8], rgb: tuple[int, int, int]) -> int:
    """How many pixels have exactly the colour ``rgb``."""
    return int(np.count_nonzero(np.all(pixels == np.asarray(rgb, dtype=np.uint8), axis=-1)))


def save_screenshot(driver: WebDriver, directory: Path, name: str = "page") -> Path:
    """The whole page (beyond the window too) as ``directory/name.png``; returns the path."""
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}
    )
    path = directory / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


_RECT = """
const found = document.querySelector(arguments[0]);
if (!found) return null;
const r = found.getBoundingClientRect();
return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width,
        height: r.height, scale: window.devicePixelRatio};
"""


def pixels_in_page(driver: WebDriver, page: Path, selector: str) -> NDArray[np.uint8]:
    """The part of the full-page screenshot ``page`` (:func:`save_screenshot`, taken just
    before) where the element matching ``selector`` lies, by its rectangle in the document
    scaled by ``devicePixelRatio``: what the page shows there, so an element hidden, covered by
    another or out of the page does not show. AssertionError when it has no area in the page."""
    from PIL import Image  # noqa: PLC0415 - only the tests that look at pixels need it

    rect = driver.execute_script(_RECT, selector)
    assert rect is not None, f"no element {selector}"
    scale = float(rect["scale"])
    left, top = round(rect["x"] * scale), round(rect["y"] * scale)
    right = round((rect["x"] + rect["width"]) * scale)
    bottom = round((rect["y"] + rect["height"]) * scale)
    with Image.open(page) as image:
        full = np.asarray(image.convert("RGB"), dtype=np.uint8)
    height, width = full.shape[:2]
    outside = f"{selector} at {rect} is not inside the {width}x{height} page screenshot"
    assert 0 <= left < right <= width, outside
    assert 0 <= top < bottom <= height, outside
    return full[top:bottom, left:right].copy()


_FETCH = """
const done = arguments[arguments.length - 1];
fetch(arguments[0], {credentials: "same-origin", cache: "no-store"}).then(async (response) => {
  const reader = new FileReader();
  reader.onload = () => done({status: response.status, type: response.headers.get("content-type"),
                              body: String(reader.result).split(",")[1] || ""});
  reader.onerror = () => done({error: String(reader.error)});
  reader.readAsDataURL(await response.blob());
}, (error) => done({error: String(error)}));
"""


def fetched_by_page(driver: WebDriver, url: str, timeout: float = 20.0) -> tuple[int, str, bytes]:
    """GET ``url`` from the page, with its cookies, as the page would, past the browser's
    cache (a player's range requests leave partial answers there): (status, content type,
    body)."""
    driver.set_script_timeout(timeout)
    got = driver.execute_async_script(_FETCH, url)
    assert "error" not in got, f"the page could not fetch {url}: {got['error']}"
    return int(got["status"]), str(got["type"] or ""), base64.b64decode(got["body"])
