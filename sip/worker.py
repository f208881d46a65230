"""The asyncio face of one SIP worker: start/stop, call commands, an event stream.

Every method is a coroutine run on the event loop; the work happens on the SIP thread
(:mod:`sip.thread`) and results come back as futures. Events arrive in the order pjsua2
produced them. The same calls and events travel over the worker's IPC socket later, so they
take and return plain values only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

import pjsua2 as pj

from config.schema import SipSettings
from daemon.logs import get_logger
from sip.audio_port import CallAudio
from sip.errors import NoFreeSlot, SipError
from sip.events import CallAnswered, CallEnded, RegistrationChanged, SipEvent
from sip.target import request_uri
from sip.thread import Claim, SipThread

log = get_logger(__name__)

__all__ = ["SipError", "SipWorker"]

T = TypeVar("T")

# How often a dial waiting for a call slot asks pjsua again: a slot held by a call being torn
# down frees without any event (a call ending wakes the waiting dials at once).
SLOT_POLL = 0.1
# A target that has sent no SIP response at all (not even 100 Trying) by then is unreachable;
# below pjsip's 32 s INVITE timeout, so the call ends as ours with that cause.
NO_RESPONSE_SECONDS = 30.0


class SipWorker:
    def __init__(self, settings: SipSettings, index: int = 0, claim: Claim | None = None) -> None:
        self.settings = settings
        self.index = index
        self._claim = claim
        self.registration = RegistrationChanged(False, 0, "not registered yet")
        self._events: asyncio.Queue[SipEvent] = asyncio.Queue()
        self._thread: SipThread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ring_timers: dict[str, asyncio.TimerHandle] = {}
        self._call_ended = asyncio.Event()  # set by each CallEnded: a slot may be free

    @property
    def domain(self) -> str:
        assert self._thread is not None
        return self._thread.domain

    @property
    def contact(self) -> str:
        return (
            f"sip:{self.settings.username}@{self.settings.bind}:{self.settings.port + self.index}"
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = SipThread(self.settings, self.index, self._from_sip_thread, self._claim)
        await asyncio.wrap_future(self._thread.start())
        log.info(
            "sip.started",
            worker=self.index,
            contact=self.contact,
            mode="direct" if self.settings.direct_mode else "registrar",
        )

    async def stop(self) -> None:
        """Hang up every call, un-REGISTER, destroy pjsua2 in order; safe to call twice."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        for timer in self._ring_timers.values():
            timer.cancel()
        await asyncio.to_thread(thread.stop)
        log.info("sip.stopped", worker=self.index)

    def _from_sip_thread(self, event: SipEvent) -> None:  # SIP thread
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, event)

    def _deliver(self, event: SipEvent) -> None:
        if isinstance(event, RegistrationChanged):
            self.registration = event
            log.info(
                "sip.registration",
                worker=self.index,
                registered=event.registered,
                code=event.code,
                reason=event.reason,
                retry_in=event.retry_in,
                error=event.error,
            )
        elif isinstance(event, CallAnswered | CallEnded):
            timer = self._ring_timers.pop(event.call, None)
            if timer is not None:
                timer.cancel()
            if isinstance(event, CallEnded):
                self._call_ended.set()
        self._events.put_nowait(event)

    async def events(self) -> AsyncIterator[SipEvent]:
        while True:
            yield await self._events.get()

    def _running(self) -> SipThread:
        if self._thread is None:
            raise SipError("the SIP worker is not running")
        return self._thread

    async def _on_sip_thread(self, action: Callable[[], T]) -> T:
        if self._thread is None:
            raise SipError("the SIP worker is not running")
        return await asyncio.wrap_future(self._thread.submit(action))

    # -- calls ---------------------------------------------------------------------------

    async def make_call(self, target: str, ring_timeout: float = 30.0) -> str:
        """Dial ``target`` as soon as a call slot is free (waiting as long as that takes);
        CANCEL if unanswered after ``ring_timeout`` s. Returns the call id."""
        thread = self._thread
        if thread is None:
            raise SipError("the SIP worker is not running")
        uri = request_uri(target, thread.domain)
        key = await self._dial(thread, uri)
        assert self._loop is not None
        deadline = self._loop.time() + ring_timeout
        self._ring_timers[key] = self._loop.call_later(
            min(ring_timeout, NO_RESPONSE_SECONDS),
            lambda: asyncio.ensure_future(self._ring_timeout(key, deadline)),
        )
        log.info("sip.dialing", call_id=key, uri=uri, ring_timeout=ring_timeout)
        return key

    async def _dial(self, thread: SipThread, uri: str) -> str:
        """Make the call once pjsua has a slot: a slot of a call that ended stays taken until
        pjsua has torn that call down, which has no event of its own."""
        waiting_since: float | None = None
        while True:
            self._call_ended.clear()
            try:
                key: str = await self._on_sip_thread(lambda: thread.make_call(uri))
            except NoFreeSlot as exc:
                if waiting_since is None:
                    waiting_since = asyncio.get_running_loop().time()
                    log.info("sip.waiting_for_slot", worker=self.index, uri=uri, reason=str(exc))
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancel
                # that arrives as the event is set, and this loop would then go on dialling.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SLOT_POLL):
                        await self._call_ended.wait()
                continue
            if waiting_since is not None:
                waited = asyncio.get_running_loop().time() - waiting_since
                log.info("sip.slot_free", worker=self.index, call_id=key, waited_s=round(waited, 2))
            return key

    async def _ring_timeout(self, key: str, deadline: float) -> None:
        """End an unanswered call: "no_response" if the target never sent any SIP response,
        else "ring_timeout" once ``deadline`` is reached."""
        self._ring_timers.pop(key, None)
        thread = self._thread
        if thread is None:
            return
        assert self._loop is not None
        left = deadline - self._loop.time()

        def end() -> bool:
            call = thread.calls.get(key)
            if call is None:
                return True
            if not call.responded:
                call.end("no_response")
            elif left <= 0:
                call.end("ring_timeout")
            else:
                return False
            return True

        if not await self._on_sip_thread(end):
            self._ring_timers[key] = self._loop.call_later(
                left, lambda: asyncio.ensure_future(self._ring_timeout(key, deadline))
            )

    async def answer(self, call: str) -> None:
        thread = self._running()
        await self._on_sip_thread(lambda: thread.call(call).respond(200))

    async def reject(self, call: str, code: int = 486) -> None:
        thread = self._running()
        await self._on_sip_thread(lambda: thread.call(call).end("rejected", code))

    async def hangup(self, call: str) -> None:
        thread = self._thread
        if thread is not None:
            await self._on_sip_thread(lambda: _end_if_present(thread, call, "hangup"))

    async def send_dtmf(self, call: str, digits: str) -> None:
        thread = self._running()
        await self._on_sip_thread(lambda: thread.call(call).dialDtmf(digits))

    async def transfer(self, call: str, target: str) -> None:
        """Blind transfer (REFER); progress arrives as TransferProgress events."""
        thread = self._running()
        uri = request_uri(target, thread.domain)

        def refer() -> None:
            thread.call(call).xfer(uri, pj.CallOpParam(True))

        await self._on_sip_thread(refer)

    async def audio(self, call: str) -> CallAudio:
        thread = self._running()
        audio: CallAudio = await self._on_sip_thread(lambda: thread.call(call).audio)
        return audio

    async def diagnostics(self) -> dict[str, int]:
        """Conference bridge ports in use and calls held (for leak checks and metrics)."""
        thread = self._thread
        assert thread is not None

        def read() -> dict[str, int]:
            return {
                "conference_ports": int(thread.endpoint.mediaActivePorts()),
                "calls": len(thread.calls),
                # slots pjsua holds, calls it is still tearing down included
                "pjsua_calls": thread.pjsua_calls(),
                # INVITEs refused by sip.admission, by reason (counters since start)
                **{f"refused_{k}": v for k, v in thread.admission.refused.items()},
            }

        return await self._on_sip_thread(read)

    async def call_count(self) -> int:
        thread = self._thread
        assert thread is not None
        count: int = await self._on_sip_thread(lambda: len(thread.calls))
        return count


def _end_if_present(thread: SipThread, key: str, cause: str) -> None:
    call = thread.calls.get(key)
    if call is not None:
        call.end(cause)
