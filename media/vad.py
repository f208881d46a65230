"""Voice activity: webrtcvad per frame, turned into speech-start / speech-end events.

webrtcvad judges each 10/20/30 ms frame on its own and flickers. :class:`VoiceActivityDetector`
adds the two rules turn-taking needs: speech starts only after ``min_speech_ms`` of voiced
frames (short clicks and echo bursts do not count; unvoiced gaps up to ``hangover_ms`` inside
the candidate are tolerated), and ends only after ``hangover_ms`` of continuous non-speech.
Times are stream positions in milliseconds, counted from the first frame processed.

webrtcvad judges the shape of a frame's spectrum, hardly its level: speech 75-80 dB below
full scale (what a browser's echo canceller leaves of the agent's own voice, or line crosstalk)
reads as voiced. A frame quieter than ``floor_dbfs`` (-60 dBFS by default, some 25 dB below
the quietest caller a phone line carries) is never speech.

webrtcvad keeps flagging frames as voiced for roughly 80-120 ms after a sound stops (its own
hang-over): a 60 ms click reads as about 140 ms of voice, and speech ends that much after
the last loud sample. ``min_speech_ms`` defaults to 200 so that clicks and short echo bursts
do not start speech.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import webrtcvad
from numpy.typing import NDArray

from media.framing import FrameSplitter

VAD_RATES = (8000, 16000, 32000, 48000)


@dataclass(frozen=True)
class SpeechStarted:
    at_ms: int  # start of the first voiced frame of the utterance


@dataclass(frozen=True)
class SpeechStopped:
    at_ms: int  # end of the last voiced frame
    duration_ms: int


SpeechEvent = SpeechStarted | SpeechStopped


class VoiceActivityDetector:
    def __init__(
        self,
        rate: int = 8000,
        aggressiveness: int = 2,
        min_speech_ms: int = 200,
        hangover_ms: int = 500,
        frame_ms: int = 20,
        *,
        floor_dbfs: float = -60.0,
    ) -> None:
        if rate not in VAD_RATES:
            raise ValueError(f"VAD rate must be one of {VAD_RATES}, got {rate}")
        if frame_ms not in (10, 20, 30):
            raise ValueError(f"VAD frames are 10, 20 or 30 ms, got {frame_ms}")
        if not 0 <= aggressiveness <= 3:
            raise ValueError(f"aggressiveness is 0-3, got {aggressiveness}")
        self.rate = rate
        self.frame_ms = frame_ms
        self.min_speech_ms = min_speech_ms
        self.hangover_ms = hangover_ms
        self._vad = webrtcvad.Vad(aggressiveness)
        samples = rate * frame_ms // 1000
        # the floor as a sum of squares over one frame (no square root per frame)
        self._floor_energy = samples * (32768.0 * 10 ** (floor_dbfs / 20)) ** 2
        self._splitter = FrameSplitter(2 * rate * frame_ms // 1000)
        self._position_ms = 0
        self._speaking = False
        self._candidate_start: int | None = None  # stream time of a possible start
        self._voiced_ms = 0  # voiced time inside the candidate
        self._last_voiced_end = 0  # end of the latest voiced frame
        self._silence_ms = 0  # continuous non-speech so far

    @property
    def speaking(self) -> bool:
        return self._speaking

    @property
    def position_ms(self) -> int:
        return self._position_ms

    @property
    def silence_ms(self) -> int:
        """Continuous non-speech up to the last frame processed (0 right after a voiced one)."""
        return self._silence_ms

    def process(self, pcm: NDArray[np.int16] | bytes) -> list[SpeechEvent]:
        """Feed audio of any length; return the events it completes, in order."""
        data = pcm if isinstance(pcm, bytes) else pcm.astype("<i2").tobytes()
        events: list[SpeechEvent] = []
        for frame in self._splitter.feed(data):
            event = self._frame(frame)
            if event is not None:
                events.append(event)
        return events

    def reset(self) -> None:
        """Forget any speech in progress (e.g. to listen afresh after a prompt)."""
        self._splitter.clear()
        self._speaking = False
        self._candidate_start = None
        self._voiced_ms = 0
        self._silence_ms = 0

    def _frame(self, frame: bytes) -> SpeechEvent | None:
        start = self._position_ms
        self._position_ms += self.frame_ms
        samples = np.frombuffer(frame, dtype="<i2")
        loud = float(np.dot(samples, samples.astype(np.float64))) >= self._floor_energy
        voiced = loud and self._vad.is_speech(frame, self.rate)
        if voiced:
            self._silence_ms = 0
            self._last_voiced_end = self._position_ms
        else:
            self._silence_ms += self.frame_ms

        if self._speaking:
            if self._silence_ms >= self.hangover_ms:
                self._speaking = False
                assert self._candidate_start is not None
                began, self._candidate_start = self._candidate_start, None
                return SpeechStopped(self._last_voiced_end, self._last_voiced_end - began)
            return None

        if voiced:
            if self._candidate_start is None:
                self._candidate_start, self._voiced_ms = start, 0
            self._voiced_ms += self.frame_ms
            if self._voiced_ms >= self.min_speech_ms:
                self._speaking = True
                return SpeechStarted(self._candidate_start)
        elif self._candidate_start is not None and self._silence_ms >= self.hangover_ms:
            self._candidate_start = None  # too short to be speech
        return None


def rms_dbfs(pcm: NDArray[np.int16]) -> float:
    """Level of a block relative to a full-scale square wave, in dB (-inf for silence)."""
    if len(pcm) == 0:
        return float("-inf")
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64))))
    return 20 * float(np.log10(rms / 32768)) if rms > 0 else float("-inf")
