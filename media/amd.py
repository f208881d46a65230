"""Answering-machine detection: was an outbound call picked up by a person or a machine?

:class:`AnsweringMachineDetector` runs the algorithm of Asterisk's ``AMD()`` application on
the callee's audio from the answer on, one 20 ms frame at a time, and adds a beep detector.
A frame whose mean absolute sample is under ``silence_threshold`` is silence, any other is
voice. Voice held for ``min_word_ms`` after at least ``between_words_silence_ms`` of silence
starts a word. The first rule that holds decides:

- a beep (a steady pure tone, :class:`BeepDetector`) at any time: machine, ``beep``;
- ``max_word_ms`` of voice without a pause: machine, ``max_word_length``;
- ``max_words`` words: machine, ``max_words``;
- more than ``greeting_ms`` of voice in all: machine, ``long_greeting``;
- ``after_greeting_silence_ms`` of silence after a greeting began: human, ``human`` (someone
  said "hello?" and waits for an answer);
- ``initial_silence_ms`` of silence before any voice: unknown, ``initial_silence`` (Asterisk
  says machine; a silent pick-up is no evidence of one);
- nothing decided after ``total_analysis_ms``: unknown, ``too_long``.

After a machine decision :meth:`AnsweringMachineDetector.greeting_end` follows the same
stream to the end of the greeting, where a voicemail message should start: the end of a
beep, or ``greeting_end_silence_ms`` of silence, or ``voicemail_wait_ms`` after the decision.

Times are stream positions in milliseconds (frames x 20 ms from the first frame fed), so a
decision does not depend on how busy the machine is. Pure numpy, no I/O, no threads: about
30 us per frame, cheap enough to run on an event loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from media.framing import FrameSplitter

FRAME_MS = 20
AMD_RATES = (8000, 16000, 32000, 48000)  # those of the VAD, whatever a leg runs at


@dataclass(frozen=True)
class AmdParameters:
    """Milliseconds unless said. Names follow Asterisk's ``AMD()``, and so do the defaults but
    ``max_words`` (Asterisk 2) and ``after_greeting_silence_ms`` (Asterisk 800), tuned on the
    synthesised pick-ups of the tests. ``beep_*``, ``greeting_end_silence_ms`` and
    ``voicemail_wait_ms`` are not Asterisk's. ``[amd]`` in the settings has the same fields."""

    initial_silence_ms: int = 2500
    greeting_ms: int = 1500
    after_greeting_silence_ms: int = 700
    total_analysis_ms: int = 5000
    min_word_ms: int = 100
    between_words_silence_ms: int = 50
    max_words: int = 4
    silence_threshold: int = 256  # mean absolute sample of a frame, of 32767
    max_word_ms: int = 5000
    beep_min_ms: int = 200
    beep_low_hz: int = 400
    beep_high_hz: int = 2000
    beep_purity: float = 0.8  # share of the 100-3400 Hz energy within +-2 bins of the peak
    greeting_end_silence_ms: int = 1200
    voicemail_wait_ms: int = 30000


class AnsweredBy(StrEnum):
    HUMAN = "human"
    MACHINE = "machine"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Decision:
    answered_by: AnsweredBy
    cause: str  # beep, max_word_length, max_words, long_greeting, human, initial_silence, too_long
    at_ms: int  # stream time of the end of the deciding frame


@dataclass(frozen=True)
class GreetingEnd:
    beep: bool  # the greeting ended with a beep
    at_ms: int  # stream time the end was known: the frame after the beep, or the silence's end
    timed_out: bool  # voicemail_wait_ms passed after the decision without either


@dataclass(frozen=True)
class Beep:
    start_ms: int  # start of the first tone frame
    end_ms: int  # end of the last tone frame
    hz: float  # mean peak frequency over the tone


def _as_bytes(pcm: bytes | NDArray[np.int16]) -> bytes:
    if isinstance(pcm, np.ndarray):
        return pcm.astype("<i2", copy=False).tobytes()
    return pcm


def _frame_level(frame: NDArray[np.int16]) -> float:
    return float(np.mean(np.abs(frame.astype(np.int32))))


class BeepDetector:
    """Finds the tone an answering machine plays before recording.

    Per 20 ms frame: a 40 ms Hann window over this frame and the previous one, an FFT with
    15.6 Hz bins; the frame is tonal when its peak lies between ``beep_low_hz`` and
    ``beep_high_hz``, holds ``beep_purity`` of the 100-3400 Hz energy within two bins either
    side, is louder than ``silence_threshold``, and lies within 30 Hz of the previous frame's
    peak. ``beep_min_ms`` of tonal frames make a beep; it ends at the first frame that is not.
    Speech is harmonic (its energy spreads over several peaks) and moves in pitch, so it
    stays far from both rules."""

    STEADY_HZ = 30.0
    SIDE_BINS = 2

    def __init__(self, rate: int, params: AmdParameters = AmdParameters()) -> None:
        if rate not in AMD_RATES:
            raise ValueError(f"beep detection rate must be one of {AMD_RATES}, got {rate}")
        self._params = params
        self._frame = rate * FRAME_MS // 1000
        self._size = 512 * rate // 8000
        self._bin_hz = rate / self._size
        self._window = np.hanning(2 * self._frame)
        freqs = np.fft.rfftfreq(self._size, 1 / rate)
        self._band = (freqs >= 100) & (freqs <= 3400)
        self._lowest = params.beep_low_hz - self._bin_hz / 2
        self._highest = params.beep_high_hz + self._bin_hz / 2
        self._previous = np.zeros(self._frame, dtype=np.float64)
        self._min_frames = max(1, -(-params.beep_min_ms // FRAME_MS))
        self._elapsed_ms = 0
        self._run: list[float] = []  # peak frequencies of the current run of tonal frames
        self._run_start_ms = 0
        self.last_purity = 0.0  # of the frame just processed if loud and in the band, else 0

    @property
    def tone_frames(self) -> int:
        """Frames in the current run of steady tonal frames (a beep needs beep_min_ms)."""
        return len(self._run)

    @property
    def in_beep(self) -> bool:
        """A tone has lasted ``beep_min_ms`` and goes on."""
        return len(self._run) >= self._min_frames

    def _peak(self, frame: NDArray[np.int16]) -> float | None:
        """The frame's tonal peak in Hz, or None when the frame is not tonal."""
        current = frame.astype(np.float64)
        window = np.concatenate((self._previous, current)) * self._window
        self._previous = current
        power = np.abs(np.fft.rfft(window, self._size)) ** 2
        band = np.where(self._band, power, 0.0)
        total = float(band.sum())
        self.last_purity = 0.0
        if total <= 0 or _frame_level(frame) < self._params.silence_threshold:
            return None
        peak = int(np.argmax(band))
        a, b, c = np.log(band[peak - 1 : peak + 2] + 1e-12)  # parabolic interpolation
        denominator = a - 2 * b + c
        offset = 0.5 * (a - c) / denominator if denominator else 0.0
        hz = float((peak + offset) * self._bin_hz)
        if not self._lowest <= hz <= self._highest:
            return None
        side = self.SIDE_BINS
        self.last_purity = float(band[peak - side : peak + side + 1].sum()) / total
        if self.last_purity < self._params.beep_purity:
            return None
        return hz

    def process(self, frame: NDArray[np.int16]) -> Beep | None:
        """Feed one 20 ms frame; return the beep that ended at its start, if one did."""
        if len(frame) != self._frame:
            raise ValueError(f"a frame holds {self._frame} samples, got {len(frame)}")
        start_ms = self._elapsed_ms
        self._elapsed_ms += FRAME_MS
        hz = self._peak(frame)
        steady = hz is not None and (not self._run or abs(hz - self._run[-1]) <= self.STEADY_HZ)
        if steady and hz is not None:
            if not self._run:
                self._run_start_ms = start_ms
            self._run.append(hz)
            return None
        ended: Beep | None = None
        if self.in_beep:
            ended = Beep(self._run_start_ms, start_ms, float(np.mean(self._run)))
        self._run = []
        if hz is not None:  # a new tone at another pitch starts here
            self._run_start_ms = start_ms
            self._run.append(hz)
        return ended


class AnsweringMachineDetector:
    """Asterisk's AMD algorithm plus a beep, frame by frame (see the module docstring).

    Feed the callee's audio from the answer on to :meth:`process` until it returns the
    decision (once). After a machine decision feed the rest of the same stream to
    :meth:`greeting_end`, which returns where the greeting ended (once). Either method takes
    PCM16 of any length at the detector's rate (8, 16, 32 or 48 kHz); both advance the same
    stream."""

    def __init__(self, rate: int, params: AmdParameters = AmdParameters()) -> None:
        if rate not in AMD_RATES:
            raise ValueError(f"detection rate must be one of {AMD_RATES}, got {rate}")
        self.params = params
        self._frame = rate * FRAME_MS // 1000
        self._splitter = FrameSplitter(self._frame * 2)
        self._beeps = BeepDetector(rate, params)
        self._elapsed_ms = 0
        self._silence_ms = 0  # continuous silence up to now
        self._voice_ms = 0  # all voice since the answer
        self._word_voice_ms = 0  # continuous voice of the current word
        self._in_word = True  # as Asterisk: voice at the very start is not a counted word
        self._in_initial_silence = True
        self._in_greeting = False
        self._words = 0
        self.decision: Decision | None = None
        self._decision_returned = False
        self._decided_ms = 0
        self._greeting_end: GreetingEnd | None = None
        self._greeting_end_returned = False

    @property
    def elapsed_ms(self) -> int:
        return self._elapsed_ms

    @property
    def beep_purity(self) -> float:
        """Purity of the last frame if it was loud with its peak in the beep band, else 0."""
        return self._beeps.last_purity

    @property
    def tone_frames(self) -> int:
        """Frames in the current run of steady tonal frames."""
        return self._beeps.tone_frames

    def process(self, pcm: bytes | NDArray[np.int16]) -> Decision | None:
        """Feed audio; return the decision the first time one is made, else None."""
        self._feed(pcm)
        if self.decision is not None and not self._decision_returned:
            self._decision_returned = True
            return self.decision
        return None

    def greeting_end(self, pcm: bytes | NDArray[np.int16]) -> GreetingEnd | None:
        """After a machine decision: feed audio; return the greeting's end once, else None."""
        if self.decision is None or self.decision.answered_by is not AnsweredBy.MACHINE:
            raise RuntimeError("greeting_end follows a machine decision only")
        self._feed(pcm)
        if self._greeting_end is not None and not self._greeting_end_returned:
            self._greeting_end_returned = True
            return self._greeting_end
        return None

    def _feed(self, pcm: bytes | NDArray[np.int16]) -> None:
        for chunk in self._splitter.feed(_as_bytes(pcm)):
            self._step(np.frombuffer(chunk, dtype="<i2"))

    def _step(self, frame: NDArray[np.int16]) -> None:
        self._elapsed_ms += FRAME_MS
        beep = self._beeps.process(frame)
        silent = _frame_level(frame) < self.params.silence_threshold
        if silent:
            self._silence_ms += FRAME_MS
        else:
            self._silence_ms = 0
        if self.decision is None:
            self.decision = self._analyse(silent)
            self._decided_ms = self._elapsed_ms
            return
        if self.decision.answered_by is AnsweredBy.MACHINE and self._greeting_end is None:
            self._greeting_end = self._follow_greeting(beep)

    def _analyse(self, silent: bool) -> Decision | None:
        p = self.params
        now = self._elapsed_ms
        if self._beeps.in_beep:
            return Decision(AnsweredBy.MACHINE, "beep", now)
        if silent:
            if self._silence_ms >= p.between_words_silence_ms:
                self._in_word = False
                self._word_voice_ms = 0
            if self._in_initial_silence and self._silence_ms >= p.initial_silence_ms:
                return Decision(AnsweredBy.UNKNOWN, "initial_silence", now)
            if self._in_greeting and self._silence_ms >= p.after_greeting_silence_ms:
                return Decision(AnsweredBy.HUMAN, "human", now)
        else:
            self._word_voice_ms += FRAME_MS
            self._voice_ms += FRAME_MS
            if self._word_voice_ms >= p.min_word_ms and not self._in_word:
                self._words += 1
                self._in_word = True
            if self._word_voice_ms >= p.max_word_ms:
                return Decision(AnsweredBy.MACHINE, "max_word_length", now)
            if self._words >= p.max_words:
                return Decision(AnsweredBy.MACHINE, "max_words", now)
            if self._in_greeting and self._voice_ms >= p.greeting_ms:
                return Decision(AnsweredBy.MACHINE, "long_greeting", now)
            if self._voice_ms >= p.min_word_ms:
                self._in_initial_silence = False
                self._in_greeting = True
        if now >= p.total_analysis_ms:
            return Decision(AnsweredBy.UNKNOWN, "too_long", now)
        return None

    def _follow_greeting(self, beep: Beep | None) -> GreetingEnd | None:
        p = self.params
        if beep is not None:
            # the frame after the tone told it ended: the beep is over by now
            return GreetingEnd(beep=True, at_ms=self._elapsed_ms, timed_out=False)
        if self._beeps.in_beep:
            return None
        if self._silence_ms >= p.greeting_end_silence_ms:
            return GreetingEnd(beep=False, at_ms=self._elapsed_ms, timed_out=False)
        if self._elapsed_ms - self._decided_ms >= p.voicemail_wait_ms:
            return GreetingEnd(beep=False, at_ms=self._elapsed_ms, timed_out=True)
        return None
