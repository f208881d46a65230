"""Outbound notification calls on in-memory legs: what the callee hears and what is reported."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from daemon.calls.outbound import OutboundCall
from daemon.legs.memory import MediaClock, MemoryNetwork, PhoneEvent
from media.resample import resample
from tests.audio import occurrences, speech

RATE = 8000
WALL_LIMIT = 2.0  # seconds of wall time a call may take on the virtual clock


def _noise(seconds: float, seed: int) -> NDArray[np.int16]:
    """A sound found again by correlation (sharper than a tone), loud enough to be heard."""
    rng = np.random.default_rng(seed)
    return rng.integers(-8000, 8000, round(seconds * RATE)).astype(np.int16)


def _copies(recording: NDArray[np.int16], sound: NDArray[np.int16]) -> int:
    """How many exact copies of ``sound`` ``recording`` holds (the memory network is lossless)."""
    n = len(sound)
    starts = np.flatnonzero(recording[: len(recording) - n + 1] == sound[0])
    return sum(np.array_equal(recording[i : i + n], sound) for i in starts)


def _words(text: str) -> NDArray[np.int16]:
    rate, pcm = speech(text)
    return resample(pcm, rate, RATE)


SOUNDS = {"message": _noise(0.5, 1), "prompt": _noise(0.5, 2), "closing": _noise(0.3, 3)}
CHOICE = {
    "options": [{"value": "confirmed", "synonyms": ["yes"]}, {"value": "cancelled"}],
    "timeout_seconds": 1.0,
    "repeat_count": 2,
}


class Transcriber:
    """The speech service's part: says which of the phone's sentences an utterance holds."""

    def __init__(
        self, sentences: dict[str, NDArray[np.int16]], clock: MediaClock | None = None
    ) -> None:
        self.sentences = sentences
        self.clock = clock
        self.heard: list[NDArray[np.int16]] = []
        self.at: list[float] = []  # when each request came, on the clock

    async def __call__(self, pcm: NDArray[np.int16], rate: int, hint: str) -> str:
        assert rate == RATE
        self.heard.append(pcm)
        if self.clock is not None:
            self.at.append(self.clock.now())
        return " ".join(t for t, s in self.sentences.items() if occurrences(pcm, s, 0.8, 4))


@pytest.fixture
async def network() -> AsyncIterator[MemoryNetwork]:
    async with MediaClock(speed=None) as clock:
        yield MemoryNetwork(clock, rate=RATE)


async def _call(
    network: MemoryNetwork,
    extension: str,
    choice: dict[str, Any] | None = None,
    transcriber: Transcriber | None = None,
    sounds: dict[str, NDArray[np.int16]] = SOUNDS,
    *,
    decided: list[float] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Run one call to ``extension``; its result and the statuses it reported (``decided``
    gets the clock time of the early result)."""
    reports: list[str] = []

    async def report(status: str) -> None:
        reports.append(status)

    async def decide(result: dict[str, Any]) -> None:
        if decided is not None:
            decided.append(network.clock.now())

    request: dict[str, Any] = {"extension": extension, "ring_timeout": 5}
    if choice is not None:
        request["choice"] = choice
    call = OutboundCall(
        network, request, sounds, transcriber or Transcriber({}), report, decide=decide
    )
    began = time.monotonic()
    async with asyncio.timeout(10):
        result = await call.run()
    wall = time.monotonic() - began
    print(f"call to {extension}: {network.clock.now():.2f} s on the clock, {wall:.3f} s wall")
    assert wall < WALL_LIMIT, f"{wall:.2f} s wall for one call on the virtual clock"
    return result, reports


async def test_plain_notification_is_heard_to_its_last_sample(network: MemoryNetwork) -> None:
    """A call without a choice plays the message to its last sample, hangs up, completes."""
    phone = network.phone("2001", answer_after=0.4)
    result, reports = await _call(network, "2001")
    assert result["status"] == "completed", result
    assert result["message_played"] is True
    assert reports == ["ringing", "answered"]
    heard = phone.heard()
    start = int(np.flatnonzero(heard)[0])
    message = SOUNDS["message"]
    assert np.array_equal(heard[start : start + len(message)], message), "message not intact"
    assert not np.any(heard[start + len(message) :]), "something after the message"
    assert phone.events == [PhoneEvent("hung_up")]


async def test_busy_is_reported_as_busy(network: MemoryNetwork) -> None:
    """A 486 from the callee gives status busy with the SIP code, and no hang-up of ours."""
    phone = network.phone("2002", on_incoming="busy", answer_after=0.3)
    result, reports = await _call(network, "2002")
    assert (result["status"], result["sip_code"]) == ("busy", 486), result
    assert reports == ["ringing"]
    assert phone.events == []


async def test_callee_hanging_up_during_the_message(network: MemoryNetwork) -> None:
    """The callee hangs up half way through the message: completed, message not played."""
    phone = network.phone("2003")
    long = {**SOUNDS, "message": _noise(2.0, 4)}
    running = asyncio.create_task(_call(network, "2003", sounds=long))
    async with asyncio.timeout(5):
        await phone.connected.wait()
    await network.clock.sleep(1.0)
    phone.hang_up()
    result, _ = await running
    assert result["status"] == "completed", result
    assert result["message_played"] is False
    assert phone.events == []  # we never hung up a call the callee had ended


async def test_callee_hanging_up_as_they_answer(network: MemoryNetwork) -> None:
    """A callee who hangs up in the instant of answering (the call is gone before its media
    is asked for) gives a completed call with the message not played, not a stuck flow."""
    phone = network.phone("2006", answer_after=0.2)
    running = asyncio.create_task(_call(network, "2006"))
    async with asyncio.timeout(5):
        await phone.connected.wait()
    phone.hang_up()  # before the flow has seen the answer
    result, reports = await running
    assert (result["status"], result["message_played"]) == ("completed", False), result
    assert reports == ["ringing", "answered"]


async def test_hello_at_pick_up_is_not_the_answer(network: MemoryNetwork) -> None:
    """A "hello?" said over the message and prompt is dropped when listening starts; the
    answer said after the prompt is the only utterance transcribed, and it counts."""
    phone = network.phone("2004")
    hello, answer = _words("Hello?"), _words("No thanks.")
    transcriber = Transcriber({"hello": hello, "no thanks": answer})
    choice = {**CHOICE, "options": [{"value": "cancelled", "synonyms": ["no thanks"]}]}
    running = asyncio.create_task(_call(network, "2004", choice, transcriber))
    async with asyncio.timeout(5):
        await phone.connected.wait()
    phone.play(hello)  # over the message (0.5 s) and into the prompt, ending before it does
    spoken = len(SOUNDS["message"]) + len(SOUNDS["prompt"])
    await network.clock.sleep(spoken / RATE + 0.2)
    phone.play(answer, "answer")
    result, _ = await running
    assert result["choice_response"] == "cancelled", result
    assert len(transcriber.heard) == 1, f"{len(transcriber.heard)} utterances transcribed"
    assert occurrences(transcriber.heard[0], hello, 0.8, 4) == 0, "the hello was transcribed"


async def test_silence_repeats_the_prompt_then_null(network: MemoryNetwork) -> None:
    """Nothing said: the callee hears the prompt repeat_count times, then the closing; the
    call completes with no choice and nothing was transcribed."""
    phone = network.phone("2005")
    transcriber = Transcriber({})
    result, _ = await _call(network, "2005", CHOICE, transcriber)
    assert result["status"] == "completed", result
    assert result["choice_response"] is None
    assert transcriber.heard == []
    heard = phone.heard()
    prompts = _copies(heard, SOUNDS["prompt"])
    assert prompts == CHOICE["repeat_count"], f"prompt heard {prompts} times"
    assert _copies(heard, SOUNDS["closing"]) == 1


async def test_the_result_carries_the_invite_time_and_the_black_box(
    network: MemoryNetwork,
) -> None:
    """The result says when the INVITE went out and carries a black box whose answer to first
    audio is the time from the answer to the message's first frame out on the leg's clock
    (one frame, on a lossless network); a busy callee's box has no media."""
    network.phone("2010", answer_after=0.4)
    before = time.time()
    result, _ = await _call(network, "2010")
    box = result["black_box"]
    assert box is not None, result
    assert before <= result["invite_at"] <= time.time(), result
    assert box["outbound"]["invite_at"] == result["invite_at"]
    first_audio_ms = box["outbound"]["answer_to_first_audio_ms"]
    print(f"answer to first audio {first_audio_ms} ms on the clock")
    assert first_audio_ms is not None, box
    assert 0 <= first_audio_ms <= 40, box["outbound"]
    assert box["media"] is not None, box
    assert box["media"]["uplink_frames"] > 0, box["media"]
    network.phone("2011", on_incoming="busy", answer_after=0.3)
    busy, _ = await _call(network, "2011")
    assert busy["black_box"]["media"] is None, busy
    assert busy["black_box"]["outbound"]["answer_to_first_audio_ms"] is None, busy


async def _answer_after_the_prompt(
    network: MemoryNetwork,
    words: NDArray[np.int16],
    transcriber: Transcriber,
    choice: dict[str, Any] = CHOICE,
) -> tuple[dict[str, Any], float, list[float]]:
    """The callee says ``words`` once the prompt has played: the result, the clock time the
    voice ended, and when the result was decided."""
    phone = network.phone("2020")
    decided: list[float] = []
    running = asyncio.create_task(_call(network, "2020", choice, transcriber, decided=decided))
    async with asyncio.timeout(5):
        await phone.connected.wait()
    spoken = len(SOUNDS["message"]) + len(SOUNDS["prompt"])
    await network.clock.sleep(spoken / RATE + 0.1)
    voice_end = network.clock.now() + np.flatnonzero(np.abs(words) > 300)[-1] / RATE
    phone.play(words, "answer")
    result, _ = await running
    return result, voice_end, decided


async def test_an_exact_answer_is_decided_at_the_first_pause(network: MemoryNetwork) -> None:
    """A "yes" is transcribed at the first 240 ms pause and, matching exactly, ends the
    listening once the pause lasts 560 ms: decided before the 700 ms end-of-speech silence,
    one transcription."""
    yes = _words("Yes.")
    transcriber = Transcriber({"yes": yes}, network.clock)
    result, voice_end, decided = await _answer_after_the_prompt(network, yes, transcriber)
    assert result["choice_response"] == "confirmed", result
    [at] = decided
    print(f"decided {1000 * (at - voice_end):.0f} ms after the voice ended")
    assert at - voice_end < 0.6, f"decided {1000 * (at - voice_end):.0f} ms after the voice"
    assert len(transcriber.heard) == 1, f"{len(transcriber.heard)} transcriptions"


async def test_an_unmatched_answer_reuses_the_early_transcription(
    network: MemoryNetwork,
) -> None:
    """An answer naming no option is transcribed once, at its first pause, and that
    transcript stands for the whole utterance when the speech ends (no second run)."""
    maybe = _words("Maybe.")
    transcriber = Transcriber({"maybe": maybe}, network.clock)
    result, voice_end, _ = await _answer_after_the_prompt(network, maybe, transcriber)
    assert (result["choice_response"], result["choice_raw_text"]) == (None, "maybe"), result
    [at] = transcriber.at
    print(f"transcribed {1000 * (at - voice_end):.0f} ms after the voice ended")
    assert at - voice_end < 0.6, f"transcribed {1000 * (at - voice_end):.0f} ms after"


YES_NO = {
    **CHOICE,
    "options": [
        {"value": "confirmed", "synonyms": ["yes", "yeah"]},
        {"value": "cancelled", "synonyms": ["no"]},
    ],
}


class FillerTranscriber(Transcriber):
    """Whisper's part for a filler-led answer: the filler alone is heard as "yeah", the filler
    with the answer after it as "uh no"."""

    def __init__(self, answer: NDArray[np.int16], clock: MediaClock) -> None:
        super().__init__({}, clock)
        self.answer = answer

    async def __call__(self, pcm: NDArray[np.int16], rate: int, hint: str) -> str:
        await super().__call__(pcm, rate, hint)
        return "uh no" if occurrences(pcm, self.answer, 0.8, 4) else "yeah"


def _voiced(pcm: NDArray[np.int16]) -> NDArray[np.int16]:
    """``pcm`` without its leading and trailing silence."""
    loud = np.flatnonzero(np.abs(pcm) > 300)
    return pcm[loud[0] : loud[-1] + 1]


async def test_a_filler_and_a_breath_do_not_decide(network: MemoryNetwork) -> None:
    """ "Um" + 0.45 s + "No" (a pause of about 0.5 s on the VAD) is decided on the whole
    answer, cancelled, not on the filler heard alone as "yeah" at the pause."""
    uh, no = _voiced(_words("Um.")), _voiced(_words("No."))
    words = np.concatenate((uh, np.zeros(round(0.45 * RATE), np.int16), no))
    transcriber = FillerTranscriber(no, network.clock)
    result, _, _ = await _answer_after_the_prompt(network, words, transcriber, YES_NO)
    assert result["choice_response"] == "cancelled", (result, len(transcriber.heard))


class KeyedTranscriber(Transcriber):
    """Hears "no" in audio that holds ``last``, "yes" in any other."""

    def __init__(self, last: NDArray[np.int16], clock: MediaClock) -> None:
        super().__init__({}, clock)
        self.last = last

    async def __call__(self, pcm: NDArray[np.int16], rate: int, hint: str) -> str:
        await super().__call__(pcm, rate, hint)
        return "no" if occurrences(pcm, self.last, 0.8, 4) else "yes"


async def test_an_early_transcription_taken_before_more_speech_does_not_decide(
    network: MemoryNetwork,
) -> None:
    """ "Yes" + 0.3 s + "Well" + 0.3 s + "No, cancel it": both early transcriptions (at the
    two pauses) hear "yes", the third part comes after them, so neither decides nor stands for
    the whole; the whole is transcribed and gives cancelled."""
    parts = [_voiced(_words(t)) for t in ("Yes.", "Well.", "No, cancel it.")]
    breath = np.zeros(round(0.3 * RATE), np.int16)
    words = np.concatenate((parts[0], breath, parts[1], breath, parts[2]))
    transcriber = KeyedTranscriber(parts[2], network.clock)
    result, _, _ = await _answer_after_the_prompt(network, words, transcriber, YES_NO)
    heard = [len(pcm) / RATE for pcm in transcriber.heard]
    assert result["choice_response"] == "cancelled", (result, heard)
    assert len(heard) == 3, f"transcribed {heard} s"
    assert occurrences(transcriber.heard[-1], parts[0], 0.8, 4) == 1, "last one not the whole"


async def test_a_broken_task_ends_the_call_as_failed(network: MemoryNetwork) -> None:
    """A sound that cannot be played (no prompt audio: the play task raises) ends the call
    at once as failed with the error, hung up by us, instead of leaving it silent."""
    phone = network.phone("2030")
    no_prompt = {k: v for k, v in SOUNDS.items() if k != "prompt"}
    result, _ = await _call(network, "2030", CHOICE, sounds=no_prompt)
    assert (result["status"], result["message_played"]) == ("failed", True), result
    assert "prompt" in result["error"], result
    assert phone.events == [PhoneEvent("hung_up")]


async def test_listening_times_out_with_no_audio_from_the_callee(network: MemoryNetwork) -> None:
    """A callee whose audio never arrives (no RTP): each listening still ends after its
    timeout on the leg's clock, so the prompt repeats and the call completes unmatched."""
    phone = network.phone("2040")
    phone.mute()
    result, _ = await _call(network, "2040", CHOICE)
    assert (result["status"], result["choice_response"]) == ("completed", None), result
    prompts = _copies(phone.heard(), SOUNDS["prompt"])
    assert prompts == CHOICE["repeat_count"], f"prompt heard {prompts} times"
    assert _copies(phone.heard(), SOUNDS["closing"]) == 1
