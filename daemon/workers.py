"""The SIP worker processes, seen from the supervisor.

:class:`WorkerPool` runs ``sip.workers`` processes (``python -m daemon.worker``). Worker ``i``
connects to ``RUNTIME_DIR/worker-i.sock``, gets its settings (SIP port ``sip.port + i``, its
slice of the RTP range), registers the same extension with its own Contact and reports events.
The pool:

- restarts a worker that dies, with capped backoff, and reports each call it held as ended
  with ``local_cause = "worker_died"``;
- arbitrates inbound claims: the PBX forks one INVITE (one SIP Call-ID) to every contact; the
  first worker to claim a Call-ID answers, the others reply 486;
- reserves outbound call slots on the connected worker with the most free ones;
- aggregates registration and calls for ``/health``, probes every worker for the watchdog,
  drains calls on stop and shuts the workers down in order.

Both directions speak the typed messages of :mod:`daemon.ipc.messages`; the supervisor's end
serves ``hello``, ``claim``, ``synthesize`` and ``transcribe`` and hears the worker's events
through the tables of :meth:`WorkerPool._requests` and :meth:`WorkerPool._events`. Spawning,
restarts and stop are :class:`daemon.process_pool.ProcessPool`'s, shared with the web pool.

Everything here runs on the supervisor's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, TypeVar

from config import Settings
from daemon.ipc import messages as msg
from daemon.ipc.connection import Body, EventHandlers, IpcClosed, IpcError, RequestHandlers
from daemon.logs import get_logger
from daemon.pool_state import PoolListeners, WorkerState
from daemon.process_pool import (
    READY_SECONDS,
    RESTART_BACKOFF_CAP,
    STOP_SECONDS,
    ProcessPool,
    worker_environment,
)
from sip.events import (
    CallAnswered,
    CallEnded,
    CallRinging,
    IncomingCall,
    RegistrationChanged,
    SipEvent,
)

log = get_logger(__name__)

TEARDOWN_POLL_SECONDS = 0.2
CLAIM_MEMORY_SECONDS = 300.0
START_RETRY_SECONDS = 15.0

ReplyT = TypeVar("ReplyT", bound=msg.Message)

__all__ = [
    "CLAIM_MEMORY_SECONDS",
    "READY_SECONDS",
    "RESTART_BACKOFF_CAP",
    "START_RETRY_SECONDS",
    "STOP_SECONDS",
    "TEARDOWN_POLL_SECONDS",
    "ReplyT",
    "WorkerPool",
    "WorkerStartError",
    "worker_environment",
]


class WorkerStartError(Exception):
    """A SIP worker could not be started."""


class WorkerPool(ProcessPool[WorkerState]):
    module = "daemon.worker"
    kind = "worker"

    def __init__(
        self,
        settings: Settings,
        inbound_policy: str | None = None,
        on_event: Callable[[int, SipEvent], None] | None = None,
    ) -> None:
        super().__init__(settings, "sipai-")
        self.inbound_policy = inbound_policy
        self._on_event = on_event
        self.workers = [
            WorkerState(i, self.runtime_dir / f"worker-{i}.sock")
            for i in range(settings.sip.workers)
        ]
        self._claims: dict[str, tuple[int, float]] = {}
        self._calls_changed = asyncio.Event()
        self.listeners = PoolListeners()
        self._capacity = asyncio.Event()

    @property
    def capacity_listeners(self) -> list[Callable[[], None]]:
        """Called when a slot may have become free (a call ended, a worker came up)."""
        return self.listeners.capacity

    @property
    def status_listeners(self) -> list[Callable[[str, str], None]]:
        """Called with (call_id, status) when a worker reports an outbound call's progress."""
        return self.listeners.status

    @property
    def decided_listeners(self) -> list[Callable[[str, dict[str, Any]], None]]:
        """Called with (call_id, result) when a worker knows an outbound call's outcome before
        the call ends (``result`` holds daemon.outbound.CallResult fields)."""
        return self.listeners.decided

    @property
    def inbound_listeners(self) -> list[Callable[[int, str, Body], None]]:
        """Called with (worker, kind, body) for the inbound agent's events (inbound_call,
        transcript, agent_failed, inbound_done), the body as JSON data."""
        return self.listeners.inbound

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has its SIP endpoint up."""
        await self._listen()
        await asyncio.gather(*(self._start_one(s) for s in self.workers))
        self._supervise()

    async def _start_one(self, state: WorkerState) -> None:
        """Wait for the worker; retry one that exits early for a while (a previous instance
        may still be releasing the SIP port), then give up with the reason."""
        deadline = time.monotonic() + START_RETRY_SECONDS
        while True:
            try:
                await self._wait_started(state)
                return
            except WorkerStartError as exc:
                if time.monotonic() >= deadline or state.process is None:
                    raise
                if state.process.returncode is None:
                    raise
                log.warning("worker.start_retry", worker=state.index, error=str(exc))
                await asyncio.sleep(1.0)
                await self._spawn(state)

    async def _wait_started(self, state: WorkerState) -> None:
        if await self._until_ready(state):
            return
        assert state.process is not None
        code = state.process.returncode
        if code is None:
            state.process.kill()
            raise WorkerStartError(f"SIP worker {state.index} not ready within {READY_SECONDS} s")
        raise WorkerStartError(
            f"SIP worker {state.index} exited with code {code} during start-up "
            f"(SIP port {self.settings.sip.port + state.index}; see its log lines)"
        )

    def _worker_died(self, state: WorkerState, code: int) -> None:
        log.error("worker.died", worker=state.index, exit_code=code, calls=len(state.calls))
        state.ready.clear()
        state.registered = False
        state.refused.restarted()
        if state.conn is not None:
            state.conn = None
        for call in sorted(state.calls):
            self._deliver(
                state,
                CallEnded(
                    call=call,
                    code=0,
                    reason=f"SIP worker {state.index} died (exit code {code})",
                    local_cause="worker_died",
                ),
            )
        state.calls.clear()

    async def stop(self) -> None:
        """Ask every worker to shut down (hang up, un-REGISTER), wait, kill stragglers."""
        for state in self.workers:
            if state.teardown.poll is not None:
                state.teardown.poll.cancel()
        await super().stop()

    # -- IPC -------------------------------------------------------------------------------

    def _requests(self, state: WorkerState) -> RequestHandlers:
        async def claim(request: msg.Claim) -> msg.ClaimReply:
            return msg.ClaimReply(granted=self.claim(state.index, request.sip_call_id))

        return {msg.Claim: claim}

    def _events(self, state: WorkerState) -> EventHandlers:
        def inbound(event: msg.Event) -> None:
            for listener in self.listeners.inbound:
                listener(state.index, event.type, event.body())

        return {
            msg.Ready: lambda event: self._ready(state, event),
            msg.OutboundStatus: self._outbound_status,
            msg.OutboundDecided: self._outbound_decided,
            msg.SipEventMessage: lambda event: self._deliver(state, event.event),
            **dict.fromkeys(msg.INBOUND_EVENTS, inbound),
        }

    def claim(self, index: int, sip_call_id: str) -> bool:
        """First claim of a SIP Call-ID wins; later claims (forked copies) lose."""
        now = time.monotonic()
        if len(self._claims) > 10000:
            self._claims = {
                k: v for k, v in self._claims.items() if now - v[1] < CLAIM_MEMORY_SECONDS
            }
        owner = self._claims.setdefault(sip_call_id, (index, now))
        granted = owner[0] == index
        log.info("call.claim", sip_call_id=sip_call_id, worker=index, granted=granted)
        return granted

    def _ready(self, state: WorkerState, event: msg.Ready) -> None:
        state.ready.set()
        self._capacity_changed()
        log.info("worker.ready", worker=state.index, contact=event.contact)

    def _outbound_status(self, event: msg.OutboundStatus) -> None:
        for listener in self.listeners.status:
            listener(event.call_id, event.status)

    def _outbound_decided(self, event: msg.OutboundDecided) -> None:
        for listener in self.listeners.decided:
            listener(event.call_id, event.result)

    def _deliver(self, state: WorkerState, event: SipEvent) -> None:
        if isinstance(event, RegistrationChanged):
            state.registered = event.registered
            state.registration_code = event.code
            state.registration_error = event.error
        elif isinstance(event, IncomingCall | CallAnswered | CallRinging):
            state.calls.add(event.call)
        elif isinstance(event, CallEnded):
            state.calls.discard(event.call)
            self._calls_changed.set()
            self._capacity_changed()
        if self._on_event is not None:
            self._on_event(state.index, event)

    def _capacity_changed(self) -> None:
        self._capacity.set()
        for listener in self.listeners.capacity:
            listener()

    # -- what the supervisor asks ----------------------------------------------------------

    @property
    def registered(self) -> bool:
        return any(s.registered for s in self.workers)

    @property
    def registration_error(self) -> str | None:
        """Why the extension is not registered, as the first failing worker reports it."""
        errors = [s.registration_error for s in self.workers if not s.registered]
        return next((error for error in errors if error), None)

    @property
    def active_calls(self) -> int:
        return sum(len(s.calls) for s in self.workers)

    @property
    def all_up(self) -> bool:
        """Every worker that should run is up: ready, connected and its process alive."""
        return all(
            s.ready.is_set()
            and s.conn is not None
            and not s.conn.closed.is_set()
            and s.process is not None
            and s.process.returncode is None
            for s in self.workers
        )

    @property
    def free_slots(self) -> int:
        """Call slots free on workers that are up."""
        return sum(
            max(0, self.settings.sip.max_calls - self._used(s))
            for s in self.workers
            if s.ready.is_set() and s.conn is not None
        )

    def summary(self) -> list[dict[str, Any]]:
        return [s.summary() for s in self.workers]

    async def request(
        self, index: int, message: msg.Request[ReplyT], within: float = 10.0
    ) -> ReplyT:
        """Send a request (outbound, make_call, ping...) to worker ``index``; its reply."""
        conn = self.workers[index].conn
        if conn is None:
            raise IpcClosed(f"worker {index} is not connected")
        return await conn.request(message, within=within)

    async def command(self, index: int, type_: str, within: float = 10.0, **body: Any) -> Body:
        """:meth:`request` with the message named and its fields given as keywords (a
        pydantic ValidationError if they do not fit); the reply as JSON data."""
        message = msg.REQUESTS[type_].model_validate(body)
        reply: msg.Message = await self.request(index, message, within=within)
        return reply.body()

    def _used(self, state: WorkerState) -> int:
        # Reserved outbound calls show up in ``calls`` once dialled; counting the larger of
        # the two never over-commits a worker (it may under-use one holding both kinds).
        # Slots still in pjsua's teardown are taken too: a call that ended keeps its slot
        # until its INVITE transaction is over, up to ~32 s when the far end went silent.
        return max(len(state.calls), state.reserved) + state.teardown.slots

    async def reserve_slot(self) -> int:
        """Wait for a free call slot; reserve it on the least loaded worker."""
        while True:
            ready = [
                s
                for s in self.workers
                if s.ready.is_set()
                and s.conn is not None
                and self._used(s) < self.settings.sip.max_calls
            ]
            if ready:
                state = min(ready, key=lambda s: (self._used(s), s.index))
                state.reserved += 1
                return state.index
            self._capacity.clear()
            await self._capacity.wait()

    def release_slot(self, index: int) -> None:
        """The outbound call on worker ``index`` is over; its slot counts as taken until the
        worker reports that pjsua has really released it."""
        state = self.workers[index]
        state.reserved = max(0, state.reserved - 1)
        teardown = state.teardown
        teardown.slots += 1
        teardown.epoch += 1
        if teardown.poll is None or teardown.poll.done():
            teardown.poll = asyncio.ensure_future(self._follow_teardown(state))

    async def _follow_teardown(self, state: WorkerState) -> None:
        """Ask the worker how many slots pjsua is still tearing down until none is."""
        teardown = state.teardown
        while teardown.slots > 0:
            conn = state.conn
            if conn is None or not state.ready.is_set():
                teardown.slots = 0  # a worker that died or restarts has no pjsua calls left
                break
            epoch = teardown.epoch
            try:
                reply = await conn.request(msg.Ping(), within=5.0)
            except (IpcError, TimeoutError):
                teardown.slots = 0
                break
            if epoch == teardown.epoch:  # no release since the question: up to date
                held = reply.pjsua_calls - reply.calls
                freed = teardown.slots > max(0, held)
                teardown.slots = max(0, held)
                if freed:
                    self._capacity_changed()
            if teardown.slots > 0:
                await asyncio.sleep(TEARDOWN_POLL_SECONDS)
        self._capacity_changed()

    async def probe(self) -> None:
        """Watchdog: a round trip through every running worker's SIP thread."""

        async def ping(state: WorkerState) -> None:
            if state.conn is not None and state.ready.is_set():
                await state.conn.request(msg.Ping(), within=5.0)

        await asyncio.gather(*(ping(s) for s in self.workers))

    async def refused_invites(self) -> dict[str, int]:
        """INVITEs refused before a call slot by every worker since start, by reason."""

        async def ask(state: WorkerState) -> None:
            if state.conn is not None and state.ready.is_set():
                with contextlib.suppress(IpcError, TimeoutError):
                    reply = await state.conn.request(msg.Ping(), within=2.0)
                    state.refused.now = dict(reply.refused)

        await asyncio.gather(*(ask(s) for s in self.workers))
        total: dict[str, int] = {}
        for state in self.workers:
            for counts in (state.refused.before, state.refused.now):
                for reason, count in counts.items():
                    total[reason] = total.get(reason, 0) + count
        return total

    async def drain(self) -> None:
        """Return once no worker holds a call (the supervisor bounds the wait)."""
        while self.active_calls:
            self._calls_changed.clear()
            await self._calls_changed.wait()
