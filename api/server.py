"""uvicorn embedded in the supervisor's event loop.

The supervisor owns the process's signals, so uvicorn's own signal capture is switched off,
and the listening socket is bound here so that a busy port is a clean start-up error rather
than uvicorn calling ``sys.exit`` inside a task.

Connections are accepted here too, not by uvicorn, to hold them to
:class:`api.connections.ConnectionLimits`: at most ``max_connections`` at once (a new one
takes the place of the longest idle one; when none is idle it gets a bare 503 and is closed,
with no task or transport spent on it), each HTTP/1.1 connection under the deadlines of its
:class:`~api.connections.Phase`, and a file shortage (EMFILE) pauses accepting briefly
instead of spinning. Everything here runs on the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import functools
import json
import resource
import socket
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.server import ServerState

from api.connections import ConnectionLimits, Phase, plan_fds, read_phase
from daemon.logs import get_logger

log = get_logger(__name__)


def _busy(detail: str) -> bytes:
    """A complete 503 written straight to a refused socket (no protocol, no task)."""
    body = json.dumps({"detail": detail}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"retry-after: 1\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


_BUSY = {
    "max_connections": _busy("too many connections to the API; retry shortly"),
    "max_connections_per_client": _busy("too many connections from this client; retry shortly"),
}
_TOO_SLOW = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
# Connections the kernel completes ahead of accept (clamped to net.core.somaxconn): a burst
# of connects waits there instead of having its SYNs dropped, which would cost a client
# (a health probe among them) a 1 s retransmission.
_BACKLOG = 4096
_ACCEPT_BATCH = 64  # connections taken per readiness event, so other callbacks run between
_ACCEPT_RETRY_SECONDS = 0.25  # pause after EMFILE/ENFILE/ENOBUFS/ENOMEM
_SHORTAGE = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class ApiStartError(Exception):
    """The API could not listen on its configured address."""


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the supervisor handles SIGTERM/SIGINT


class ApiServer:
    """Serves ``app`` on ``host:port`` until :meth:`stop`; ``port`` 0 picks a free port."""

    def __init__(
        self, app: ASGIApp, host: str, port: int, limits: ConnectionLimits | None = None
    ) -> None:
        self._host = host
        self._port = port
        self._limits = ConnectionLimits() if limits is None else limits
        self._config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=None,
            # The protocol closes idle connections itself; uvicorn's own keep-alive timer
            # (whole seconds) never fires first.
            timeout_keep_alive=int(self._limits.idle_timeout) + 1,
        )
        self._server = _EmbeddedServer(self._config)
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None
        self._acceptor: _Acceptor | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (host, port); valid after :meth:`start`."""
        if self._socket is None:
            raise RuntimeError("the API server is not started")
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    @property
    def limits(self) -> ConnectionLimits:
        """The limits in force (``max_connections`` lowered if the file limit is too low)."""
        return self._limits

    async def start(self) -> None:
        """Bind, then serve in a task; returns once connections are accepted."""
        self._socket = _bind(self._host, self._port)
        self._limits = _fit_fd_limit(self._limits)
        # uvicorn serves the connections handed to it and listens on none itself.
        self._task = asyncio.create_task(self._server.serve(sockets=[]), name="api")
        async with asyncio.timeout(10):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # re-raise what stopped it
                    raise ApiStartError("the API server stopped during start-up")
                await asyncio.sleep(0.005)
        self._acceptor = _Acceptor(self._socket, self._server, self._limits)
        self._acceptor.start()

    async def stop(self, grace_seconds: float) -> None:
        """Close the listener, wait up to ``grace_seconds`` for open requests, then cut them."""
        if self._task is None:
            return
        if self._acceptor is not None:
            self._acceptor.stop()
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        finally:
            if self._socket is not None:
                self._socket.close()


class _Slots:
    """The connections that count against ``max_connections``, and which of them are idle.

    uvicorn's ``server_state.connections`` holds every HTTP connection from its
    ``connection_made`` and every WebSocket after its upgrade; ``pending`` counts the sockets
    accepted and not yet there (each leaves it in ``connection_made``, or when its set-up
    fails). ``idle`` lists the idle HTTP connections, longest idle first. ``by_client``
    counts each client address's HTTP connections (a WebSocket leaves it at its upgrade: the
    workers' engine sessions all come from loopback).
    """

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.pending = 0
        self.idle: OrderedDict[_LimitedH11Protocol, None] = OrderedDict()
        self.by_client: dict[str, int] = {}

    def taken(self) -> int:
        return len(self.state.connections) + self.pending

    def join(self, host: str) -> None:
        self.by_client[host] = self.by_client.get(host, 0) + 1

    def leave(self, host: str) -> None:
        left = self.by_client.get(host, 0) - 1
        if left > 0:
            self.by_client[host] = left
        else:
            self.by_client.pop(host, None)

    def idle_of(self, host: str) -> _LimitedH11Protocol | None:
        """The longest idle connection of ``host``, if it has one."""
        return next((c for c in self.idle if c.host == host), None)


class _LimitedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline on each phase of reading a request."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        *,
        slots: _Slots,
        limits: ConnectionLimits,
        host: str,
    ) -> None:
        super().__init__(config, server_state, app_state)
        self._slots = slots
        self._limits = limits
        self.host = host  # counted in slots.by_client until release_client()
        self._phase: Phase | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._upgraded = False
        self.joined = False  # in server_state.connections, no longer pending

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.joined = True
        self._slots.pending -= 1
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter(None)
        self.release_client()
        super().connection_lost(exc)

    def release_client(self) -> None:
        """This connection no longer counts against its client's share (once)."""
        if self.host:
            self._slots.leave(self.host)
            self.host = ""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._upgraded = True  # the WebSocket protocol owns the transport from here
        self._enter(None)
        self.release_client()
        super().handle_websocket_upgrade(event)

    def evict(self) -> None:
        """Close this idle connection at once to make room for a new one."""
        self._enter(None)
        self.release_client()
        self.connections.discard(self)  # its slot is free now, not when the close completes
        self._close()

    def _track(self) -> None:
        closing = self._upgraded or self.transport.is_closing()
        phase = None if closing else read_phase(self.conn)
        if phase is not self._phase:
            self._enter(phase)

    def _enter(self, phase: Phase | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._phase is Phase.IDLE:
            self._slots.idle.pop(self, None)
        self._phase = phase
        if phase is None:
            return
        if phase is Phase.IDLE:
            self._slots.idle[self] = None
        self._deadline = self.loop.call_later(self._limits.timeout(phase), self._expired)

    def _expired(self) -> None:
        phase, self._deadline = self._phase, None
        self._enter(None)
        if phase is Phase.HEADERS or phase is Phase.BODY:
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(_TOO_SLOW)
            host = self.client[0] if self.client else None
            log.info("api.request_timeout", phase=phase.value, client=host)
        self._close()

    def _close(self) -> None:
        if self.transport.is_closing():
            return
        with contextlib.suppress(h11.LocalProtocolError):  # mid-request: h11 objects
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


class _Acceptor:
    """Accepts on ``sock`` and hands the connections that fit to uvicorn's ``server``."""

    def __init__(self, sock: socket.socket, server: uvicorn.Server, limits: ConnectionLimits):
        self._sock = sock
        self._server = server
        self._limits = limits
        self._slots = _Slots(server.server_state)
        self._loop = asyncio.get_running_loop()
        self._connecting: set[asyncio.Task[Any]] = set()
        self._retry: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._retry = None
        self._loop.add_reader(self._sock.fileno(), self._accept)

    def stop(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._loop.remove_reader(self._sock.fileno())

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, address = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _SHORTAGE:
                    raise
                log.warning(
                    "api.accept_paused",
                    error=errno.errorcode.get(exc.errno, str(exc.errno)),
                    connections=self._slots.taken(),
                    retry_seconds=_ACCEPT_RETRY_SECONDS,
                )
                self._loop.remove_reader(self._sock.fileno())
                self._retry = self._loop.call_later(_ACCEPT_RETRY_SECONDS, self.start)
                return
            conn.setblocking(False)
            host = str(address[0])
            share = self._limits.max_per_client
            if share and self._slots.by_client.get(host, 0) >= share:
                # This client holds its share: it may only replace one of its own idle ones.
                own = self._slots.idle_of(host)
                if own is None:
                    self._refuse(conn, "max_connections_per_client", share)
                    continue
                own.evict()
            if self._slots.taken() >= self._limits.max_connections:
                if not self._slots.idle:
                    self._refuse(conn, "max_connections", self._limits.max_connections)
                    continue
                next(iter(self._slots.idle)).evict()
            self._hand_over(conn, host)

    def _refuse(self, conn: socket.socket, reason: str, limit: int) -> None:
        with contextlib.suppress(OSError):
            conn.send(_BUSY[reason])
        conn.close()
        log.warning("api.connection_refused", reason=reason, limit=limit)

    def _hand_over(self, conn: socket.socket, host: str) -> None:
        self._slots.pending += 1
        self._slots.join(host)
        made: list[_LimitedH11Protocol] = []

        def protocol() -> _LimitedH11Protocol:
            made.append(
                _LimitedH11Protocol(
                    config=self._server.config,
                    server_state=self._server.server_state,
                    app_state=self._server.lifespan.state,
                    slots=self._slots,
                    limits=self._limits,
                    host=host,
                )
            )
            return made[0]

        task = self._loop.create_task(self._loop.connect_accepted_socket(protocol, conn))
        self._connecting.add(task)
        task.add_done_callback(functools.partial(self._connected, made, host))

    def _connected(
        self, made: list[_LimitedH11Protocol], host: str, task: asyncio.Task[Any]
    ) -> None:
        self._connecting.discard(task)
        if not (made and made[0].joined):  # set-up failed before connection_made
            self._slots.pending -= 1
            if made:
                made[0].release_client()
            else:
                self._slots.leave(host)
        if not task.cancelled() and task.exception() is not None:
            log.debug("api.connection_failed", error=repr(task.exception()))


def _fit_fd_limit(limits: ConnectionLimits) -> ConnectionLimits:
    """Raise RLIMIT_NOFILE's soft limit as far as the caps need (within the hard limit), and
    lower ``max_connections`` when even that is too little."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    plan = plan_fds(limits, soft, hard)
    if plan.soft_limit != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (plan.soft_limit, hard))
    if plan.max_connections == limits.max_connections:
        return limits
    log.warning(
        "api.max_connections_lowered",
        max_connections=plan.max_connections,
        configured=limits.max_connections,
        fd_limit=plan.soft_limit,
        reserved_fds=limits.reserved_fds,
        hint="raise LimitNOFILE (ulimit -n) or lower api.max_connections",
    )
    return dataclasses.replace(limits, max_connections=plan.max_connections)


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ApiStartError(f"api.host {host!r} cannot be resolved: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(_BACKLOG)
    except OSError as exc:
        sock.close()
        raise ApiStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock
