"""A call leg's audio, shared between the media side and the call flow on the event loop.

The media side (pjmedia's clock thread through :class:`sip.audio_port.CallAudioPort`, or the
:class:`daemon.legs.memory.MediaClock` task) appends caller frames to :attr:`LegMedia.uplink`
and pulls what the caller hears from :attr:`LegMedia.playout`, every 20 ms; it only copies
bytes and counts. The flow reads the uplink, pushes to the playout and waits on what the
media side did through the ``until_*`` methods: the media side never touches the loop, so
they poll, on the leg's :class:`Clock` (virtual in memory: hence ``within`` seconds on that
clock rather than ``asyncio.timeout``).

A call being recorded has a :class:`RecordTap`: the media side hands it each frame it pulled
for the caller (:meth:`LegMedia.tap_played`) and each caller frame (:meth:`LegMedia.tap_heard`),
and a writer thread (:mod:`daemon.recording`) takes them from there.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from media.playout import PlayoutBuffer

UPLINK_FRAMES = 50  # 1 s of caller audio waiting for the call flow; older frames are dropped
POLL_SECONDS = 0.005  # an empty uplink is looked at again after this
PLAYED_POLL_SECONDS = 0.02  # one frame: the playout advances by whole frames
FLUSH_POLL_SECONDS = 0.002  # a flush is carried out within a frame: look closer
TAP_FRAMES = 250  # 5 s of a recorded call waiting for its writer; later frames are dropped


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on this clock (``time.monotonic()`` for SIP calls)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """Wall time: what pjmedia's clock thread runs on."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class MediaCounters:
    uplink_frames: int
    uplink_dropped: int
    callback_errors: int
    playout_underruns: int


class RecordTap:
    """A recorded call's frames on their way to the writer thread, numbered by media tick.

    The media side appends only: :meth:`LegMedia.tap_played` advances :attr:`tick` and queues
    the frame the caller is sent, :meth:`LegMedia.tap_heard` queues the caller's frame under
    the current tick. With ``limit`` frames queued on a side it queues nothing more there and
    counts :attr:`dropped` (no lock, no wait). The writer thread pops from the left and writes
    silence for every tick a side has no frame for.
    """

    def __init__(self, limit: int = TAP_FRAMES) -> None:
        self.limit = limit
        self.tick = 0  # written by the media side only
        self.dropped = 0  # written by the media side only
        # (tick, frame): the media side appends, the writer thread pops.
        self.played: deque[tuple[int, bytes]] = deque()
        self.heard: deque[tuple[int, bytes]] = deque()


class LegMedia:
    """Shared between the media side (writes ``uplink``, pulls ``playout``) and the loop."""

    def __init__(self, rate: int, frame_ms: int = 20, clock: Clock | None = None) -> None:
        self.rate = rate
        self.frame_bytes = 2 * rate * frame_ms // 1000
        self.clock: Clock = clock or MonotonicClock()
        # (clock.now() on arrival, frame): the media side appends, the loop pops.
        self.uplink: deque[tuple[float, bytes]] = deque(maxlen=UPLINK_FRAMES)
        self.playout = PlayoutBuffer(rate=rate, frame_ms=frame_ms)
        self.uplink_frames = 0  # written by the media side only
        self.uplink_dropped = 0  # written by the media side only
        self.callback_errors = 0  # written by the media side only
        self.closed = False  # set by the signalling side when the call ends
        self.tap: RecordTap | None = None  # set by the loop before audio flows; media side reads

    def tap_played(self, frame: bytes) -> None:
        """Media side: ``frame`` was just pulled from the playout for the caller."""
        tap = self.tap
        if tap is not None:
            tap.tick += 1
            if len(tap.played) < tap.limit:
                tap.played.append((tap.tick, frame))
            else:
                tap.dropped += 1

    def tap_heard(self, frame: bytes) -> None:
        """Media side: ``frame`` of the caller's audio just arrived."""
        tap = self.tap
        if tap is not None:
            if len(tap.heard) < tap.limit:
                tap.heard.append((tap.tick, frame))
            else:
                tap.dropped += 1

    async def frames(self) -> AsyncIterator[bytes]:
        """Caller audio as 20 ms PCM16 frames, until the call ends."""
        async for _, frame in self.stamped_frames():
            yield frame

    async def stamped_frames(self) -> AsyncIterator[tuple[float, bytes]]:
        """(arrival time, frame) pairs: the arrival time is the clock's when the media side
        handed the frame over, for latency metering."""
        while True:
            try:
                yield self.uplink.popleft()
            except IndexError:
                if self.closed:
                    return
                await self.clock.sleep(POLL_SECONDS)

    def clear_uplink(self) -> None:
        """Drop the caller audio not read yet (what was said before now is not an answer)."""
        self.uplink.clear()

    async def until_played(self, item: str, samples: int, within: float) -> bool:
        """Wait until ``samples`` of ``item`` were handed to the caller; False if the call
        ended or ``within`` seconds (on the leg's clock) passed first."""
        playout, clock = self.playout, self.clock
        deadline = clock.now() + within
        while playout.played_samples(item) < samples:
            if self.closed or clock.now() >= deadline:
                return False
            await clock.sleep(PLAYED_POLL_SECONDS)
        return True

    async def until_drained(self, within: float) -> bool:
        """Wait until nothing is queued for the caller; False on call end or after
        ``within`` seconds."""
        clock = self.clock
        deadline = clock.now() + within
        while self.playout.depth_samples:
            if self.closed or clock.now() >= deadline:
                return False
            await clock.sleep(PLAYED_POLL_SECONDS)
        return True

    async def until_flushed(self, within: float) -> bool:
        """Wait until the media side has carried out the last flush; False after ``within``
        seconds."""
        clock = self.clock
        deadline = clock.now() + within
        while self.playout.flush_pending:
            if self.closed or clock.now() >= deadline:
                return False
            await clock.sleep(FLUSH_POLL_SECONDS)
        return True

    def stats(self) -> MediaCounters:
        return MediaCounters(
            uplink_frames=self.uplink_frames,
            uplink_dropped=self.uplink_dropped,
            callback_errors=self.callback_errors,
            playout_underruns=self.playout.stats().underruns,
        )
