"""The supervisor's SIP component: one SIP worker, its registration state and its calls.

It starts the worker, follows its events (registration for ``/health``, the set of active
calls for the drain), hands each inbound call to an ``InboundPolicy``, and takes part in the
watchdog (a round trip through the SIP thread) and the drain (wait for calls to end, then an
orderly SIP shutdown that hangs up what is left and un-REGISTERs).

Until the inbound agent exists the default policy refuses calls with 480 Temporarily
Unavailable, and says so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from config.schema import SipSettings
from daemon.logs import get_logger
from sip.events import CallAnswered, CallEnded, IncomingCall, RegistrationChanged
from sip.worker import SipWorker

log = get_logger(__name__)

InboundPolicy = Callable[[SipWorker, IncomingCall], Awaitable[None]]


async def refuse_unavailable(worker: SipWorker, call: IncomingCall) -> None:
    """Refuse with 480: no inbound agent is available to take the call."""
    log.warning(
        "call.refused",
        call_id=call.call,
        sip_call_id=call.sip_call_id,
        caller=call.from_user,
        sip_code=480,
        reason="no inbound agent available",
    )
    await worker.reject(call.call, 480)


class SipService:
    def __init__(self, settings: SipSettings, inbound: InboundPolicy = refuse_unavailable) -> None:
        self.settings = settings
        self.worker = SipWorker(settings)
        self._inbound = inbound
        self.active_calls: set[str] = set()  # loop thread only
        self._calls_changed = asyncio.Event()
        self._events: asyncio.Task[None] | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def registered(self) -> bool:
        return self.worker.registration.registered

    async def start(self) -> None:
        await self.worker.start()
        self._events = asyncio.create_task(self._follow(), name="sip-events")

    async def _follow(self) -> None:
        async for event in self.worker.events():
            if isinstance(event, IncomingCall):
                self.active_calls.add(event.call)
                handler = asyncio.create_task(self._handle(event), name=f"inbound-{event.call}")
                self._handlers.add(handler)
                handler.add_done_callback(self._handlers.discard)
            elif isinstance(event, CallAnswered):
                self.active_calls.add(event.call)
            elif isinstance(event, CallEnded):
                self.active_calls.discard(event.call)
                log.info(
                    "call.ended",
                    call_id=event.call,
                    sip_code=event.code,
                    reason=event.reason,
                    local_cause=event.local_cause or None,
                    answered=event.answered,
                )
                self._calls_changed.set()
            elif isinstance(event, RegistrationChanged):
                pass  # logged by the worker; read through ``registered``

    async def _handle(self, call: IncomingCall) -> None:
        try:
            await self._inbound(self.worker, call)
        except Exception as exc:
            log.error("call.inbound_failed", call_id=call.call, error=repr(exc))
            with contextlib.suppress(Exception):
                await self.worker.reject(call.call, 500)

    async def probe(self) -> None:
        """Watchdog: a round trip through the SIP thread."""
        await self.worker.diagnostics()

    async def drain(self) -> None:
        """Return once no call is active (the supervisor bounds the wait)."""
        while self.active_calls:
            self._calls_changed.clear()
            await self._calls_changed.wait()

    async def stop(self) -> None:
        """Hang up what is left, un-REGISTER and shut pjsua2 down in order."""
        if self.active_calls:
            log.info("sip.hanging_up", calls=sorted(self.active_calls))
        await self.worker.stop()
        for task in (self._events, *self._handlers):
            if task is not None:
                task.cancel()
