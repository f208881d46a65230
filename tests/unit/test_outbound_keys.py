"""Keypad answers on in-memory legs: a key cuts the prompt or the listening and decides."""

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

RATE = 8000
FRAME = RATE // 50
WALL_LIMIT = 2.0  # seconds of wall time a call may take on the virtual clock


def _noise(seconds: float, seed: int) -> NDArray[np.int16]:
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, round(seconds * RATE)).astype(np.int16)


SOUNDS = {"message": _noise(0.5, 11), "prompt": _noise(1.0, 12), "closing": _noise(0.3, 13)}
CHOICE = {
    "options": [
        {"value": "confirmed", "synonyms": ["yes"], "dtmf": "1"},
        {"value": "cancelled", "synonyms": ["no"], "dtmf": "2"},
    ],
    "timeout_seconds": 2.0,
    "repeat_count": 2,
}


def _played(heard: NDArray[np.int16], sound: NDArray[np.int16]) -> list[tuple[int, int]]:
    """Each place ``sound`` starts in ``heard`` (by its first frame) and how many of its
    samples follow intact (the memory network is lossless)."""
    head = sound[:FRAME]
    found = []
    for start in np.flatnonzero(heard[: len(heard) - FRAME + 1] == head[0]):
        if np.array_equal(heard[start : start + FRAME], head):
            tail = heard[start : start + len(sound)]
            same = tail == sound[: len(tail)]
            found.append((int(start), int(np.argmin(same)) if not same.all() else len(tail)))
    return found


class Decisions:
    """The decide callback: what was decided, with how much the phone had heard by then."""

    def __init__(self, phone: MemoryPhone) -> None:
        self.phone = phone
        self.seen: list[tuple[dict[str, Any], NDArray[np.int16]]] = []
        self.at: list[float] = []  # wall time of each
        self.answered = 0.0  # wall time the phone answered

    async def __call__(self, result: dict[str, Any]) -> None:
        self.seen.append((result, self.phone.heard().copy()))
        self.at.append(time.time())


TRANSCRIBED: list[int] = []  # the length of each utterance sent for transcription


async def _no_speech(pcm: NDArray[np.int16], rate: int, hint: str) -> str:
    TRANSCRIBED.append(len(pcm))
    return ""


@pytest.fixture
async def network() -> AsyncIterator[MemoryNetwork]:
    async with MediaClock(speed=None) as clock:
        yield MemoryNetwork(clock, rate=RATE)


async def _call(
    network: MemoryNetwork, phone: MemoryPhone, press_at: float, digits: str, method: str
) -> tuple[dict[str, Any], Decisions]:
    """Call ``phone``, press ``digits`` ``press_at`` s after the answer; result, decisions."""

    async def report(status: str) -> None:
        pass

    decisions = Decisions(phone)
    request = {"extension": phone.ext, "ring_timeout": 5, "choice": CHOICE}
    call = OutboundCall(network, request, SOUNDS, _no_speech, report, decide=decisions)
    began = time.monotonic()
    TRANSCRIBED.clear()
    async with asyncio.timeout(10):
        running = asyncio.create_task(call.run())
        await phone.connected.wait()
        decisions.answered = time.time()
        await network.clock.sleep(press_at)
        phone.press(digits, method)
        result = await running
    wall = time.monotonic() - began
    assert wall < WALL_LIMIT, f"{wall:.2f} s wall for one call on the virtual clock"
    assert TRANSCRIBED == [], f"transcribed {TRANSCRIBED} samples with nothing said"
    return result, decisions


async def test_a_key_during_the_prompt_cuts_it_and_answers(network: MemoryNetwork) -> None:
    """Key 2 half way through the prompt: the prompt stops within a frame or two, the closing
    follows once, and the result is cancelled with raw text dtmf:2, decided before the
    closing had played to its end."""
    phone = network.phone("3001")
    press_at = 0.5 + 0.5  # the message, then half of the prompt
    result, decisions = await _call(network, phone, press_at, "2", "rfc4733")
    assert (result["choice_response"], result["choice_raw_text"]) == ("cancelled", "dtmf:2")
    assert result["message_played"] is True
    heard = phone.heard()
    [(start, intact)] = _played(heard, SOUNDS["prompt"])
    pressed = round(press_at * RATE)
    cut_ms = (start + intact - pressed) * 1000 / RATE
    print(f"prompt cut {cut_ms:.0f} ms after the key ({intact / RATE:.2f} s of it played)")
    assert intact < len(SOUNDS["prompt"]), "the whole prompt played"
    assert -20 <= cut_ms <= 60, f"prompt cut {cut_ms:.0f} ms after the key"
    closings = _played(heard, SOUNDS["closing"])
    assert [n for _, n in closings] == [len(SOUNDS["closing"])], closings
    [(decided, heard_then)] = decisions.seen
    assert (decided["choice_response"], decided["choice_raw_text"]) == ("cancelled", "dtmf:2")
    assert decided["status"] == "completed"
    talked = decisions.at[0] - decisions.answered  # within the wall time of the call
    closing = len(SOUNDS["closing"]) / RATE
    assert closing <= decided["duration_seconds"] <= talked + closing + 0.01, (decided, talked)
    assert all(n < len(SOUNDS["closing"]) for _, n in _played(heard_then, SOUNDS["closing"]))


async def test_a_key_sent_as_info_while_listening_answers(network: MemoryNetwork) -> None:
    """Key 1 (SIP INFO) during the listening: confirmed with dtmf:1, the prompt was heard
    whole once, nothing was transcribed, and the closing follows."""
    phone = network.phone("3002")
    result, decisions = await _call(network, phone, 0.5 + 1.0 + 0.5, "1", "info")
    assert (result["choice_response"], result["choice_raw_text"]) == ("confirmed", "dtmf:1")
    heard = phone.heard()
    assert [n for _, n in _played(heard, SOUNDS["prompt"])] == [len(SOUNDS["prompt"])]
    assert [n for _, n in _played(heard, SOUNDS["closing"])] == [len(SOUNDS["closing"])]
    assert len(decisions.seen) == 1


async def test_an_unknown_key_asks_again(network: MemoryNetwork) -> None:
    """Key 9 names no option: the prompt plays again from its start and, with nothing more
    pressed or said, the call ends unmatched with raw text dtmf:9."""
    phone = network.phone("3003")
    result, decisions = await _call(network, phone, 0.5 + 0.5, "9", "rfc4733")
    assert (result["choice_response"], result["choice_raw_text"]) == (None, "dtmf:9")
    prompts = _played(phone.heard(), SOUNDS["prompt"])
    assert [n < len(SOUNDS["prompt"]) for _, n in prompts] == [True, False], prompts
    [(decided, _)] = decisions.seen
    assert decided["choice_response"] is None


async def test_a_key_as_the_prompt_ends_lets_the_next_prompt_play_before_listening(
    network: MemoryNetwork,
) -> None:
    """An unknown key pressed in the tick the prompt's last frame goes out (its PlayDone
    already posted) asks again, and listening starts only once the re-asked prompt has
    played: the closing comes a whole listening timeout after the second prompt's end."""
    timeout = CHOICE["timeout_seconds"]
    gaps = []
    for n, tick in enumerate(range(72, 82)):  # 1.44-1.62 s: around the first prompt's end
        phone = network.phone(f"31{n:02d}")

        async def report(status: str) -> None:
            pass

        request = {"extension": phone.ext, "ring_timeout": 5, "choice": CHOICE}
        call = OutboundCall(network, request, SOUNDS, _no_speech, report)
        async with asyncio.timeout(10):
            running = asyncio.create_task(call.run())
            await phone.connected.wait()
            network.clock.later(tick * FRAME / RATE, lambda phone=phone: phone.press("9"))
            result = await running
        assert result["choice_raw_text"] == "dtmf:9", result
        heard = phone.heard()
        prompts = _played(heard, SOUNDS["prompt"])
        if len(prompts) != 2:
            continue  # pressed after the listening began: no second prompt in this round
        start, intact = prompts[-1]
        assert intact == len(SOUNDS["prompt"]), prompts
        [(closing, _)] = _played(heard, SOUNDS["closing"])
        gaps.append((closing - start - intact) / RATE)
    print(f"second prompt's end -> closing: {gaps} s")
    assert gaps, "no key landed before the listening"
    assert min(gaps) >= timeout - 0.05, f"listening began before the prompt ended: {gaps}"


async def test_a_key_then_a_hang_up_sends_no_early_result(network: MemoryNetwork) -> None:
    """Key 1 and the hang-up in the same instant: no early result (its duration would count
    a closing that never plays); the final one has the choice and the true duration."""
    phone = network.phone("3020")

    async def report(status: str) -> None:
        pass

    decisions = Decisions(phone)
    request = {"extension": phone.ext, "ring_timeout": 5, "choice": CHOICE}
    call = OutboundCall(network, request, SOUNDS, _no_speech, report, decide=decisions)
    async with asyncio.timeout(10):
        running = asyncio.create_task(call.run())
        await phone.connected.wait()
        answered = time.time()
        await network.clock.sleep(1.0)
        phone.press("1")
        phone.hang_up()
        result = await running
    assert decisions.seen == [], decisions.seen
    assert result["choice_response"] == "confirmed", result
    assert result["duration_seconds"] <= time.time() - answered, result
