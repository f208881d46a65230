"""A pjsua2 call as a call flow's :class:`~daemon.legs.leg.CallLeg`.

:class:`SipLeg` carries a flow's commands to the :class:`~sip.worker.SipWorker` under the
call's key and turns the call's SIP events (from its :class:`~sip.call_events.CallEvents`
queue) into leg events; an event of another call is a bug upstream: it is logged and dropped.
:class:`SipDialer` places outbound calls: it claims the new call's events under
:meth:`CallEvents.dialing`, so the first ones (180, 200, a quick failure), which may come
before ``make_call`` returns, are not lost.

Everything here runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib

from daemon.legs.leg import (
    Answered,
    CallInfo,
    Dtmf,
    Ended,
    LegEvent,
    Ringing,
    TransferProgress,
)
from daemon.legs.media import LegMedia
from daemon.logs import get_logger
from sip import events as sip_events
from sip.call_events import CallEvents
from sip.errors import SipError
from sip.worker import SipWorker

log = get_logger(__name__)


def call_info(call: sip_events.IncomingCall) -> CallInfo:
    """What a flow may know of an incoming call."""
    return CallInfo(
        key=call.call,
        inbound=True,
        sip_call_id=call.sip_call_id,
        caller=call.from_user,
        display_name=call.display_name,
        remote_uri=call.remote_uri,
        headers=call.headers,
    )


def leg_event(event: sip_events.SipEvent) -> LegEvent | None:
    """The leg event for a call's SIP event (None: not one a flow sees)."""
    if isinstance(event, sip_events.CallRinging):
        return Ringing(event.code)
    if isinstance(event, sip_events.CallAnswered):
        return Answered()
    if isinstance(event, sip_events.DtmfReceived):
        return Dtmf(event.digit, event.method)
    if isinstance(event, sip_events.TransferProgress):
        return TransferProgress(event.code, event.reason, event.final)
    if isinstance(event, sip_events.CallEnded):
        return Ended(
            event.code,
            event.reason,
            event.local_cause,
            event.answered,
            event.stats,
            event.connect_seconds,
        )
    return None


class SipLeg:
    def __init__(
        self,
        worker: SipWorker,
        info: CallInfo,
        events: asyncio.Queue[sip_events.SipEvent],
        calls: CallEvents,
    ) -> None:
        self.worker = worker
        self._info = info
        self._events = events  # this call's SIP events, routed by ``calls``
        self._calls = calls
        self._ended: Ended | None = None

    @property
    def info(self) -> CallInfo:
        return self._info

    async def receive(self) -> LegEvent:
        if self._ended is not None and self._events.empty():
            return self._ended
        key = self._info.key
        while True:
            event = await self._events.get()
            translated = leg_event(event) if getattr(event, "call", None) == key else None
            if translated is None:
                log.error("leg.foreign_event", call_id=key, sip_event=repr(event))
                continue
            if isinstance(translated, Ended):
                self._ended = translated
            return translated

    async def answer(self) -> None:
        await self.worker.answer(self._info.key)

    async def reject(self, code: int = 486) -> None:
        await self.worker.reject(self._info.key, code)

    async def hangup(self) -> None:
        with contextlib.suppress(SipError):
            await self.worker.hangup(self._info.key)

    async def send_dtmf(self, digits: str) -> None:
        await self.worker.send_dtmf(self._info.key, digits)

    async def transfer(self, target: str) -> None:
        await self.worker.transfer(self._info.key, target)

    async def media(self) -> LegMedia:
        return await self.worker.audio(self._info.key)

    def release(self) -> None:
        self._calls.release(self._info.key)


class SipDialer:
    def __init__(self, worker: SipWorker, calls: CallEvents) -> None:
        self.worker = worker
        self.calls = calls

    async def dial(self, target: str, ring_timeout: float) -> SipLeg:
        """Dial ``target`` (SipError: refused; ValueError: not a target)."""
        with self.calls.dialing():
            key = await self.worker.make_call(target, ring_timeout)
            events = self.calls.claim(key)
        info = CallInfo(key=key, inbound=False, remote_uri=target)
        return SipLeg(self.worker, info, events, self.calls)
