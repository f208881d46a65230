"""Answering-machine detection on tone and noise bursts: each rule fires at its exact frame."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from numpy.typing import NDArray

from config.schema import AmdSettings
from media.amd import (
    AmdParameters,
    AnsweredBy,
    AnsweringMachineDetector,
    Beep,
    BeepDetector,
    Decision,
    GreetingEnd,
)

RATE = 8000
FRAME = RATE // 50
AFTER_MS = AmdParameters().after_greeting_silence_ms


def silence(ms: int, rate: int = RATE) -> NDArray[np.int16]:
    return np.zeros(rate * ms // 1000, dtype=np.int16)


def voice(ms: int, rate: int = RATE, seed: int = 1) -> NDArray[np.int16]:
    """Loud white noise: voice to the level rule, never a tone to the beep rule."""
    noise = np.random.default_rng(seed).normal(0, 3000, rate * ms // 1000)
    return np.clip(noise, -32767, 32767).astype(np.int16)


def tone(hz: float, ms: int, rate: int = RATE, amplitude: float = 8000) -> NDArray[np.int16]:
    t = np.arange(rate * ms // 1000) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def run(
    audio: NDArray[np.int16], params: AmdParameters | None = None, step: int = FRAME
) -> tuple[Decision | None, GreetingEnd | None]:
    """Feed ``audio`` in chunks of ``step`` samples: the decision, then the greeting's end."""
    detector = AnsweringMachineDetector(RATE, params or AmdParameters())
    decision: Decision | None = None
    end: GreetingEnd | None = None
    for start in range(0, len(audio), step):
        chunk = audio[start : start + step]
        if decision is None:
            decision = detector.process(chunk)
            if decision is not None and decision.answered_by is AnsweredBy.MACHINE:
                end = detector.greeting_end(b"")
        elif decision.answered_by is AnsweredBy.MACHINE and end is None:
            end = detector.greeting_end(chunk)
    return decision, end


def test_initial_silence_is_unknown_at_exactly_its_limit() -> None:
    """2500 ms of silence before any voice gives unknown/initial_silence at 2500 ms."""
    decision, _ = run(silence(4000))
    assert decision == Decision(AnsweredBy.UNKNOWN, "initial_silence", 2500), decision


def test_long_greeting_is_a_machine_after_1500_ms_of_voice() -> None:
    """1.5 s of voice without a pause is a machine/long_greeting once 1500 ms of voice passed."""
    decision, _ = run(np.concatenate([silence(200), voice(3000)]))
    assert decision == Decision(AnsweredBy.MACHINE, "long_greeting", 200 + 1500), decision


def test_a_word_then_silence_is_a_human() -> None:
    """A 300 ms word followed by after_greeting_silence_ms of silence is human/human at the end
    of that silence."""
    decision, _ = run(np.concatenate([silence(400), voice(300), silence(2000)]))
    assert decision == Decision(AnsweredBy.HUMAN, "human", 400 + 300 + AFTER_MS), decision


@pytest.mark.parametrize("max_words", [2, 3])
def test_max_words_is_a_machine_on_the_word_that_reaches_it(max_words: int) -> None:
    """Words of 200 ms split by 100 ms pauses: the ``max_words``-th word decides machine after
    its first 100 ms of voice."""
    parts = [silence(300)]
    for _ in range(max_words + 1):
        parts += [voice(200), silence(100)]
    params = AmdParameters(max_words=max_words)
    decision, _ = run(np.concatenate(parts), params)
    at = 300 + (max_words - 1) * 300 + 100
    assert decision == Decision(AnsweredBy.MACHINE, "max_words", at), decision


def test_one_word_over_max_word_ms_is_a_machine() -> None:
    """A single 5 s utterance is machine/max_word_length at 5000 ms of it (long greetings off)."""
    params = AmdParameters(greeting_ms=9000, total_analysis_ms=9000)
    decision, _ = run(np.concatenate([silence(200), voice(6000)]), params)
    assert decision == Decision(AnsweredBy.MACHINE, "max_word_length", 200 + 5000), decision


def test_no_decision_within_total_analysis_is_unknown() -> None:
    """5 s of 60 ms blips and 60 ms pauses (no word, no long pause) is unknown/too_long at 5000."""
    params = AmdParameters(greeting_ms=9000)
    blips = np.concatenate([np.concatenate([voice(60), silence(60)]) for _ in range(60)])
    decision, _ = run(np.concatenate([silence(200), blips]), params)
    assert decision == Decision(AnsweredBy.UNKNOWN, "too_long", 5000), decision


@pytest.mark.parametrize("hz", [400, 1000, 2000])
def test_a_beep_in_the_band_is_a_machine(hz: int) -> None:
    """A 500 ms tone at 400, 1000 or 2000 Hz decides machine/beep within 260 ms of its start."""
    decision, _ = run(np.concatenate([silence(500), tone(hz, 500), silence(3000)]))
    assert decision is not None
    assert (decision.answered_by, decision.cause) == (AnsweredBy.MACHINE, "beep"), decision
    assert 500 + 200 <= decision.at_ms <= 500 + 260, decision


@pytest.mark.parametrize(("hz", "ms"), [(300, 500), (2500, 500), (1000, 150)])
def test_tones_outside_the_band_or_too_short_are_no_beep(hz: int, ms: int) -> None:
    """A 300 Hz or 2500 Hz tone, or a 150 ms one, is no beep: the level rules decide instead."""
    detector = BeepDetector(RATE)
    audio = np.concatenate([silence(500), tone(hz, ms), silence(1010)])
    whole = len(audio) - FRAME + 1
    beeps = [detector.process(audio[i : i + FRAME]) for i in range(0, whole, FRAME)]
    assert [b for b in beeps if b is not None] == []
    decision, _ = run(audio)
    voice_end = 500 + -(-ms // 20) * 20  # the frame holding the tone's last sample is voice
    assert decision == Decision(AnsweredBy.HUMAN, "human", voice_end + AFTER_MS), decision


def test_beep_detector_reports_start_end_and_pitch() -> None:
    """A 400 ms 1400 Hz tone is reported once it ends, from its start to its end, at 1400 Hz."""
    detector = BeepDetector(RATE)
    audio = np.concatenate([silence(300), tone(1400, 400), silence(300)])
    beeps = [detector.process(audio[i : i + FRAME]) for i in range(0, len(audio), FRAME)]
    found = [b for b in beeps if b is not None]
    assert len(found) == 1, found
    beep = found[0]
    assert 300 <= beep.start_ms <= 320, beep
    assert beep.end_ms == 700, beep
    assert abs(beep.hz - 1400) < 5, beep
    assert isinstance(beep, Beep)


def test_greeting_end_is_the_end_of_the_beep() -> None:
    """After a long greeting, a 0.4 s gap and a 1000 Hz beep, the greeting ends at the beep's end
    (within the next frame, never before it)."""
    audio = np.concatenate(
        [silence(300), voice(2500), silence(400), tone(1000, 400), silence(2000)]
    )
    decision, end = run(audio)
    assert decision == Decision(AnsweredBy.MACHINE, "long_greeting", 300 + 1500), decision
    beep_end = 300 + 2500 + 400 + 400
    assert end is not None
    assert (end.beep, end.timed_out) == (True, False), end
    assert beep_end <= end.at_ms <= beep_end + 20, end


def test_greeting_end_without_a_beep_is_a_long_silence() -> None:
    """A greeting with no beep ends after greeting_end_silence_ms of silence after its voice."""
    audio = np.concatenate([silence(300), voice(2500), silence(3000)])
    _, end = run(audio)
    assert end == GreetingEnd(beep=False, at_ms=300 + 2500 + 1200, timed_out=False), end


def test_greeting_end_times_out_after_voicemail_wait() -> None:
    """A greeting that never stops ends voicemail_wait_ms after the decision, flagged timed out."""
    params = AmdParameters(voicemail_wait_ms=2000)
    _, end = run(np.concatenate([silence(300), voice(6000)]), params)
    assert end == GreetingEnd(beep=False, at_ms=300 + 1500 + 2000, timed_out=True), end


@pytest.mark.parametrize("step", [FRAME, 1, 296, 8000 * 20])
def test_chunking_does_not_change_the_result(step: int) -> None:
    """The same audio fed in 20 ms frames, single samples, 37 ms chunks or one block gives the
    same decision and greeting end."""
    audio = np.concatenate(
        [silence(300), voice(2500), silence(400), tone(1000, 400), silence(3000)]
    )
    expected = run(audio)
    assert expected[1] is not None
    assert run(audio, step=step) == expected


@pytest.mark.parametrize("rate", [16000, 48000])
def test_bytes_at_other_rates_are_accepted(rate: int) -> None:
    """PCM16 bytes at 16 or 48 kHz decide like arrays at 8 kHz (a beep at its frame)."""
    audio = np.concatenate([silence(500, rate), tone(1000, 500, rate), silence(500, rate)])
    detector = AnsweringMachineDetector(rate)
    decision = detector.process(audio.tobytes())
    assert decision is not None
    assert decision.cause == "beep", decision
    assert 700 <= decision.at_ms <= 760, decision
    assert detector.process(silence(20, rate).tobytes()) is None  # decided once
    end = detector.greeting_end(b"")
    assert end == GreetingEnd(beep=True, at_ms=1000 + 20, timed_out=False), end


def test_greeting_end_needs_a_machine_decision() -> None:
    """greeting_end before a machine decision is a programming error."""
    detector = AnsweringMachineDetector(RATE)
    with pytest.raises(RuntimeError):
        detector.greeting_end(silence(100))


def test_rates_other_than_the_vad_rates_are_refused() -> None:
    """The detector and the beep detector run at the VAD's rates (8, 16, 32, 48 kHz) only."""
    with pytest.raises(ValueError, match="rate must be one of"):
        AnsweringMachineDetector(44100)
    with pytest.raises(ValueError, match="rate must be one of"):
        BeepDetector(11025)


def test_settings_defaults_equal_the_detector_defaults() -> None:
    """[amd] in the settings and AmdParameters have the same fields and the same defaults."""
    assert AmdSettings().model_dump() == dataclasses.asdict(AmdParameters())
