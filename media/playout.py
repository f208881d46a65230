"""The playout buffer: model audio in bursts, one frame out per clock tick.

Models send audio faster than real time, in chunks of any size. The buffer cuts it into
frames of the call's frame size, keeps up to ``capacity_seconds`` of it, and hands out exactly
one frame per :meth:`PlayoutBuffer.pull`: the next queued frame, or silence. For barge-in it
counts, per response item, the samples actually handed out (so ``audio_end_ms`` of a truncate
is what the caller heard), and :meth:`PlayoutBuffer.flush` silences playout within one frame,
fading the frame in progress out over ``fade_ms`` instead of cutting it. For the call's black
box it stamps, on the call's media clock, when the first frame of each item was handed out.

Threads: one producer (the call's asyncio task) calls :meth:`push`, :meth:`end_item` and
:meth:`flush` and :meth:`forget`; one consumer (the media clock thread, in
``onFrameRequested``) calls :meth:`pull`. They share only ``collections.deque`` objects
(``append``/``popleft`` are atomic) and state each written by one side only (``_Producer``,
``_Consumer`` and the per-item counts), so :meth:`pull` never takes a lock nor blocks.

For the echo guard (:mod:`media.echo`) :meth:`pull` also keeps what it handed out, silence
and fades included, in a preallocated ring of ``reference_seconds``, each frame stamped on
:attr:`clock`; :meth:`reference` reads it from the loop. The consumer writes a frame's row and
stamp first and only then counts it, and a reader copies only counted frames older than the
one being written, so neither waits for the other.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class _Frame:
    generation: int  # flush generation at push time; older ones are dropped by a flush
    item_id: str
    data: bytes  # exactly one frame of int16 little-endian samples
    samples: int  # real samples in it (the last frame of an item is padded with silence)
    stamp: float = 0.0  # arrival time of the audio that starts in this frame (metering), or 0


@dataclass(frozen=True)
class PlayoutStats:
    frames_out: int  # frames handed out, silence included
    underruns: int  # silent frames handed out while an item was still streaming
    overrun_samples: int  # samples refused because the buffer was full
    flushes: int
    depth_ms: float  # audio queued now


@dataclass
class _Producer:
    """State written by the producer only (the consumer reads ``generation``, ``streaming``)."""

    generation: int = 0  # flushes asked for
    queued_in: int = 0  # samples queued as frames, padding included
    overrun_samples: int = 0
    pending: NDArray[np.int16] = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    pending_item: str | None = None  # owner of ``pending``, the start of a frame
    pending_stamp: float = 0.0
    streaming: str | None = None  # open item: silence now is an underrun


@dataclass
class _Consumer:
    """Counters written by the consumer only (the producer reads ``generation``, ``queued_out``)."""

    generation: int = 0  # flushes carried out
    queued_out: int = 0
    frames_out: int = 0
    underruns: int = 0
    flushes: int = 0
    item: str | None = None  # the item of the last frame handed out


class PlayoutBuffer:
    def __init__(
        self,
        rate: int = 8000,
        frame_ms: int = 20,
        capacity_seconds: float = 60.0,
        fade_ms: float = 8.0,
        clock: Callable[[], float] = monotonic,
        *,
        reference_seconds: float = 4.0,
    ) -> None:
        if not 5.0 <= fade_ms <= frame_ms:
            raise ValueError(f"fade_ms must be between 5 and {frame_ms}, got {fade_ms}")
        self.rate = rate
        self.frame_samples = rate * frame_ms // 1000
        self._capacity = int(capacity_seconds * rate)
        self._silence = bytes(2 * self.frame_samples)
        fade = round(fade_ms * rate / 1000)
        ramp = np.zeros(self.frame_samples)
        ramp[:fade] = np.cos(np.linspace(0, np.pi / 2, fade, endpoint=False)) ** 2
        self._fade = ramp
        self._fade_samples = fade
        self._frames: deque[_Frame] = deque()  # producer appends, consumer pops
        self._forgotten: deque[str] = deque()  # items to stop counting: producer appends
        self._in = _Producer()
        self._out = _Consumer()
        self._played: dict[str, int] = {}  # samples handed out per item (consumer writes)
        # Seconds from arrival to hand-out of stamped frames (consumer appends, bounded).
        self.latencies: deque[float] = deque(maxlen=4096)
        # The clock first frames out are stamped on (the call's media clock): set before
        # audio flows; read by the consumer.
        self.clock = clock
        self._first_out: dict[str, float] = {}  # item -> clock() at its first frame out
        # What was handed out, frame by frame, and when (the consumer writes, readers copy).
        slots = max(8, round(reference_seconds * 1000 / frame_ms))
        self._ref = np.zeros((slots, self.frame_samples), dtype=np.int16)
        self._ref_at = np.full(slots, -np.inf)
        self._ref_frames = 0  # frames written so far (consumer writes, after the row)
        self.sound_at = -np.inf  # clock() when the last frame that was not silence went out

    # -- producer side ---------------------------------------------------------------------

    def push(self, item_id: str, pcm: NDArray[np.int16], arrived: float = 0.0) -> int:
        """Queue audio of ``item_id``; return the samples accepted (the rest overran).

        ``arrived`` (``time.monotonic()`` when the audio reached the daemon) meters the
        daemon's own delay: when nothing is queued ahead of this audio, the first frame it
        completes carries the stamp, and :attr:`latencies` records how long after its arrival
        that frame was handed out (decoding, the push, and the wait for the next clock tick;
        not the wait behind earlier audio, which is the model sending ahead of real time).
        """
        if self._in.pending_item is not None and self._in.pending_item != item_id:
            self.end_item(self._in.pending_item)
        room = self._capacity - self.depth_samples - len(self._in.pending)
        accepted = min(len(pcm), max(0, room))
        self._in.overrun_samples += len(pcm) - accepted
        self._in.streaming = item_id
        self._in.pending_item = item_id
        audio = np.concatenate((self._in.pending, pcm[:accepted]))
        whole = len(audio) - len(audio) % self.frame_samples
        data = audio[:whole].astype("<i2").tobytes()
        size = 2 * self.frame_samples
        generation = self._in.generation
        if arrived and not self._in.pending_stamp and self.depth_samples == 0:
            self._in.pending_stamp = arrived
        for offset in range(0, len(data), size):
            stamp, self._in.pending_stamp = self._in.pending_stamp, 0.0
            self._frames.append(
                _Frame(generation, item_id, data[offset : offset + size], self.frame_samples, stamp)
            )
        self._in.queued_in += whole
        self._in.pending = audio[whole:]
        return accepted

    def end_item(self, item_id: str) -> None:
        """The item's audio is complete: queue its last partial frame, padded with silence."""
        if self._in.pending_item == item_id and len(self._in.pending):
            padded = np.zeros(self.frame_samples, dtype=np.int16)
            padded[: len(self._in.pending)] = self._in.pending
            self._frames.append(
                _Frame(self._in.generation, item_id, padded.tobytes(), len(self._in.pending))
            )
            self._in.queued_in += self.frame_samples
        if self._in.pending_item == item_id:
            self._in.pending = np.zeros(0, dtype=np.int16)
            self._in.pending_item = None
        if self._in.streaming == item_id:
            self._in.streaming = None

    def flush(self) -> None:
        """Drop everything queued; the next frame out fades the current audio to silence."""
        self._in.generation += 1
        self._in.pending = np.zeros(0, dtype=np.int16)
        self._in.pending_stamp = 0.0
        self._in.pending_item = None
        self._in.streaming = None

    def forget(self, item_id: str) -> None:
        """Drop the accounting of an item that can no longer be truncated.

        The consumer owns the counts: the id is queued and the next :meth:`pull` drops it, so
        a count being added at that moment is never lost. Call it once the item's audio has
        been handed out (a frame of the item handed out later counts it again).
        """
        self._forgotten.append(item_id)

    @property
    def flush_pending(self) -> bool:
        """True until the consumer has carried out the last flush (at most one frame)."""
        return self._out.generation != self._in.generation

    # -- consumer side ---------------------------------------------------------------------

    def pull(self) -> bytes:
        """Exactly one frame: queued audio, the fade-out of a flush, or silence."""
        data = self._next_frame()
        slot = self._ref_frames % len(self._ref_at)
        self._ref[slot] = np.frombuffer(data, dtype="<i2")
        self._ref_at[slot] = at = self.clock()
        self._ref_frames += 1
        if data is not self._silence:
            self.sound_at = at
        return data

    def _next_frame(self) -> bytes:
        self._out.frames_out += 1
        forgotten = self._forgotten
        while forgotten:
            self._played.pop(forgotten.popleft(), None)
        generation = self._in.generation
        if self._out.generation != generation:
            return self._carry_out_flush(generation)
        try:
            frame = self._frames.popleft()
        except IndexError:
            if self._in.streaming is not None:
                self._out.underruns += 1
            return self._silence
        self._out.queued_out += self.frame_samples
        self._played[frame.item_id] = self._played.get(frame.item_id, 0) + frame.samples
        if frame.item_id != self._out.item:
            self._out.item = frame.item_id
            self._first_out.setdefault(frame.item_id, self.clock())
        if frame.stamp:
            self.latencies.append(monotonic() - frame.stamp)
        return frame.data

    def _carry_out_flush(self, generation: int) -> bytes:
        self._out.generation = generation
        self._out.flushes += 1
        faded: _Frame | None = None
        frames = self._frames
        while frames and frames[0].generation < generation:
            frame = frames.popleft()
            self._out.queued_out += self.frame_samples
            if faded is None:
                faded = frame
        if faded is None:
            return self._silence
        played = min(faded.samples, self._fade_samples)
        self._played[faded.item_id] = self._played.get(faded.item_id, 0) + played
        samples = np.frombuffer(faded.data, dtype="<i2") * self._fade
        return np.rint(samples).astype("<i2").tobytes()

    # -- either side (reads only) ----------------------------------------------------------

    def reference(self, until: float, samples: int) -> NDArray[np.int16]:
        """The last ``samples`` handed out up to the frame pulled at or before ``until`` (on
        :attr:`clock`), oldest first; zeros where nothing was (yet) handed out."""
        frames = self._ref_frames  # read first: rows below it are complete
        slots = len(self._ref_at)
        wanted = -(-samples // self.frame_samples)
        usable = min(frames, slots - 2)  # the row being written next is left alone
        newest = frames - 1 - np.arange(usable)
        late = self._ref_at[newest % slots] > until + 1e-6
        skip = int(np.argmin(late)) if usable and not late.all() else usable
        last = frames - 1 - skip  # the last frame pulled at or before ``until``
        first = max(last - wanted + 1, frames - usable)
        out = np.zeros(wanted * self.frame_samples, dtype=np.int16)
        if last >= first:
            rows = self._ref[np.arange(first, last + 1) % slots]
            out[len(out) - rows.size :] = rows.reshape(-1)
        return out[len(out) - samples :] if samples else out[:0]

    def played_samples(self, item_id: str) -> int:
        """Samples of ``item_id`` handed out so far, fade-out included, padding excluded."""
        return self._played.get(item_id, 0)

    def first_out(self, item_id: str) -> float | None:
        """When the first frame of ``item_id`` was handed out (on :attr:`clock`); None if
        none was yet. Kept for the buffer's life (``forget`` leaves it)."""
        return self._first_out.get(item_id)

    def played_ms(self, item_id: str) -> int:
        """Milliseconds of ``item_id`` handed out so far (rounded down)."""
        return self._played.get(item_id, 0) * 1000 // self.rate

    @property
    def depth_samples(self) -> int:
        return max(0, self._in.queued_in - self._out.queued_out)

    def stats(self) -> PlayoutStats:
        return PlayoutStats(
            frames_out=self._out.frames_out,
            underruns=self._out.underruns,
            overrun_samples=self._in.overrun_samples,
            flushes=self._out.flushes,
            depth_ms=self.depth_samples * 1000 / self.rate,
        )
