"""The web worker processes, seen from the supervisor: where browsers' offers go.

:class:`WebPool` runs ``[web] workers`` processes (``python -m daemon.web``), numbered from
:data:`daemon.web.WEB_WORKER_BASE` (1000, 1001...) in records and logs so they never meet a
SIP worker's index. Worker ``1000 + i`` connects to ``RUNTIME_DIR/web-i.sock`` and gets the
settings a SIP worker gets (:func:`daemon.pool_state.hello_reply`). The pool:

- forwards each offer (``web_offer``) to the up worker holding the fewest calls and answers
  with the worker's SDP answer, or raises :class:`api.app.WebCallRefused` with the HTTP status and
  detail (400: an offer aiortc cannot take; 503: no web worker up, all full, or draining);
- serves the workers' ``hello``, ``synthesize`` and ``transcribe`` and hands their inbound
  events (``inbound_call``, ``transcript``, ``agent_failed``, ``inbound_done``) to its
  :attr:`inbound_listeners` with the worker's index, as the SIP pool does, and a browser's
  connection (``CallAnswered``, the one SIP event a web worker sends) to
  :attr:`call_listeners`;
- keeps the calls up by id for :meth:`WebPool.hangup`, each until its worker reports its end
  (``web_call_ended``, whatever the mode), no longer holds it when asked, or dies;
- restarts a worker that dies, with the SIP pool's capped backoff, and ends each browser call
  it held with a record as a dead SIP worker's calls end (``CallEnded`` with ``local_cause =
  "worker_died"`` to :attr:`call_listeners`: the record is finished failed);
- drains: refuses new offers and waits for the calls to end; :meth:`stop` then has each worker
  hang up what is left and exit.

Spawning, hello, restarts and stop are :class:`daemon.process_pool.ProcessPool`'s, as for the
SIP workers. A web worker that cannot start does not stop the daemon: SIP service does not
depend on it; :meth:`WebPool.health` says so and the pool keeps restarting it. Everything here
runs on the supervisor's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from api.app import WebCallRefused
from config import Settings
from daemon.ipc import messages as msg
from daemon.ipc.connection import Body, Connection, EventHandlers, IpcError, RequestHandlers
from daemon.logs import get_logger
from daemon.process_pool import ProcessPool
from daemon.web import WEB_WORKER_BASE
from sip.events import CallAnswered, CallEnded, SipEvent

log = get_logger(__name__)

OFFER_SECONDS = 10.0  # a worker answers an offer once aiortc gathered its host candidates
LATE_OFFER_SECONDS = 60.0  # how long a timed-out offer's answer is still awaited, to hang it up
DRAIN_POLL_SECONDS = 0.1
REFRESH_SECONDS = 1.0  # how often the calls each worker holds are asked for


@dataclass
class WebWorker:
    """One web worker process as the pool sees it."""

    index: int  # WEB_WORKER_BASE + i
    socket_path: Path
    process: asyncio.subprocess.Process | None = None
    conn: Connection | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    pid: int | None = None
    restarts: int = 0
    calls: int = 0  # calls held, as last counted (offers answered since included)
    started: set[str] = field(default_factory=set)  # its calls with a record in progress
    # offers given up on: their record ids, then (once answered late) the worker's keys of
    # those calls, whose inbound events no listener hears: no browser ever had that call
    abandoned_records: set[str] = field(default_factory=set)
    abandoned: set[str] = field(default_factory=set)
    reader: asyncio.Future[None] | None = None

    @property
    def up(self) -> bool:
        return (
            self.ready.is_set()
            and self.conn is not None
            and not self.conn.closed.is_set()
            and self.process is not None
            and self.process.returncode is None
        )


class WebPool(ProcessPool[WebWorker]):
    module = "daemon.web"
    kind = "web"

    def __init__(
        self,
        settings: Settings,
        offer_seconds: float = OFFER_SECONDS,
        refresh_seconds: float = REFRESH_SECONDS,
    ) -> None:
        super().__init__(settings, "sipai-web-")
        self.offer_seconds = offer_seconds  # for a worker's answer before the next is asked
        self.refresh_seconds = refresh_seconds  # between two questions of the calls held
        self.workers = [
            WebWorker(WEB_WORKER_BASE + i, self.runtime_dir / f"web-{i}.sock")
            for i in range(settings.web.workers)
        ]
        # the calls up: pool-wide id -> (worker, the worker's key, when it was answered); an
        # entry goes when its worker reports the call's end (web_call_ended), dies, or no
        # longer holds it when asked (every refresh_seconds): the map never outgrows the calls held
        # and those answered within one refresh
        self._calls: dict[str, tuple[WebWorker, str, float]] = {}
        self._late: set[asyncio.Future[Any]] = set()  # offers given up on, their hang-ups
        self._draining = False
        # who hears the workers' inbound events: (worker index, kind, body as JSON data)
        self.inbound_listeners: list[Callable[[int, str, Body], None]] = []
        # who hears a browser call's connection and, when its worker dies, its end, as a SIP
        # call's events (CallAnswered, CallEnded): (worker index, event)
        self.call_listeners: list[Callable[[int, SipEvent], None]] = []

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every web worker and wait (bounded) until each is ready; one that is not is
        logged and restarted in the background."""
        await self._listen()
        await asyncio.gather(*(self._wait_ready(w) for w in self.workers))
        self._supervise()
        self._tasks.append(asyncio.create_task(self._refresh()))

    def _worker_died(self, worker: WebWorker, code: int) -> None:
        """The worker's calls are gone with it: each call with a record ends failed."""
        log.error("web.died", worker=worker.index, exit_code=code, calls=worker.calls)
        worker.ready.clear()
        worker.conn = None
        worker.calls = 0
        error = f"web worker {worker.index} died (exit code {code})"
        for key in sorted(worker.started):  # finished as a dead SIP worker's calls are
            self._tell(worker, CallEnded(call=key, code=0, reason=error, local_cause="worker_died"))
        worker.started.clear()
        worker.abandoned_records.clear()
        worker.abandoned.clear()
        self._forget(worker, lambda key, since: True)

    async def drain(self) -> None:
        """Refuse new offers; return once no web worker holds a call (the supervisor bounds
        the wait, then :meth:`stop` hangs up the rest)."""
        self._draining = True
        while True:
            await self._count_calls()
            if not any(w.calls for w in self.workers if w.up):
                return
            await asyncio.sleep(DRAIN_POLL_SECONDS)

    async def stop(self) -> None:
        """Ask every worker to hang up its calls and exit; wait, kill stragglers."""
        self._draining = True
        await super().stop()

    # -- IPC -------------------------------------------------------------------------------

    def _requests(self, worker: WebWorker) -> RequestHandlers:
        return {}

    def _events(self, worker: WebWorker) -> EventHandlers:
        def ready(_: msg.Ready) -> None:
            worker.ready.set()
            log.info("web.ready", worker=worker.index)

        def inbound(event: msg.Event) -> None:
            self._inbound(worker, event)

        return {
            msg.Ready: ready,
            msg.SipEventMessage: lambda event: self._answered(worker, event.event),
            msg.WebCallEnded: lambda event: self._ended(worker, event.call),
            **dict.fromkeys(msg.INBOUND_EVENTS, inbound),
        }

    def _answered(self, worker: WebWorker, event: SipEvent) -> None:
        if isinstance(event, CallAnswered):  # the only call event a web worker sends
            self._tell(worker, event)

    def _tell(self, worker: WebWorker, event: SipEvent) -> None:
        for listener in self.call_listeners:
            listener(worker.index, event)

    def _ended(self, worker: WebWorker, call: str) -> None:
        """The worker no longer holds its call ``call`` (either mode)."""
        worker.calls = max(0, worker.calls - 1)
        self._forget(worker, lambda key, since: key == call)

    def _inbound(self, worker: WebWorker, event: msg.Event) -> None:
        call = str(getattr(event, "call", ""))
        if isinstance(event, msg.InboundStarted) and event.record_id in worker.abandoned_records:
            worker.abandoned_records.discard(event.record_id)
            worker.abandoned.add(call)
        if call in worker.abandoned:  # a late answer, hung up: no record, no webhook
            if isinstance(event, msg.InboundDone):
                worker.abandoned.discard(call)
                log.info("web.late_call_done", worker=worker.index, key=call)
            return
        if isinstance(event, msg.InboundStarted):
            worker.started.add(event.call)
        elif isinstance(event, msg.InboundDone):
            worker.started.discard(event.call)
            self._forget(worker, lambda key, since: key == event.call)
        body = event.body()
        for listener in self.inbound_listeners:
            listener(worker.index, event.type, body)

    def _forget(self, worker: WebWorker, which: Callable[[str, float], bool]) -> None:
        """Drop the calls of ``worker`` that are over (``which(key, answered_at)``)."""
        for call, (owner, key, since) in list(self._calls.items()):
            if owner is worker and which(key, since):
                del self._calls[call]

    async def _count_calls(self) -> None:
        """Ask every worker that is up how many calls it holds."""

        async def ask(worker: WebWorker) -> None:
            if worker.conn is not None and worker.up:
                asked = time.monotonic()
                with contextlib.suppress(IpcError, TimeoutError):
                    reply = await worker.conn.request(msg.Ping(), within=2.0)
                    worker.calls = reply.calls
                    held = set(reply.web_calls)  # calls answered before the question and
                    self._forget(worker, lambda key, since: since < asked and key not in held)

        await asyncio.gather(*(ask(w) for w in self.workers))

    async def _refresh(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_seconds)
            await self._count_calls()

    # -- what the API asks (the WebCalls of api.app) ---------------------------------------

    async def offer(
        self,
        sdp: str,
        mode: Literal["agent", "engine"],
        session: dict[str, Any] | None,
        caller: str,
        user_agent: str,
    ) -> tuple[str, str]:
        """A browser's offer to the agent or the engine: (the call's id, the SDP answer).
        The id is the call's record (``in-<hex16>``) for the agent, ``rtc_<hex>`` for the
        engine; :class:`WebCallRefused` with the HTTP status otherwise.

        A worker that has not answered within :attr:`offer_seconds` is passed over for the
        next; each worker asked gets an id of its own, and an answer that comes after all is
        hung up at once and reported to no listener (:meth:`_drop_late`): a slow worker can
        never run a second call under the id the browser was given, nor leave a record of a
        call no browser had, and the browser still gets its call from another."""
        if self._draining:
            raise WebCallRefused(503, "the daemon is shutting down")
        up = [w for w in self.workers if w.up]
        if not up:
            raise WebCallRefused(503, "no web worker is up")
        refusal: WebCallRefused | None = None
        for worker in sorted(up, key=lambda w: (w.calls, w.index)):
            assert worker.conn is not None
            call = f"in-{uuid.uuid4().hex[:16]}" if mode == "agent" else f"rtc_{uuid.uuid4().hex}"
            request = msg.WebOffer(
                sdp=sdp,
                mode=mode,
                session=session,
                record_id=call if mode == "agent" else "",
                caller=caller,
                user_agent=user_agent,
            )
            started = time.monotonic()
            attempt = asyncio.ensure_future(worker.conn.request(request, within=LATE_OFFER_SECONDS))
            try:
                await asyncio.wait({attempt}, timeout=self.offer_seconds)
            finally:
                if not attempt.done():  # given up on (or the asker went away)
                    self._drop_late(worker, call, attempt)
            if not attempt.done():
                log.warning("web.offer_timeout", worker=worker.index, call_id=call)
                refusal = WebCallRefused(
                    503, f"web worker {worker.index} did not answer within {self.offer_seconds} s"
                )
                continue
            try:
                reply = attempt.result()
            except (IpcError, TimeoutError) as exc:
                log.warning("web.offer_failed", worker=worker.index, error=str(exc) or repr(exc))
                refusal = WebCallRefused(503, f"web worker {worker.index} failed: {exc}")
                continue
            if reply.status == 503:  # full (or stopping): the next worker may have room
                refusal = WebCallRefused(503, reply.detail)
                continue
            if reply.detail:
                raise WebCallRefused(reply.status, reply.detail)
            worker.calls += 1
            self._calls[call] = (worker, reply.call, time.monotonic())
            log.info(
                "web.call",
                call_id=call,
                worker=worker.index,
                key=reply.call,
                mode=mode,
                answer_ms=round((time.monotonic() - started) * 1000, 1),
            )
            return call, reply.sdp
        assert refusal is not None
        raise refusal

    def _drop_late(
        self, worker: WebWorker, call: str, attempt: asyncio.Future[msg.WebOfferReply]
    ) -> None:
        """Hang up the call ``attempt`` answers, if it does: no browser has its answer, so
        its inbound events (record ``call``) are kept from the listeners (:meth:`_inbound`)."""
        self._late.add(attempt)
        worker.abandoned_records.add(call)  # before any answer: the worker replies first

        def answered(done: asyncio.Future[msg.WebOfferReply]) -> None:
            self._late.discard(done)
            if done.cancelled() or done.exception() is not None:
                worker.abandoned_records.discard(call)
                return
            reply = done.result()
            conn = worker.conn
            if reply.detail or not reply.call or conn is None:
                worker.abandoned_records.discard(call)
                return
            worker.calls += 1  # until its end is reported
            log.warning(
                "web.late_answer_hung_up", worker=worker.index, call_id=call, key=reply.call
            )
            hangup = asyncio.ensure_future(conn.request(msg.WebHangup(call=reply.call), within=5.0))
            self._late.add(hangup)
            hangup.add_done_callback(self._hung_up)

        attempt.add_done_callback(answered)

    def _hung_up(self, done: asyncio.Future[Any]) -> None:
        self._late.discard(done)
        if not done.cancelled() and done.exception() is not None:
            log.info("web.hangup_missed", error=repr(done.exception()))

    async def hangup(self, call: str) -> None:
        """Hang up the browser call ``call`` (an id :meth:`offer` gave); nothing if it has
        ended already or is unknown."""
        owner = self._calls.pop(call, None)
        conn = owner[0].conn if owner is not None else None
        if owner is None or conn is None:
            return
        try:
            await conn.request(msg.WebHangup(call=owner[1]), within=5.0)
        except (IpcError, TimeoutError) as exc:  # ended meanwhile, or the worker is gone
            log.info("web.hangup_missed", call_id=call, error=str(exc) or repr(exc))

    # -- health ----------------------------------------------------------------------------

    @property
    def known_calls(self) -> list[str]:
        """The ids :meth:`offer` gave whose calls are up, as far as the pool knows."""
        return sorted(self._calls)

    @property
    def active_calls(self) -> int:
        return sum(w.calls for w in self.workers if w.up)

    def health(self) -> dict[str, Any]:
        """How the web workers are: all up, calls held, restarts since start."""
        return {
            "up": bool(self.workers) and all(w.up for w in self.workers),
            "calls": self.active_calls,
            "restarts": sum(w.restarts for w in self.workers),
        }
