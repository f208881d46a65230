"""The SIP worker processes, seen from the supervisor.

:class:`WorkerPool` runs ``sip.workers`` processes (``python -m daemon.worker``). Worker ``i``
connects to ``RUNTIME_DIR/worker-i.sock``, gets its settings (SIP port ``sip.port + i``, its
slice of the RTP range), registers the same extension with its own Contact and reports events.
The pool:

- restarts a worker that dies, with capped backoff, and reports each call it held as ended
  with ``local_cause = "worker_died"``;
- arbitrates inbound claims: the PBX forks one INVITE (one SIP Call-ID) to every contact; the
  first worker to claim a Call-ID answers, the others reply 486;
- dispatches outbound calls to the connected worker with the most free slots;
- aggregates registration and calls for ``/health``, probes every worker for the watchdog,
  drains calls on stop and shuts the workers down in order.

Everything here runs on the supervisor's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, SecretStr

from config import Settings
from daemon.logs import get_logger
from sip.events import (
    CallAnswered,
    CallEnded,
    CallRinging,
    DtmfReceived,
    IncomingCall,
    MediaStats,
    RegistrationChanged,
    SipEvent,
    TransferProgress,
)
from sip.ipc import Body, Connection, IpcClosed, IpcError, UnknownRequest

log = get_logger(__name__)

READY_SECONDS = 30.0
TEARDOWN_POLL_SECONDS = 0.2
STOP_SECONDS = 10.0
CLAIM_MEMORY_SECONDS = 300.0
RESTART_BACKOFF_CAP = 30.0
START_RETRY_SECONDS = 15.0

_EVENT_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        RegistrationChanged,
        IncomingCall,
        CallRinging,
        CallAnswered,
        CallEnded,
        DtmfReceived,
        TransferProgress,
    )
}


def worker_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a SIP worker process starts with: the supervisor's, less systemd's
    notify/watchdog/socket variables (they belong to the supervisor), with numpy's BLAS on one
    thread unless the administrator set it. A worker has no large products for BLAS (the media
    core's loops are compiled C); any small one would otherwise be split across cores, leaving
    OpenBLAS's helper threads spinning between 20 ms frames at several times the work's own
    CPU cost, as the media core's earlier numpy resampler did. The supervisor keeps the default:
    Whisper's feature extraction there gains from the threads."""
    env = {
        k: v
        for k, v in environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")
    }
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return env


def decode_event(body: Body) -> SipEvent:
    fields = dict(body)
    cls = _EVENT_TYPES[fields.pop("type")]
    if cls is CallEnded and fields.get("stats") is not None:
        fields["stats"] = MediaStats(**fields["stats"])
    event: SipEvent = cls(**fields)
    return event


class WorkerStartError(Exception):
    """A SIP worker could not be started."""


class NoFreeWorker(Exception):
    """Every worker is busy (or none is running)."""


@dataclass
class WorkerState:
    index: int
    socket_path: Path
    process: asyncio.subprocess.Process | None = None
    conn: Connection | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    registered: bool = False
    registration_code: int = 0
    registration_error: str = ""  # why not registered, after a failed attempt
    calls: set[str] = field(default_factory=set)
    restarts: int = 0
    pid: int | None = None
    reader: asyncio.Future[None] | None = None  # the IPC connection's read loop
    reserved: int = 0  # outbound calls handed to this worker and not finished
    # Slots of ended calls that pjsua is still tearing down, as the worker last reported them
    # (pjsua's call count less the calls it holds); counted as used until reported free.
    teardown: int = 0
    teardown_epoch: int = 0  # bumped by each release: a report asked for before it is stale
    teardown_poll: asyncio.Task[None] | None = None
    # INVITEs the worker refused, by reason: as last reported, and from its earlier lives.
    refused: dict[str, int] = field(default_factory=dict)
    refused_before: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.pid,
            "up": self.ready.is_set(),
            "registered": self.registered,
            "registration_code": self.registration_code,
            "registration_error": self.registration_error or None,
            "calls": len(self.calls),
            "restarts": self.restarts,
        }


class WorkerPool:
    def __init__(
        self,
        settings: Settings,
        inbound_policy: str | None = None,
        on_event: Callable[[int, SipEvent], None] | None = None,
    ) -> None:
        self.settings = settings
        self.inbound_policy = inbound_policy
        self._on_event = on_event
        runtime = settings.daemon.runtime_dir or os.environ.get("RUNTIME_DIRECTORY", "")
        self._own_dir = not runtime
        self.runtime_dir = Path(runtime or tempfile.mkdtemp(prefix="sipai-"))
        self.workers = [
            WorkerState(i, self.runtime_dir / f"worker-{i}.sock")
            for i in range(settings.sip.workers)
        ]
        self._servers: list[asyncio.Server] = []
        self._supervise: list[asyncio.Task[None]] = []
        self._claims: dict[str, tuple[int, float]] = {}
        self._stopping = False
        self._calls_changed = asyncio.Event()
        # Called when a slot may have become free (a call ended, a worker came up).
        self.capacity_listeners: list[Callable[[], None]] = []
        # Called with (call_id, status) when a worker reports an outbound call's progress.
        self.status_listeners: list[Callable[[str, str], None]] = []
        # Serves workers' "transcribe" requests (the supervisor's speech recognition).
        self.transcriber: Callable[[NDArray[np.int16], int, str], Awaitable[str]] | None = None
        self.synthesizer: Callable[[str, int], Awaitable[NDArray[np.int16]]] | None = None
        # Inbound agent events (inbound_call, transcript, agent_failed, inbound_done).
        self.inbound_listeners: list[Callable[[int, str, Body], None]] = []
        self._capacity = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every worker and wait until each has its SIP endpoint up."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        for state in self.workers:
            with contextlib.suppress(FileNotFoundError):
                state.socket_path.unlink()
            server = await asyncio.start_unix_server(
                self._acceptor(state), path=str(state.socket_path)
            )
            state.socket_path.chmod(0o600)
            self._servers.append(server)
            await self._spawn(state)
        await asyncio.gather(*(self._start_one(s) for s in self.workers))
        for state in self.workers:
            self._supervise.append(asyncio.create_task(self._watch(state)))

    async def _spawn(self, state: WorkerState) -> None:
        env = worker_environment(os.environ)
        state.ready.clear()
        state.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon.worker",
            "--socket",
            str(state.socket_path),
            "--index",
            str(state.index),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
        )
        state.pid = state.process.pid
        log.info("worker.spawned", worker=state.index, pid=state.pid)

    async def _start_one(self, state: WorkerState) -> None:
        """Wait for the worker; retry one that exits early for a while (a previous instance
        may still be releasing the SIP port), then give up with the reason."""
        deadline = time.monotonic() + START_RETRY_SECONDS
        while True:
            try:
                await self._wait_ready(state)
                return
            except WorkerStartError as exc:
                if time.monotonic() >= deadline or state.process is None:
                    raise
                if state.process.returncode is None:
                    raise
                log.warning("worker.start_retry", worker=state.index, error=str(exc))
                await asyncio.sleep(1.0)
                await self._spawn(state)

    async def _wait_ready(self, state: WorkerState) -> None:
        assert state.process is not None
        ready = asyncio.ensure_future(state.ready.wait())
        exited = asyncio.ensure_future(state.process.wait())
        try:
            await asyncio.wait(
                {ready, exited}, timeout=READY_SECONDS, return_when="FIRST_COMPLETED"
            )
        finally:
            ready.cancel()
            exited.cancel()
        if state.ready.is_set():
            return
        code = state.process.returncode
        if code is None:
            state.process.kill()
            raise WorkerStartError(f"SIP worker {state.index} not ready within {READY_SECONDS} s")
        raise WorkerStartError(
            f"SIP worker {state.index} exited with code {code} during start-up "
            f"(SIP port {self.settings.sip.port + state.index}; see its log lines)"
        )

    async def _watch(self, state: WorkerState) -> None:
        """Restart the worker whenever it exits while the pool is running."""
        failures = 0
        while True:
            assert state.process is not None
            code = await state.process.wait()
            if self.stopping():
                return
            self._worker_died(state, code)
            failures += 1
            jitter = random.uniform(0.8, 1.2)  # noqa: S311 - not cryptographic
            delay = min(RESTART_BACKOFF_CAP, 0.5 * 2 ** (failures - 1)) * jitter
            log.warning(
                "worker.restarting", worker=state.index, exit_code=code, in_seconds=round(delay, 2)
            )
            await asyncio.sleep(delay)
            if self.stopping():
                return
            state.restarts += 1
            await self._spawn(state)
            try:
                async with asyncio.timeout(READY_SECONDS):
                    await state.ready.wait()
                failures = 0
            except TimeoutError:
                log.error("worker.not_ready", worker=state.index)
                if state.process.returncode is None:
                    state.process.kill()

    def _worker_died(self, state: WorkerState, code: int) -> None:
        log.error("worker.died", worker=state.index, exit_code=code, calls=len(state.calls))
        state.ready.clear()
        state.registered = False
        for reason, count in state.refused.items():
            state.refused_before[reason] = state.refused_before.get(reason, 0) + count
        state.refused = {}
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
        self._stopping = True
        for task in self._supervise:
            task.cancel()
        for state in self.workers:
            if state.teardown_poll is not None:
                state.teardown_poll.cancel()

        async def stop_one(state: WorkerState) -> None:
            if state.conn is not None:
                with contextlib.suppress(IpcError, TimeoutError):
                    await state.conn.request("shutdown", within=2.0)
            if state.process is not None and state.process.returncode is None:
                try:
                    await asyncio.wait_for(state.process.wait(), STOP_SECONDS)
                except TimeoutError:
                    log.error("worker.kill", worker=state.index)
                    state.process.kill()
                    await state.process.wait()
            if state.conn is not None:
                await state.conn.aclose()

        await asyncio.gather(*(stop_one(s) for s in self.workers))
        for server in self._servers:
            server.close()
        for state in self.workers:
            with contextlib.suppress(FileNotFoundError):
                state.socket_path.unlink()
        if self._own_dir:
            with contextlib.suppress(OSError):
                self.runtime_dir.rmdir()

    def stopping(self) -> bool:
        """True once stop() began (a method: the flag changes while _watch awaits)."""
        return self._stopping

    # -- IPC -------------------------------------------------------------------------------

    def _acceptor(
        self, state: WorkerState
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._connected(state, reader, writer)

        return accept

    def _connected(
        self, state: WorkerState, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if state.conn is not None and not state.conn.closed.is_set():
            writer.close()  # one connection per worker
            return
        conn = Connection(
            reader,
            writer,
            f"worker-{state.index}",
            lambda t, b: self._request(state, t, b),
            lambda t, b: self._event(state, t, b),
        )
        state.conn = conn
        state.reader = asyncio.ensure_future(conn.run())

    async def _request(self, state: WorkerState, type_: str, body: Body) -> Body:
        if type_ == "hello":
            sip = self.settings.sip.model_dump(mode="json")
            sip["password"] = self.settings.sip.password.get_secret_value()
            return {
                "sip": sip,
                "log_level": self.settings.log.level.value,
                "log_format": self.settings.log.format.value,
                "inbound_policy": self.inbound_policy,
                "agent": _revealed(self.settings.agent),
                "api": _revealed(self.settings.api),
                "realtime": _revealed(self.settings.realtime),
            }
        if type_ == "claim":
            return {"granted": self.claim(state.index, str(body["sip_call_id"]))}
        if type_ == "synthesize":
            if self.synthesizer is None:
                raise RuntimeError("no speech synthesis in this supervisor")
            pcm = await self.synthesizer(str(body["text"]), int(body["rate"]))
            return {"pcm": base64.b64encode(pcm.astype("<i2").tobytes()).decode()}
        if type_ == "transcribe":
            if self.transcriber is None:
                raise RuntimeError("no speech recognition in this supervisor")
            pcm = np.frombuffer(base64.b64decode(body["pcm"]), dtype="<i2").astype(np.int16)
            hint = str(body.get("hint", ""))
            return {"text": await self.transcriber(pcm, int(body["rate"]), hint)}
        raise UnknownRequest(type_)

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

    def _event(self, state: WorkerState, type_: str, body: Body) -> None:
        if type_ == "ready":
            state.ready.set()
            self._capacity_changed()
            log.info("worker.ready", worker=state.index, contact=body.get("contact"))
            return
        if type_ == "outbound_status":
            for listener in self.status_listeners:
                listener(str(body["call_id"]), str(body["status"]))
            return
        if type_ in ("inbound_call", "transcript", "agent_failed", "inbound_done"):
            for inbound_listener in self.inbound_listeners:
                inbound_listener(state.index, type_, body)
            return
        if type_ != "sip_event":
            log.warning("ipc.unknown_event", worker=state.index, type=type_)
            return
        self._deliver(state, decode_event(body))

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
        for listener in self.capacity_listeners:
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

    async def make_call(self, target: str, ring_timeout: float) -> tuple[int, str]:
        """Dial on the least loaded worker; returns (worker index, call id)."""
        candidates = [
            s
            for s in self.workers
            if s.ready.is_set()
            and s.conn is not None
            and self._used(s) < self.settings.sip.max_calls
        ]
        if not candidates:
            raise NoFreeWorker(
                f"no SIP worker has a free call slot ({self.active_calls} calls on "
                f"{len(self.workers)} workers x {self.settings.sip.max_calls})"
            )
        state = min(candidates, key=lambda s: (self._used(s), s.index))
        assert state.conn is not None
        result = await state.conn.request(
            "make_call", {"target": target, "ring_timeout": ring_timeout}
        )
        call = str(result["call"])
        state.calls.add(call)
        return state.index, call

    async def command(self, index: int, type_: str, within: float = 10.0, **body: Any) -> Body:
        """Send a call command (hangup, answer, outbound...) to worker ``index``."""
        conn = self.workers[index].conn
        if conn is None:
            raise IpcClosed(f"worker {index} is not connected")
        return await conn.request(type_, body, within=within)

    def _used(self, state: WorkerState) -> int:
        # Reserved outbound calls show up in ``calls`` once dialled; counting the larger of
        # the two never over-commits a worker (it may under-use one holding both kinds).
        # Slots still in pjsua's teardown are taken too: a call that ended keeps its slot
        # until its INVITE transaction is over, up to ~32 s when the far end went silent.
        return max(len(state.calls), state.reserved) + state.teardown

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
        state.teardown += 1
        state.teardown_epoch += 1
        if state.teardown_poll is None or state.teardown_poll.done():
            state.teardown_poll = asyncio.ensure_future(self._follow_teardown(state))

    async def _follow_teardown(self, state: WorkerState) -> None:
        """Ask the worker how many slots pjsua is still tearing down until none is."""
        while state.teardown > 0:
            conn = state.conn
            if conn is None or not state.ready.is_set():
                state.teardown = 0  # a worker that died or restarts has no pjsua calls left
                break
            epoch = state.teardown_epoch
            try:
                reply = await conn.request("ping", within=5.0)
            except (IpcError, TimeoutError):
                state.teardown = 0
                break
            if epoch == state.teardown_epoch:  # no release since the question: up to date
                held = int(reply.get("pjsua_calls", 0)) - int(reply.get("calls", 0))
                freed = state.teardown > max(0, held)
                state.teardown = max(0, held)
                if freed:
                    self._capacity_changed()
            if state.teardown > 0:
                await asyncio.sleep(TEARDOWN_POLL_SECONDS)
        self._capacity_changed()

    async def probe(self) -> None:
        """Watchdog: a round trip through every running worker's SIP thread."""

        async def ping(state: WorkerState) -> None:
            if state.conn is not None and state.ready.is_set():
                await state.conn.request("ping", within=5.0)

        await asyncio.gather(*(ping(s) for s in self.workers))

    async def refused_invites(self) -> dict[str, int]:
        """INVITEs refused before a call slot by every worker since start, by reason."""

        async def ask(state: WorkerState) -> None:
            if state.conn is not None and state.ready.is_set():
                with contextlib.suppress(IpcError, TimeoutError):
                    reply = await state.conn.request("ping", within=2.0)
                    state.refused = {
                        k.removeprefix("refused_"): int(v)
                        for k, v in reply.items()
                        if k.startswith("refused_")
                    }

        await asyncio.gather(*(ask(s) for s in self.workers))
        total: dict[str, int] = {}
        for state in self.workers:
            for counts in (state.refused_before, state.refused):
                for reason, count in counts.items():
                    total[reason] = total.get(reason, 0) + count
        return total

    async def drain(self) -> None:
        """Return once no worker holds a call (the supervisor bounds the wait)."""
        while self.active_calls:
            self._calls_changed.clear()
            await self._calls_changed.wait()


def _revealed(value: Any) -> Any:
    """A settings section as plain JSON data with its secrets in clear, for the worker's hello
    (sent over the worker's own 0600 socket, never in argv or the environment)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {name: _revealed(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, list | tuple):
        return [_revealed(v) for v in value]
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value
