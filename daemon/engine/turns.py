"""The caller's turns in the embedded engine: when a turn ends, and its transcript early.

Two ways to decide that the caller has finished (``[engine] end_of_turn``):

- ``silence``: the VAD's silence window (the session's ``silence_duration_ms``) alone.
- ``smart_turn``: after :attr:`TurnPolicy.pause_ms` of silence following speech the Smart Turn
  model judges the utterance so far (its last 8 s); when it finds the turn complete, and the
  transcript does not end on a word no sentence ends with ("the", "to", "um"...), the turn
  ends there. Otherwise the silence window ends it as in ``silence`` mode. Speech that resumes
  first voids the judgement.

Recognition runs while the caller speaks (``smart_turn`` mode): at each pause in the speech
(:data:`ONSET_MS` of silence) the utterance so far is transcribed, with at most one
transcription in flight per session and none queued (a pause that finds one running waits
for it to finish, then starts its own). Whisper's cost is nearly fixed per pass (its encoder),
so the pass that matters is the one started as the caller stops: when the turn ends, its
result is taken if no speech came after it, and only otherwise is the turn transcribed
again.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from daemon.speech import SpeechToText
from daemon.speech.turn import SmartTurn

RATE = 16000
ONSET_MS = 20  # VAD silence (one unvoiced frame) that starts a transcription of the utterance
QUIET_ONSET_MS = 40  # or this long quieter than QUIET_BELOW_PEAK_DB under the utterance's peak
QUIET_BELOW_PEAK_DB = 30.0
# Words an English turn does not end on: a transcript ending so is a pause, whatever the
# intonation (Smart Turn hears "I think the" as finished now and then).
UNFINISHED_ENDINGS = frozenset(
    (
        "a",
        "an",
        "the",
        "to",
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "from",
        "with",
        "about",
        "into",
        "and",
        "or",
        "but",
        "so",
        "because",
        "if",
        "that",
        "than",
        "as",
        "is",
        "are",
        "was",
        "were",
        "am",
        "be",
        "been",
        "my",
        "your",
        "his",
        "her",
        "our",
        "their",
        "its",
        "this",
        "these",
        "those",
        "um",
        "uh",
        "er",
        "erm",
        "hmm",
        "mm",
        "ah",
        "eh",
        "like",
    )
)


def unfinished(text: str) -> bool:
    """Whether ``text`` stops on a word that cannot end a turn, or says nothing."""
    words = re.findall(r"[a-z']+", text.lower())
    return not words or words[-1] in UNFINISHED_ENDINGS


@dataclass(frozen=True)
class TurnPolicy:
    """``[engine] end_of_turn``: ``model`` None is the silence window alone."""

    model: SmartTurn | None = None
    pause_ms: int = 200
    threshold: float = 0.5


class Loudness:
    """Frame energies of the utterance in progress: where its loud part ends.

    webrtcvad goes on flagging frames as voiced some 100 ms after a sound stops; a frame
    :data:`QUIET_BELOW_PEAK_DB` under the loudest of the utterance is silence already. On a
    line whose noise is that loud, no frame is quiet and the VAD alone decides."""

    def __init__(self) -> None:
        self._ratio = 10 ** (-QUIET_BELOW_PEAK_DB / 10)
        self.reset(0)

    def reset(self, at_ms: int) -> None:
        """A new utterance, started at ``at_ms`` (VAD clock)."""
        self._peak = 0.0
        self.loud_end_ms = at_ms  # the end of its latest loud frame
        self.quiet_ms = 0  # quiet frames in a row up to now

    def frame(self, frame: bytes, end_ms: int) -> None:
        """One 20 ms frame of 16-bit audio, ending at ``end_ms``."""
        samples = np.frombuffer(frame, dtype="<i2").astype(np.float64)
        energy = float(np.dot(samples, samples))
        self._peak = max(self._peak, energy)
        if energy > 0 and energy >= self._peak * self._ratio:
            self.loud_end_ms, self.quiet_ms = end_ms, 0
        else:
            self.quiet_ms += len(samples) * 1000 // RATE


@dataclass
class Transcription:
    """One pass of Whisper over an utterance up to ``end_ms`` (the VAD's clock)."""

    utterance: str
    end_ms: int
    task: asyncio.Task[str]
    started: float = field(default_factory=time.monotonic)


class Recognition:
    """The transcriptions of one session's caller speech: at most one in flight.

    Touched on the event loop only (the session's tasks)."""

    def __init__(self, stt: SpeechToText) -> None:
        self._stt = stt
        self._latest: Transcription | None = None

    @property
    def busy(self) -> bool:
        return self._latest is not None and not self._latest.task.done()

    def covering(self, utterance: str, end_ms: int) -> Transcription | None:
        """The latest pass, if it heard ``utterance`` up to ``end_ms`` or beyond."""
        job = self._latest
        if job is None or job.utterance != utterance or job.end_ms < end_ms:
            return None
        if job.task.done() and (job.task.cancelled() or job.task.exception() is not None):
            return None  # failed: the turn is transcribed again
        return job

    def start(self, utterance: str, end_ms: int, pcm16k: NDArray[np.int16]) -> bool:
        """Transcribe ``pcm16k`` unless a pass is in flight (then nothing: no queue)."""
        if self.busy:
            return False
        task = asyncio.create_task(self._stt.transcribe(pcm16k, RATE))
        task.add_done_callback(_retrieve)
        self._latest = Transcription(utterance, end_ms, task)
        return True

    async def text(self, utterance: str, end_ms: int, pcm16k: NDArray[np.int16]) -> str:
        """The transcript of ``utterance`` to ``end_ms``: the pass running or done, else a new
        one on ``pcm16k`` once the one in flight (for older audio) has finished."""
        job = self.covering(utterance, end_ms)
        if job is None:
            if self._latest is not None and self.busy:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._latest.task)
            job = self.covering(utterance, end_ms)
            if job is None:
                self.start(utterance, end_ms, pcm16k)
                assert self._latest is not None
                job = self._latest
        return await asyncio.shield(job.task)

    def close(self) -> None:
        if self._latest is not None:
            self._latest.task.cancel()


def _retrieve(task: asyncio.Task[str]) -> None:
    """A pass nobody waited for may fail: its error is logged by SpeechToText already."""
    if not task.cancelled():
        task.exception()
