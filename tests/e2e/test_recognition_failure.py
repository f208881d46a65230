"""The daemon whose speech recognition really fails: callers are told, records say why.

The daemon runs through ``tests.sandbox --deny-write-execute``: its Whisper cannot generate
its kernels and every transcription raises (the shipped unit no longer applies this; here it
is the way to make the real recognizer fail). Piper and pjsua2 work under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from config.schema import EngineSettings
from daemon.speech import SpeechToText
from daemon.speech.local import WhisperTranscriber
from media.resample import resample
from media.wav import read_wav, write_wav
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.receiver import Receiver
from tests.support import DaemonProcess, callee, registered

pytestmark = pytest.mark.e2e
FAILURE = "speech recognition failed: RuntimeError: could not create a primitive"
_voice: dict[str, Any] = {}


def _piper(text: str) -> NDArray[np.int16]:
    from daemon.speech.local import PiperSynthesizer  # noqa: PLC0415 - loaded once, lazily

    voice = _voice.setdefault("piper", PiperSynthesizer())
    return resample(voice.synthesize(text), voice.rate, 8000)


def _wav(text: str, path: Path) -> tuple[str, float]:
    audio = _piper(text)
    write_wav(path, 8000, audio)
    return str(path), len(audio) / 8000


@contextlib.asynccontextmanager
async def _daemon(pbx: Kamailio, env: dict[str, str], log: Path) -> AsyncIterator[str]:
    """The daemon under MDWE, registered; yields its API base URL; its JSON log in ``log``."""
    env = env | {
        "SIPAI_SIP__REGISTRAR": pbx.uri,
        "SIPAI_SIP__PASSWORD": password("1000"),
    }
    sandbox = [sys.executable, "-m", "tests.sandbox", "--deny-write-execute", "--"]
    async with DaemonProcess(env, wrapper=sandbox, log=log, wait=registered) as daemon:
        yield daemon.base_url


def _events(log: Path) -> list[dict[str, Any]]:
    events = []
    for line in log.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


async def test_engine_caller_hears_an_apology_when_recognition_fails(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """Each caller turn fails to transcribe: the caller hears a spoken apology, then a goodbye
    and the daemon hangs up; the call's record is failed with the recognition error, and the
    log has the error event and no unhandled task exception."""
    log = tmp_path / "daemon.log"
    async with (
        running_kamailio(tmp_path / "k") as pbx,
        _daemon(pbx, daemon_env, log) as api,
    ):
        phone = await TestPhone.start("caller")
        try:
            await phone.register(pbx, "1001")
            dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
            call = dialled["call"]
            await phone.expect("media", call=call, status="active", timeout=20)
            await phone.command("record", call=call, wav=str(tmp_path / "heard.wav"))
            greeting_s = len(_piper(EngineSettings().greeting)) / 8000
            message, message_s = _wav("Please call me back.", tmp_path / "message.wav")
            await asyncio.sleep(greeting_s + 1.5)
            await phone.command("play", call=call, wav=message)
            await asyncio.sleep(message_s + 5.0)  # the apology
            await phone.command("play", call=call, wav=message)
            ended = await phone.expect("call", call=call, state="DISCONNECTED", timeout=30)
            await phone.expect("recorded", call=call)
            async with httpx.AsyncClient() as client, asyncio.timeout(10):
                while True:
                    url = f"{api}/calls?direction=inbound"
                    [record] = (await client.get(url)).json()["calls"]
                    if record["status"] != "in_progress":
                        break
                    await asyncio.sleep(0.1)
        finally:
            await phone.close()
    assert ended["code"] == 200  # the daemon hung up after its goodbye (end_call)
    heard = read_wav(tmp_path / "heard.wav")
    after_greeting = heard.samples[round(greeting_s * heard.rate) :]
    text = (await SpeechToText(WhisperTranscriber()).transcribe(after_greeting, heard.rate)).lower()
    assert "sorry" in text, text
    assert "technical problem" in text, text
    assert (record["status"], record["error"]) == ("failed", FAILURE), record
    assert record["end_cause"] == "end_call"
    said = " ".join(t["text"] for t in record["transcript"] if t["role"] == "agent")
    assert "could not hear" in said, record["transcript"]
    events = _events(log)
    failures = [e for e in events if e.get("event") == "engine.transcription_failed"]
    assert len(failures) == 2, failures
    assert {e.get("level") for e in failures} == {"error"}, failures
    unhandled = [e for e in events if "never retrieved" in json.dumps(e)]
    assert unhandled == [], unhandled
    assert not [e for e in events if e.get("event") == "engine.task_failed"]


async def test_outbound_choice_records_the_recognition_failure(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """An outbound choice whose answer cannot be transcribed completes unmatched, the webhook
    and the record carry the recognition error, and each failed request is logged as an error
    (the final one, and the early one at the answer's pause when it was taken)."""
    receiver = Receiver()
    prompt = "Would you like to confirm? Say yes or no."
    message = "Hello, this is a reminder about your appointment."
    log = tmp_path / "daemon.log"
    try:
        async with (
            running_kamailio(tmp_path / "k") as pbx,
            _daemon(pbx, daemon_env, log) as api,
            callee(pbx, "1003") as phone,
        ):
            _, message_s = _wav(message, tmp_path / "message.wav")
            _, prompt_s = _wav(prompt, tmp_path / "prompt.wav")
            answer, _ = _wav("Yes, sure.", tmp_path / "answer.wav")
            async with httpx.AsyncClient() as client:
                posted = await client.post(
                    f"{api}/call",
                    json={
                        "message": message,
                        "extension": "1003",
                        "callback_url": receiver.url,
                        "choice": {
                            "prompt": prompt,
                            "options": [
                                {"value": "confirmed", "synonyms": ["yes", "sure"]},
                                {"value": "cancelled", "synonyms": ["no"]},
                            ],
                            "timeout_seconds": 8,
                            "repeat_count": 1,
                        },
                    },
                )
            assert posted.status_code == 200, posted.text
            incoming = await phone.expect("incoming", timeout=20)
            await phone.expect("media", call=incoming["call"], status="active")
            await asyncio.sleep(message_s + prompt_s + 0.8)
            await phone.command("play", call=incoming["call"], wav=answer)
            async with asyncio.timeout(60):
                while not receiver.requests():
                    await asyncio.sleep(0.1)
            async with httpx.AsyncClient() as client:
                view = (await client.get(f"{api}/call/{posted.json()['call_id']}")).json()
    finally:
        receiver.close()
    payload = json.loads(receiver.requests()[0].body)
    assert (payload["status"], payload["choice_response"]) == ("completed", None), payload
    assert FAILURE in (payload["error"] or ""), payload
    assert view["error"] == payload["error"], view
    events = _events(log)
    # The answer's final transcription fails, and so may the early one taken at its first
    # pauses (one per pause the answer has; a loaded machine's slower caller audio can show
    # two): each failed request is an error line.
    levels = [e.get("level") for e in events if e.get("event") == "speech.transcription_failed"]
    assert 1 <= len(levels) <= 3, levels
    assert set(levels) == {"error"}, levels
