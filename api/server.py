"""uvicorn embedded in the supervisor's event loop.

The supervisor owns the process's signals, so uvicorn's own signal capture is switched off,
and the listening socket is bound here so that a busy port is a clean start-up error rather
than uvicorn calling ``sys.exit`` inside a task.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp


class ApiStartError(Exception):
    """The API could not listen on its configured address."""


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the supervisor handles SIGTERM/SIGINT


class ApiServer:
    """Serves ``app`` on ``host:port`` until :meth:`stop`; ``port`` 0 picks a free port."""

    def __init__(self, app: ASGIApp, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=None,
        )
        self._server = _EmbeddedServer(self._config)
        self._task: asyncio.Task[None] | None = None
        self._socket: socket.socket | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (host, port); valid after :meth:`start`."""
        if self._socket is None:
            raise RuntimeError("the API server is not started")
        host, port = self._socket.getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Bind, then serve in a task; returns once connections are accepted."""
        self._socket = _bind(self._host, self._port)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._socket]), name="api")
        async with asyncio.timeout(10):
            while not self._server.started:
                if self._task.done():
                    self._task.result()  # re-raise what stopped it
                    raise ApiStartError("the API server stopped during start-up")
                await asyncio.sleep(0.005)

    async def stop(self, grace_seconds: float) -> None:
        """Close the listener, wait up to ``grace_seconds`` for open requests, then cut them."""
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(asyncio.shield(self._task), grace_seconds)
        except TimeoutError:
            self._server.force_exit = True
            await self._task
        finally:
            if self._socket is not None:
                self._socket.close()


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
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise ApiStartError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock
