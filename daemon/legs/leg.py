"""One call leg as a call flow sees it: its events, its commands, its media.

A flow (the inbound agent, an outbound notification) talks to a :class:`CallLeg` only; the
SIP worker provides one per pjsua2 call (:mod:`sip.leg`), :mod:`daemon.legs.memory` a pair
in memory for tests. Events come in the order the call produced them, ``Ended`` last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    from daemon.legs.media import LegMedia


@dataclass(frozen=True)
class CallInfo:
    key: str  # the worker's id of the call ("w0-3", "m1")
    inbound: bool
    sip_call_id: str = ""
    caller: str = ""  # From user
    display_name: str = ""
    remote_uri: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    kind: Literal["sip", "web", "memory"] = "sip"  # what carries the call: pjsua2, WebRTC, memory


@dataclass(frozen=True)
class MediaStats:
    """A call's media counters when it ended (RTP from the stream, the rest from its media)."""

    rx_packets: int
    rx_lost: int
    rx_jitter_ms: float
    tx_packets: int
    uplink_frames: int  # caller frames handed to the flow's uplink
    uplink_dropped: int  # of those, dropped unread (the flow fell 1 s behind)
    callback_errors: int  # media callbacks that failed (counted, never raised)
    playout_underruns: int
    # RTP as received here (pjmedia's RTCP receive statistics)
    rx_discarded: int = 0
    rx_duplicates: int = 0
    rx_reordered: int = 0
    rx_jitter_max_ms: float = 0.0
    # what the peer reported of our stream in its RTCP receiver reports (0 reports: unknown)
    tx_lost_reported: int = 0
    tx_jitter_ms_reported: float = 0.0
    tx_reports: int = 0
    # round trip from RTCP (None: no SR of ours was answered, typical under ~10 s)
    rtt_ms_mean: float | None = None
    rtt_ms_max: float = 0.0
    rtt_samples: int = 0
    # pjmedia's jitter buffer
    jb_avg_delay_ms: float = 0.0
    jb_max_delay_ms: float = 0.0
    jb_lost: int = 0
    jb_discarded: int = 0
    jb_empty: int = 0
    codec: str = ""
    playout_overrun_samples: int = 0
    playout_flushes: int = 0


@dataclass(frozen=True)
class Ringing:
    code: int  # 180/183


@dataclass(frozen=True)
class Answered:
    """Outbound: the callee's 200; inbound: the caller's ACK."""


@dataclass(frozen=True)
class Dtmf:
    digit: str
    method: str  # "rfc4733" | "info"


@dataclass(frozen=True)
class TransferProgress:
    code: int
    reason: str
    final: bool


@dataclass(frozen=True)
class Ended:
    code: int
    reason: str
    local_cause: str = ""
    answered: bool = False
    stats: MediaStats | None = None
    connect_seconds: float = 0.0  # answer to end, as the SIP stack counted it


LegEvent = Ringing | Answered | Dtmf | TransferProgress | Ended


class LegError(Exception):
    """The call refused an operation (gone, unknown, no slot)."""


class LegEvents:
    """A leg's event queue, for legs that make their own events: :meth:`receive` gives them
    in order and repeats the last ``Ended`` once nothing else is waiting; after
    :meth:`release` (the flow is done) nothing more is queued. On the leg's event loop."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[LegEvent] = asyncio.Queue()
        self._last: Ended | None = None
        self._released = False

    async def receive(self) -> LegEvent:
        if self._last is not None and self._queue.empty():
            return self._last
        event = await self._queue.get()
        if isinstance(event, Ended):
            self._last = event
        return event

    def post(self, event: LegEvent) -> None:
        if not self._released:
            self._queue.put_nowait(event)

    def release(self) -> None:
        self._released = True


class CallLeg(Protocol):
    @property
    def info(self) -> CallInfo: ...

    async def receive(self) -> LegEvent:
        """This call's events, in order; Ended last."""
        ...

    async def answer(self) -> None:
        """200 OK; Answered follows on the ACK."""
        ...

    async def reject(self, code: int = 486) -> None: ...

    async def hangup(self) -> None:
        """Idempotent, never raises once ended."""
        ...

    async def send_dtmf(self, digits: str) -> None: ...

    async def transfer(self, target: str) -> None:
        """REFER; TransferProgress events follow."""
        ...

    async def media(self) -> LegMedia:
        """LegError if the call is already gone."""
        ...

    def release(self) -> None:
        """The flow is done: stop routing events."""
        ...


class Dialer(Protocol):
    async def dial(self, target: str, ring_timeout: float) -> CallLeg:
        """A new outbound leg (its events follow); LegError/ValueError if it cannot dial."""
        ...
