"""Answering-machine detection in outbound calls on in-memory legs: what plays, and when."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from daemon.calls.outbound import OutboundCall
from daemon.legs.memory import MediaClock, MemoryNetwork, MemoryPhone
from media.resample import resample
from tests.audio import speech, tone

RATE = 8000
FRAME = RATE // 50
WALL_LIMIT = 3.0  # seconds of wall time a call may take on the virtual clock


def _noise(seconds: float, seed: int) -> NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, round(seconds * RATE)).astype(np.int16)


def _words(text: str) -> NDArray[np.int16]:
    rate, pcm = speech(text)
    return resample(pcm, rate, RATE)


SOUNDS = {"message": _noise(0.6, 21), "prompt": _noise(0.5, 22), "closing": _noise(0.3, 23)}
CHOICE = {
    "options": [{"value": "confirmed", "synonyms": ["yes"]}, {"value": "cancelled"}],
    "timeout_seconds": 1.0,
    "repeat_count": 1,
}


def _starts(heard: NDArray[np.int16], sound: NDArray[np.int16]) -> list[int]:
    """Where whole copies of ``sound`` start in ``heard`` (the memory network is lossless)."""
    n = len(sound)
    found = []
    for start in np.flatnonzero(heard[: len(heard) - n + 1] == sound[0]):
        if np.array_equal(heard[start : start + n], sound):
            found.append(int(start))
    return found


async def _silent(pcm: NDArray[np.int16], rate: int, hint: str) -> str:
    return ""


@pytest.fixture
async def network() -> AsyncIterator[MemoryNetwork]:
    async with MediaClock(speed=None) as clock:
        yield MemoryNetwork(clock, rate=RATE)


async def _call(
    network: MemoryNetwork, phone: MemoryPhone, mode: str, greeting: NDArray[np.int16]
) -> dict[str, Any]:
    """Call ``phone`` with ``machine_detection`` = ``mode``; it plays ``greeting`` from the
    answer on. The result."""

    async def report(status: str) -> None:
        pass

    request = {
        "extension": phone.ext,
        "ring_timeout": 5,
        "choice": CHOICE,
        "machine_detection": mode,
    }
    call = OutboundCall(network, request, SOUNDS, _silent, report)
    began = time.monotonic()
    async with asyncio.timeout(10):
        running = asyncio.create_task(call.run())
        await phone.connected.wait()
        phone.play(greeting, "greeting")
        result = await running
    wall = time.monotonic() - began
    assert wall < WALL_LIMIT, f"{wall:.2f} s wall for one call on the virtual clock"
    return result


async def test_a_human_hello_gets_the_message_after_the_decision(
    network: MemoryNetwork,
) -> None:
    """A "Hello?" then silence is a human, decided within 2.5 s of stream time; the message
    starts only then (its first audio timed from the decision, under 200 ms), and the choice
    is asked as without detection."""
    phone = network.phone("4001")
    hello = np.concatenate((np.zeros(RATE // 5, np.int16), _words("Hello?")))
    result = await _call(network, phone, "detect", hello)
    assert (result["answered_by"], result["status"]) == ("human", "completed"), result
    decided_ms = result["machine_detection_ms"]
    print(f"human decided after {decided_ms} ms of the callee's audio")
    assert 0 < decided_ms <= 2500, result
    heard = phone.heard()
    [message_at] = _starts(heard, SOUNDS["message"])
    assert message_at * 1000 / RATE >= decided_ms, (message_at, decided_ms)
    assert len(_starts(heard, SOUNDS["prompt"])) == 1
    assert result["message_played"] is True
    first_audio_ms = result["black_box"]["outbound"]["answer_to_first_audio_ms"]
    print(f"decision to the message's first audio {first_audio_ms} ms")
    assert first_audio_ms is not None, result["black_box"]
    assert first_audio_ms < 200, f"{first_audio_ms} ms"


async def test_voicemail_gets_the_message_once_after_the_beep(network: MemoryNetwork) -> None:
    """A greeting then a beep, in voicemail mode: a machine; the message starts after the
    beep ended, plays whole and once, and nothing else is heard (no prompt, no closing)."""
    phone = network.phone("4002")
    greeting = _words("Hi, you have reached the Millers. Please leave a message after the tone.")
    gap = np.zeros(RATE * 3 // 10, np.int16)
    beep = tone(1000, RATE, 0.4)
    lead = np.zeros(RATE // 5, np.int16)
    audio = np.concatenate((lead, greeting, gap, beep))
    beep_end = len(audio)
    result = await _call(network, phone, "voicemail", audio)
    assert (result["answered_by"], result["message_played"]) == ("machine", True), result
    assert (result["choice_response"], result["choice_raw_text"]) == (None, None), result
    heard = phone.heard()
    [message_at] = _starts(heard, SOUNDS["message"])
    after_ms = (message_at - beep_end) * 1000 / RATE
    print(f"message started {after_ms:.0f} ms after the beep ended")
    assert 0 <= after_ms <= 300, after_ms
    rest = heard.copy()
    rest[message_at : message_at + len(SOUNDS["message"])] = 0
    assert not np.any(rest), "something besides the message was heard"


async def test_no_audio_from_the_callee_still_gets_the_message(network: MemoryNetwork) -> None:
    """A callee whose audio never arrives (no RTP) is decided unknown once total_analysis_ms
    plus a second have passed on the leg's clock, and the message then plays whole."""
    phone = network.phone("4010")
    phone.mute()

    async def report(status: str) -> None:
        pass

    request = {"extension": phone.ext, "ring_timeout": 5, "machine_detection": "detect"}
    call = OutboundCall(network, request, SOUNDS, _silent, report, amd={"total_analysis_ms": 3000})
    async with asyncio.timeout(10):
        result = await call.run()
    assert (result["answered_by"], result["message_played"]) == ("unknown", True), result
    [message_at] = _starts(phone.heard(), SOUNDS["message"])
    print(f"message started {message_at / RATE:.2f} s after the answer with no audio in")
    assert 3.0 <= message_at / RATE <= 4.1, message_at / RATE
