"""The engine's turn bookkeeping: the speech end by loudness, and the passes of Whisper.

The transcriber is a slow stand-in for Whisper (it answers the length of what it heard), run
through the real SpeechToText and speech executor, so the timing of passes is the engine's.
"""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from numpy.typing import NDArray

from daemon.engine.turns import Loudness, Recognition, Speculation
from daemon.speech import SpeechToText
from daemon.speech.engine import PAD_SAMPLES_16K


class SlowLength:
    """Answers ``len=<samples>`` after ``seconds``; counts the passes running at once."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = 0
        self.most = 0
        self._lock = threading.Lock()

    def transcribe(self, pcm16k: NDArray[np.int16], hint: str = "") -> str:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.seconds)  # a worker thread, as Whisper's encoder occupies one
        with self._lock:
            self.running -= 1
        return f"len={len(pcm16k)}"


def _frame(amplitude: int) -> bytes:
    t = np.arange(320)
    return (amplitude * np.sin(2 * np.pi * 200 * t / 16000)).astype("<i2").tobytes()


def test_one_loud_click_does_not_freeze_the_speech_end() -> None:
    """A 30000-amplitude click, then 2 s of 800-amplitude speech: the loud part ends with the
    speech, not at the click."""
    loudness = Loudness()
    loudness.reset(0)
    loudness.frame(_frame(30000), 20)
    for n in range(100):
        loudness.frame(_frame(800), 40 + 20 * n)
    assert loudness.loud_end_ms == 2020
    assert loudness.quiet_ms == 0
    assert loudness.speech_end(2100) == 2020  # within the VAD's hangover: the loud end


def test_a_loud_end_far_before_the_vad_end_is_not_taken() -> None:
    loudness = Loudness()
    loudness.reset(0)
    loudness.frame(_frame(30000), 20)
    assert loudness.speech_end(2000) == 2000


def _pcm(n: int) -> NDArray[np.int16]:
    return np.zeros(n, np.int16)


def _heard(n: int) -> str:
    """The stand-in's answer to ``n`` samples (SpeechToText pads them on both sides)."""
    return f"len={n + 2 * PAD_SAMPLES_16K}"


async def test_a_final_pass_never_takes_another_utterances_pass() -> None:
    """Turn A's pass at a pause covers too little; while it runs, another utterance B takes
    the slot: A's transcript is A's own audio, not B's."""
    model = SlowLength(0.2)
    recognition = Recognition(SpeechToText(model))
    assert recognition.start("A", 0, 100, _pcm(10)) is not None
    await asyncio.sleep(0.25)
    assert recognition.start("B", 0, 5000, _pcm(999)) is not None
    text, job = await recognition.text("A", 0, 300, _pcm(30))
    assert text == _heard(30)
    assert (job.utterance, job.at_pause) == ("A", False)
    recognition.close()


async def test_a_pass_of_an_older_buffer_is_not_reused() -> None:
    """A commit or clear (a new epoch) since the pass: the turn is transcribed again."""
    recognition = Recognition(SpeechToText(SlowLength(0.05)))
    assert recognition.start("A", 0, 1000, _pcm(50)) is not None
    assert recognition.covering("A", 1, 500) is None
    text, job = await recognition.text("A", 1, 500, _pcm(7))
    assert text == _heard(7)
    assert job.epoch == 1


async def test_the_final_pass_does_not_wait_for_a_stale_pause_pass() -> None:
    """A pass at a pause that heard too little is running: the final pass starts at once,
    beside it, so it is done in one pass's time, not two."""
    model = SlowLength(0.4)
    recognition = Recognition(SpeechToText(model))
    assert recognition.start("A", 0, 100, _pcm(10)) is not None
    started = time.monotonic()
    text, _ = await recognition.text("A", 0, 300, _pcm(30))
    assert text == _heard(30)
    assert time.monotonic() - started < 0.7
    assert model.most == 2


async def test_passes_at_pauses_are_bounded_per_process() -> None:
    """Two sessions' pauses: the second finds the process's one speculative pass taken and
    starts nothing; a final pass still runs."""
    model = SlowLength(0.2)
    one, other = Recognition(SpeechToText(model)), Recognition(SpeechToText(model))
    assert Speculation.in_flight == 0
    assert one.start("A", 0, 100, _pcm(10)) is not None
    assert other.start("B", 0, 100, _pcm(10)) is None
    assert not other.can_start()
    text, _ = await other.text("B", 0, 100, _pcm(11))
    assert text == _heard(11)
    await asyncio.sleep(0.3)
    assert Speculation.in_flight == 0
    assert other.start("B", 0, 200, _pcm(12)) is not None
    other.close()
    one.close()
    await asyncio.sleep(0.3)


@pytest.mark.parametrize("seconds", [0.3])
async def test_no_pass_at_a_pause_while_a_speech_job_waits(seconds: float) -> None:
    """Both speech workers busy and a job queued: a pause starts no pass."""
    model = SlowLength(seconds)
    stt = SpeechToText(model)
    jobs = [asyncio.create_task(stt.transcribe(_pcm(5), 16000)) for _ in range(3)]
    await asyncio.sleep(0.05)
    recognition = Recognition(stt)
    assert recognition.start("A", 0, 100, _pcm(10)) is None
    await asyncio.gather(*jobs)
    assert recognition.start("A", 0, 100, _pcm(10)) is not None
    recognition.close()
    await asyncio.sleep(seconds)


async def test_a_closed_session_s_pass_at_a_pause_counts_until_it_has_run() -> None:
    """Closing cannot stop a worker thread: the pass stays in the process's budget until it
    is done, so no second one runs beside it."""
    recognition = Recognition(SpeechToText(SlowLength(0.2)))
    assert recognition.start("A", 0, 100, _pcm(10)) is not None
    recognition.close()
    await asyncio.sleep(0.05)
    assert Speculation.in_flight == 1
    assert not Recognition(SpeechToText(SlowLength(0.2))).can_start()
    await asyncio.sleep(0.3)
    assert Speculation.in_flight == 0
