"""The caller's turns in the embedded engine: when a turn ends, and its transcript early.

Two ways to decide that the caller has finished (``[engine] end_of_turn``):

- ``silence``: the VAD's silence window (the session's ``silence_duration_ms``) alone.
- ``smart_turn``: after :attr:`TurnPolicy.pause_ms` of silence following speech the Smart Turn
  model judges the utterance so far (its last 8 s); when it finds the turn complete, and the
  transcript does not end on a word a turn practically never ends with ("the", "and",
  "um"...; a digit is an end), the turn ends there. Otherwise the silence window ends it as
  in ``silence`` mode. Speech that resumes first voids the judgement.

Recognition runs while the caller speaks (``smart_turn`` mode): at a pause in the speech
(:data:`ONSET_MS` of VAD silence, or the loud part's end) the utterance so far is
transcribed, with at most one such pass in flight per session, one per process, none while
a speech job waits for a worker, none while a reply streams, and none queued (a pause that
finds no room starts nothing). Whisper's cost is nearly fixed per pass (its encoder), so the
pass that matters is the one started as the caller stops: when the turn ends, its result is
taken if it heard the same buffer to the speech's end, and only otherwise is the turn
transcribed again, at once.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from daemon.speech import SpeechToText
from daemon.speech.engine import waiting
from daemon.speech.turn import SmartTurn

RATE = 16000
ONSET_MS = 100  # VAD silence that starts a transcription of the utterance (not a flicker)
QUIET_ONSET_MS = 40  # or this long quieter than QUIET_BELOW_PEAK_DB under the recent peak
QUIET_BELOW_PEAK_DB = 30.0
PEAK_FRAMES = 50  # the peak is that of the last second of frames
LOUD_END_LEAD_MS = 160  # the loud part may end this much before the VAD's end, no more
SURE = 0.9  # a verdict this sure overrides the weaker word endings
# Words an English turn practically never ends on: a transcript ending so is a pause,
# whatever the intonation (Smart Turn hears "Please send the" as finished now and then).
UNFINISHED_ENDINGS = frozenset(
    ("a", "an", "the", "and", "or", "but", "because", "if", "than")  # articles, conjunctions
).union(("um", "uh", "er", "erm", "hmm", "mm", "ah", "eh"))  # fillers
# Endings that are usually a pause ("My name is", "I would like to") but end some turns
# ("Who is it for?", "Yes, it is."): they veto only a verdict under SURE, which complete
# turns mostly reach.
WEAK_ENDINGS = frozenset(
    ("to", "of", "with", "in", "on", "at", "by", "for", "from", "about", "into", "as")
).union(("is", "are", "was", "were", "am", "be", "been", "so", "that", "like"))
WEAK_ENDINGS |= {"my", "your", "his", "her", "its", "our", "their", "this", "these", "those"}


def unfinished(text: str, probability: float = 0.0) -> bool:
    """Whether ``text`` stops on a word that cannot end a turn, or says nothing; a digit
    (Whisper writes numbers so) ends it as finished. ``probability``: Smart Turn's verdict."""
    words = re.findall(r"[\w']+", text.lower())
    if not words:
        return True
    last = words[-1]
    return last in UNFINISHED_ENDINGS or (last in WEAK_ENDINGS and probability < SURE)


@dataclass(frozen=True)
class TurnPolicy:
    """``[engine] end_of_turn``: ``model`` None is the silence window alone."""

    model: SmartTurn | None = None
    pause_ms: int = 200
    threshold: float = 0.5
    word_check: bool = True  # a transcript ending on an unfinished word vetoes the verdict


class Loudness:
    """Frame energies of the utterance in progress: where its loud part ends.

    webrtcvad goes on flagging frames as voiced some 100 ms after a sound stops; a frame
    :data:`QUIET_BELOW_PEAK_DB` under the loudest of the last second is silence already. The
    peak is recent, so one click or shout does not make later speech quiet. On a line whose
    noise is that loud, no frame is quiet and the VAD alone decides."""

    def __init__(self) -> None:
        self._ratio = 10 ** (-QUIET_BELOW_PEAK_DB / 10)
        self._energies: deque[float] = deque(maxlen=PEAK_FRAMES)
        self.reset(0)

    def reset(self, at_ms: int) -> None:
        """A new utterance, started at ``at_ms`` (VAD clock)."""
        self._energies.clear()
        self.loud_end_ms = at_ms  # the end of its latest loud frame
        self.quiet_ms = 0  # quiet frames in a row up to now

    def frame(self, frame: bytes, end_ms: int) -> None:
        """One 20 ms frame of 16-bit audio, ending at ``end_ms``."""
        samples = np.frombuffer(frame, dtype="<i2").astype(np.float64)
        energy = float(np.dot(samples, samples))
        self._energies.append(energy)
        if energy > 0 and energy >= max(self._energies) * self._ratio:
            self.loud_end_ms, self.quiet_ms = end_ms, 0
        else:
            self.quiet_ms += len(samples) * 1000 // RATE

    def speech_end(self, vad_end_ms: int) -> int:
        """Where the speech ends: the loud part's end when it is just before the VAD's end
        (the VAD's hangover), else the VAD's."""
        lead = vad_end_ms - self.loud_end_ms
        return self.loud_end_ms if 0 <= lead <= LOUD_END_LEAD_MS else vad_end_ms


class Speculation:
    """The process's budget of passes started at pauses (their results are often dropped):
    one at a time for all sessions, and none while a speech job waits for a worker, so a
    final pass, a Smart Turn verdict or a reply's synthesis never queues behind one."""

    in_flight = 0

    @classmethod
    def allows(cls) -> bool:
        return cls.in_flight == 0 and waiting() == 0


@dataclass
class Transcription:
    """One pass of Whisper over an utterance up to ``end_ms`` (the VAD's clock), heard in
    the input buffer's ``epoch`` (a commit or clear since makes it another buffer's)."""

    utterance: str
    epoch: int
    end_ms: int
    task: asyncio.Task[str]
    at_pause: bool  # started at a pause (speculative), not for a turn already over
    started: float = field(default_factory=time.monotonic)


class Recognition:
    """The transcriptions of one session's caller speech: at most one pass started at a
    pause in flight (and one per process, :class:`Speculation`); a turn's final pass never
    waits for one.

    Touched on the event loop only (the session's tasks)."""

    def __init__(self, stt: SpeechToText) -> None:
        self._stt = stt
        self._latest: Transcription | None = None
        self._jobs: dict[asyncio.Task[str], bool] = {}  # the passes in flight: at a pause?
        self.passes: dict[str, int] = {}  # passes started per utterance (the latest few)

    @property
    def busy(self) -> bool:
        return self._latest is not None and not self._latest.task.done()

    def covering(self, utterance: str, epoch: int, end_ms: int) -> Transcription | None:
        """The latest pass, if it heard ``utterance`` of ``epoch`` up to ``end_ms`` or
        beyond."""
        job = self._latest
        if job is None or (job.utterance, job.epoch) != (utterance, epoch) or job.end_ms < end_ms:
            return None
        if job.task.done() and (job.task.cancelled() or job.task.exception() is not None):
            return None  # failed: the turn is transcribed again
        return job

    def can_start(self) -> bool:
        """Whether a pass at a pause may start now."""
        return not self.busy and Speculation.allows()

    def start(
        self, utterance: str, epoch: int, end_ms: int, pcm16k: NDArray[np.int16]
    ) -> Transcription | None:
        """Transcribe ``pcm16k`` at a pause, unless :meth:`can_start` says no (no queue)."""
        if not self.can_start():
            return None
        return self._pass(utterance, epoch, end_ms, pcm16k, at_pause=True)

    def _pass(
        self, utterance: str, epoch: int, end_ms: int, pcm16k: NDArray[np.int16], at_pause: bool
    ) -> Transcription:
        if at_pause:
            Speculation.in_flight += 1
        task = asyncio.create_task(self._stt.transcribe(pcm16k, RATE))
        self._jobs[task] = at_pause
        task.add_done_callback(lambda t: self._finished(t, at_pause))
        if utterance not in self.passes and len(self.passes) >= 8:
            self.passes.clear()
        self.passes[utterance] = self.passes.get(utterance, 0) + 1
        self._latest = Transcription(utterance, epoch, end_ms, task, at_pause)
        return self._latest

    def _finished(self, task: asyncio.Task[str], at_pause: bool) -> None:
        self._jobs.pop(task, None)
        if at_pause:
            Speculation.in_flight -= 1
        _retrieve(task)

    async def text(
        self, utterance: str, epoch: int, end_ms: int, pcm16k: NDArray[np.int16]
    ) -> tuple[str, Transcription]:
        """The transcript of ``utterance`` to ``end_ms`` and the pass that gave it: the pass
        running or done, else a new one on ``pcm16k`` at once (beside a stale pass at a
        pause, which runs to its end: its worker thread cannot be stopped)."""
        job = self.covering(utterance, epoch, end_ms)
        if job is None:
            job = self._pass(utterance, epoch, end_ms, pcm16k, at_pause=False)
        assert (job.utterance, job.epoch) == (utterance, epoch)
        return await asyncio.shield(job.task), job

    def close(self) -> None:
        """Cancel the final passes; a pass at a pause runs out (its worker thread cannot be
        stopped, and the process's budget counts it until it has)."""
        for task, at_pause in list(self._jobs.items()):
            if not at_pause:
                task.cancel()


def _retrieve(task: asyncio.Task[str]) -> None:
    """A pass nobody waited for may fail: its error is logged by SpeechToText already."""
    if not task.cancelled():
        task.exception()
