"""Worker processes of one kind, seen from the supervisor: what the SIP pool and the web pool share.

:class:`ProcessPool` runs one process per entry of :attr:`~ProcessPool.workers`
(``python -m MODULE --socket PATH --index N``), each connecting back to its own Unix socket
in the runtime directory. It:

- spawns the processes with :func:`worker_environment` and waits (bounded) until each reports
  ``ready``;
- serves ``hello`` (:func:`daemon.pool_state.hello_reply`), ``synthesize`` and ``transcribe``
  on every connection, plus the requests and events of its kind
  (:meth:`~ProcessPool._requests`, :meth:`~ProcessPool._events`); one connection per process;
- restarts a process that exits while the pool runs, with capped, jittered backoff (0.5, 1,
  2 ... 30 s), after :meth:`~ProcessPool._worker_died` has ended what it held. The wait for
  a restarted process's ``ready`` ends as soon as it exits: one that dies during start-up is
  restarted after the next backoff step (both pools; the SIP pool before waited the whole 30
  s ready bound each time). A spawn that fails (``EMFILE``, ``ENOMEM``...) is logged
  (``worker.spawn_failed``) and tried again after the next backoff step;
- stops: asks each process to shut down, waits, kills stragglers, removes its sockets.

:mod:`daemon.workers` (SIP workers) and :mod:`daemon.web.pool` (web workers) are its two
kinds. Log events are named after the kind (``worker.spawned``, ``web.spawned``...).
Everything here runs on the supervisor's event loop.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import random
import sys
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np
from numpy.typing import NDArray

from config import Settings
from daemon.ipc import messages as msg
from daemon.ipc.connection import Connection, EventHandlers, IpcError, RequestHandlers
from daemon.logs import get_logger
from daemon.pool_state import hello_reply

log = get_logger(__name__)

READY_SECONDS = 30.0
STOP_SECONDS = 10.0
RESTART_BACKOFF_CAP = 30.0


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


class PoolProcess(Protocol):
    """One worker process as a pool sees it (the pool's own state class adds the rest)."""

    index: int
    socket_path: Path
    process: asyncio.subprocess.Process | None
    conn: Connection | None
    ready: asyncio.Event
    pid: int | None
    restarts: int
    reader: asyncio.Future[None] | None


StateT = TypeVar("StateT", bound=PoolProcess)


class ProcessPool(abc.ABC, Generic[StateT]):
    module: ClassVar[str]  # what ``python -m`` runs
    kind: ClassVar[str]  # log events' and connections' prefix
    inbound_policy: str | None = None  # handed to each process in its hello

    def __init__(self, settings: Settings, temp_prefix: str) -> None:
        self.settings = settings
        runtime = settings.daemon.runtime_dir or os.environ.get("RUNTIME_DIRECTORY", "")
        self._own_dir = not runtime  # made here: removed by stop()
        self.runtime_dir = Path(runtime or tempfile.mkdtemp(prefix=temp_prefix))
        self.workers: list[StateT] = []  # the kind's state of each process, socket in runtime_dir
        self._servers: list[asyncio.Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        # Serve the processes' "synthesize" and "transcribe" (the supervisor's speech).
        self.transcriber: Callable[[NDArray[np.int16], int, str], Awaitable[str]] | None = None
        self.synthesizer: Callable[[str, int], Awaitable[NDArray[np.int16]]] | None = None

    # -- what each kind adds -----------------------------------------------------------------

    @abc.abstractmethod
    def _worker_died(self, state: StateT, code: int) -> None:
        """The process exited while the pool runs: end what it held (it is restarted next)."""

    @abc.abstractmethod
    def _requests(self, state: StateT) -> RequestHandlers:
        """The requests of this kind a process may send, beyond hello, synthesize, transcribe."""

    @abc.abstractmethod
    def _events(self, state: StateT) -> EventHandlers:
        """The events of this kind a process sends."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def _listen(self) -> None:
        """Open every process's socket and spawn the process."""
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

    def _supervise(self) -> None:
        """Restart every process whenever it exits (from now on)."""
        for state in self.workers:
            self._tasks.append(asyncio.create_task(self._watch(state)))

    async def _spawn(self, state: StateT) -> None:
        state.ready.clear()
        state.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            self.module,
            "--socket",
            str(state.socket_path),
            "--index",
            str(state.index),
            env=worker_environment(os.environ),
            stdin=asyncio.subprocess.DEVNULL,
        )
        state.pid = state.process.pid
        log.info(f"{self.kind}.spawned", worker=state.index, pid=state.pid)

    async def _until_ready(self, state: StateT) -> bool:
        """Until the process is ready or has exited, at most READY_SECONDS: ready?"""
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
        return state.ready.is_set()

    async def _wait_ready(self, state: StateT) -> bool:
        """:meth:`_until_ready`; a process not ready is logged and, if still running, killed."""
        if await self._until_ready(state):
            return True
        assert state.process is not None
        log.error(f"{self.kind}.not_ready", worker=state.index, exit_code=state.process.returncode)
        if state.process.returncode is None:
            state.process.kill()
        return False

    async def _watch(self, state: StateT) -> None:
        """Restart the process whenever it exits while the pool is running."""
        failures = 0
        while True:
            assert state.process is not None
            code = await state.process.wait()
            if self.stopping():
                return
            self._worker_died(state, code)
            while True:  # until a process is spawned
                failures += 1
                jitter = random.uniform(0.8, 1.2)  # noqa: S311 - not cryptographic
                delay = min(RESTART_BACKOFF_CAP, 0.5 * 2 ** (failures - 1)) * jitter
                log.warning(
                    f"{self.kind}.restarting",
                    worker=state.index,
                    exit_code=code,
                    in_seconds=round(delay, 2),
                )
                await asyncio.sleep(delay)
                if self.stopping():
                    return
                state.restarts += 1
                try:
                    await self._spawn(state)
                    break
                except Exception as exc:  # out of descriptors or memory: may pass, try again
                    log.error(f"{self.kind}.spawn_failed", worker=state.index, error=repr(exc))
            if await self._wait_ready(state):
                failures = 0

    async def stop(self) -> None:
        """Ask every process to shut down, wait, kill stragglers; remove the sockets."""
        self._stopping = True
        for task in self._tasks:
            task.cancel()

        async def stop_one(state: StateT) -> None:
            if state.conn is not None:
                with contextlib.suppress(IpcError, TimeoutError):
                    await state.conn.request(msg.Shutdown(), within=2.0)
            if state.process is not None and state.process.returncode is None:
                try:
                    await asyncio.wait_for(state.process.wait(), STOP_SECONDS)
                except TimeoutError:
                    log.error(f"{self.kind}.kill", worker=state.index)
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

    # -- IPC ---------------------------------------------------------------------------------

    def _acceptor(
        self, state: StateT
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], None]:
        def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._connected(state, reader, writer)

        return accept

    def _connected(
        self, state: StateT, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if state.conn is not None and not state.conn.closed.is_set():
            writer.close()  # one connection per process
            return

        async def hello(_: msg.Hello) -> msg.HelloReply:
            return hello_reply(self.settings, self.inbound_policy)

        requests: dict[type[msg.Request[Any]], Callable[[Any], Awaitable[msg.Message]]] = {
            msg.Hello: hello,
            msg.Synthesize: self._synthesize,
            msg.Transcribe: self._transcribe,
        }
        requests.update(self._requests(state))
        conn = Connection(
            reader, writer, f"{self.kind}-{state.index}", requests, self._events(state)
        )
        state.conn = conn
        state.reader = asyncio.ensure_future(conn.run())

    async def _synthesize(self, request: msg.Synthesize) -> msg.SynthesizeReply:
        if self.synthesizer is None:
            raise RuntimeError("no speech synthesis in this supervisor")
        return msg.SynthesizeReply(pcm=await self.synthesizer(request.text, request.rate))

    async def _transcribe(self, request: msg.Transcribe) -> msg.TranscribeReply:
        if self.transcriber is None:
            raise RuntimeError("no speech recognition in this supervisor")
        text = await self.transcriber(request.pcm, request.rate, request.hint)
        return msg.TranscribeReply(text=text)
