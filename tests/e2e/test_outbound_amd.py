"""Answering-machine detection through the real daemon, Kamailio, a test phone and a webhook."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from daemon.speech.local import PiperSynthesizer
from media.amd import AnsweredBy
from media.resample import resample
from media.wav import read_wav, write_wav
from tests.audio import bursts
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.receiver import Receiver
from tests.support import DaemonProcess, callee, registered
from tests.support.amd_cases import RATE, human_case, machine_case

pytestmark = pytest.mark.e2e
MESSAGE = "Hello, this is a reminder about your dentist appointment tomorrow morning."
PROMPT = "Would you like to confirm or cancel? Say yes or no."
OPTIONS = [
    {"value": "confirmed", "synonyms": ["yes", "yeah", "confirm"]},
    {"value": "cancelled", "synonyms": ["no", "cancel"]},
]
LOUD = 500  # a recorded sample above this is the daemon talking


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Kamailio]:
    async with running_kamailio(tmp_path / "k") as kamailio:
        yield kamailio


@pytest.fixture
async def base_url(pbx: Kamailio, daemon_env: dict[str, str]) -> AsyncIterator[str]:
    env = daemon_env | {
        "SIPAI_SIP__REGISTRAR": pbx.uri,
        "SIPAI_SIP__PASSWORD": password("1000"),
    }
    async with DaemonProcess(env, wait=registered) as process:
        yield process.base_url


@contextlib.asynccontextmanager
async def _receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    try:
        yield receiver
    finally:
        receiver.close()


async def _post(base_url: str, body: dict[str, Any]) -> None:
    async with httpx.AsyncClient() as client:
        response = await client.post(f"{base_url}/call", json=body)
    assert response.status_code == 200, response.text


async def _webhook(receiver: Receiver, within: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while not receiver.requests():
            await asyncio.sleep(0.1)
    payload: dict[str, Any] = json.loads(receiver.requests()[0].body)
    return payload


@functools.cache
def _voice() -> PiperSynthesizer:
    return PiperSynthesizer()


def _piper(text: str) -> NDArray[np.int16]:
    """``text`` in the daemon's own voice at 8 kHz."""
    return resample(_voice().synthesize(text), _voice().rate, RATE)


async def test_voicemail_message_starts_after_the_beep(
    pbx: Kamailio, base_url: str, tmp_path: Path
) -> None:
    """A phone that plays a voicemail greeting and its beep gets the message once, starting
    after the beep, and no prompt: answered_by machine, message_played true, no choice
    (about 15 s: the greeting alone is 7 s)."""
    case = machine_case(0)  # a greeting, a gap, a 1000 Hz beep of 0.4 s, silence
    beep_end_ms = case.greeting_end_ms
    assert beep_end_ms is not None
    greeting = tmp_path / "greeting.wav"
    write_wav(greeting, RATE, case.pcm)
    async with _receiving() as receiver, callee(pbx, "1015") as phone:
        body = {
            "message": MESSAGE,
            "extension": "1015",
            "callback_url": receiver.url,
            "machine_detection": "voicemail",
            "choice": {"prompt": PROMPT, "options": OPTIONS, "timeout_seconds": 5},
        }
        await _post(base_url, body)
        incoming = await phone.expect("incoming", timeout=20)
        call = incoming["call"]
        await phone.expect("media", call=call, status="active")
        # recording starts first: a recorded time is never earlier than the same played time
        await phone.command("record", call=call, wav=str(tmp_path / "heard.wav"))
        await phone.command("play", call=call, wav=str(greeting))
        payload = await _webhook(receiver)
        await phone.expect("call", call=call, state="DISCONNECTED", timeout=30)
        await phone.expect("recorded", call=call)
    assert payload["answered_by"] == AnsweredBy.MACHINE.value, payload
    assert (payload["status"], payload["message_played"]) == ("completed", True), payload
    assert payload["choice_response"] is None, payload
    heard = read_wav(tmp_path / "heard.wav")
    samples = resample(heard.samples, heard.rate, RATE) if heard.rate != RATE else heard.samples
    loud = np.flatnonzero(np.abs(samples.astype(np.int32)) > LOUD)
    assert len(loud) > 0, "the phone heard nothing"
    first_ms = int(loud[0]) * 1000 // RATE
    print(f"beep ends at {beep_end_ms} ms, message heard from {first_ms} ms")
    assert first_ms >= beep_end_ms, (first_ms, beep_end_ms)
    # one stretch of sound, as long as the message: the message once, no prompt after it
    message_ms = len(_piper(MESSAGE)) * 1000 // RATE
    found = [(a * 1000 // RATE, b * 1000 // RATE) for a, b in bursts(samples, RATE)]
    print(f"heard {found}, the message lasts {message_ms} ms")
    assert len(found) == 1, found
    start_ms, end_ms = found[0]
    assert 0.85 * message_ms <= end_ms - start_ms <= 1.15 * message_ms, (found, message_ms)


async def test_detect_mode_lets_a_human_answer(
    pbx: Kamailio, base_url: str, tmp_path: Path
) -> None:
    """A phone that says "Hello?" at pick-up is a human decided within 2.5 s of the answer,
    then hears the message and the prompt and answers "Yes": confirmed (about 15 s)."""
    hello = human_case(0)  # "Hello?" 0.2 s after the answer
    answer = tmp_path / "yes.wav"
    write_wav(answer, RATE, _piper("Yes."))
    write_wav(tmp_path / "hello.wav", RATE, hello.pcm[: RATE * 2])
    message_s = len(_piper(MESSAGE)) / RATE
    prompt_s = len(_piper(PROMPT)) / RATE
    async with _receiving() as receiver, callee(pbx, "1016") as phone:
        body = {
            "message": MESSAGE,
            "extension": "1016",
            "callback_url": receiver.url,
            "machine_detection": "detect",
            "choice": {"prompt": PROMPT, "options": OPTIONS, "timeout_seconds": 8},
        }
        await _post(base_url, body)
        incoming = await phone.expect("incoming", timeout=20)
        call = incoming["call"]
        await phone.expect("media", call=call, status="active")
        await phone.command("play", call=call, wav=str(tmp_path / "hello.wav"))
        after_s = 0.9 * (message_s + prompt_s)
        await phone.command("reply", call=call, wav=str(answer), after_s=after_s, silence_ms=600)
        payload = await _webhook(receiver)
    print(f"answered_by {payload['answered_by']} after {payload['machine_detection_ms']} ms")
    assert payload["answered_by"] == AnsweredBy.HUMAN.value, payload
    assert payload["machine_detection_ms"] <= 2500, payload
    assert payload["choice_response"] == "confirmed", payload
