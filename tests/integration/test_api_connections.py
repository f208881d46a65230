"""The API server's connection limits on real loopback sockets: deadlines, the cap, and that
normal clients (keep-alive, large bodies, WebSockets) are served as before."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import websockets
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from api.connections import ConnectionLimits
from api.server import ApiServer

SLACK = 1.0  # seconds a deadline may fire late on a loaded machine


class _Peer:
    """The application served: echo routes, and one that holds its answer until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.app = Starlette(
            routes=[
                Route("/ok", self.ok),
                Route("/length", self.length, methods=["POST"]),
                Route("/hold", self.hold),
                WebSocketRoute("/ws", self.echo),
            ]
        )

    async def ok(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def length(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    async def hold(self, request: Request) -> PlainTextResponse:
        await self.release.wait()
        return PlainTextResponse("released")

    async def echo(self, websocket: WebSocket) -> None:
        await websocket.accept()
        while True:
            await websocket.send_text(await websocket.receive_text())


@contextlib.asynccontextmanager
async def _serving(limits: ConnectionLimits) -> AsyncIterator[tuple[_Peer, int]]:
    peer = _Peer()
    server = ApiServer(peer.app, "127.0.0.1", 0, limits)
    await server.start()
    try:
        yield peer, server.address[1]
    finally:
        peer.release.set()
        await server.stop(grace_seconds=2)


_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _Clients:
    """Raw client connections, all closed at the end of the test."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def connect(self, port: int) -> _Stream:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writers.append(writer)
        return reader, writer


@pytest.fixture
async def clients() -> AsyncIterator[_Clients]:
    opened = _Clients()
    yield opened
    for writer in opened.writers:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def _response(reader: asyncio.StreamReader) -> bytes:
    """One response with a content-length body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    return head + await asyncio.wait_for(reader.readexactly(length), 5)


async def _seconds_until_closed(reader: asyncio.StreamReader, bound: float) -> float:
    """Seconds until the server closes the connection (EOF), reading what it sends first."""
    started = time.monotonic()
    async with asyncio.timeout(bound):
        while await reader.read(4096):
            pass
    return time.monotonic() - started


async def test_idle_connections_closed_after_idle_timeout_keep_alive_served(
    clients: _Clients,
) -> None:
    """A connection that never sends is closed after idle_timeout; a keep-alive connection
    serves several requests, then is closed idle_timeout after its last answer."""
    async with _serving(ConnectionLimits(idle_timeout=0.5)) as (_, port):
        silent, _ = await clients.connect(port)
        silent_for = await _seconds_until_closed(silent, 0.5 + SLACK)
        assert 0.4 <= silent_for <= 0.5 + SLACK, (
            f"silent connection closed after {silent_for:.2f} s"
        )
        reader, writer = await clients.connect(port)
        for _ in range(3):
            writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await _response(reader)).endswith(b"\r\n\r\nok")
            answered = time.monotonic()
            await asyncio.sleep(0.3)  # within the idle timeout: kept
        await _seconds_until_closed(reader, 0.5 + SLACK)
        kept = time.monotonic() - answered
        assert 0.5 <= kept <= 0.5 + SLACK, f"keep-alive connection closed after {kept:.2f} s"
        print(f"silent closed after {silent_for:.2f} s, idle keep-alive {kept:.2f} s")


async def test_slow_headers_cut_with_408_within_header_timeout(clients: _Clients) -> None:
    """Headers trickling in one byte every 0.1 s get a 408 and a close header_timeout after
    their first byte."""
    async with _serving(ConnectionLimits(header_timeout=0.5)) as (_, port):
        reader, writer = await clients.connect(port)
        started = time.monotonic()
        writer.write(b"GET /ok HTTP/1.1\r\n")

        async def drip() -> None:
            while True:
                writer.write(b"X")
                await asyncio.sleep(0.1)

        dripping = asyncio.create_task(drip())
        try:
            reply = await asyncio.wait_for(reader.read(4096), 0.5 + SLACK)
            await _seconds_until_closed(reader, SLACK)
        finally:
            dripping.cancel()
        cut = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert 0.5 <= cut <= 0.5 + SLACK, f"cut after {cut:.2f} s"
        print(f"slow headers cut after {cut:.2f} s (header_timeout 0.5 s)")


async def test_slow_body_cut_with_408_within_body_timeout(clients: _Clients) -> None:
    """A body that does not arrive in full within body_timeout of the headers gets a 408."""
    async with _serving(ConnectionLimits(body_timeout=0.5)) as (_, port):
        reader, writer = await clients.connect(port)
        writer.write(b"POST /length HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
        started = time.monotonic()
        reply = await asyncio.wait_for(reader.read(4096), 0.5 + SLACK)
        cut = time.monotonic() - started + await _seconds_until_closed(reader, SLACK)
        assert reply.startswith(b"HTTP/1.1 408 "), reply
        assert 0.4 <= cut <= 0.5 + SLACK, f"cut after {cut:.2f} s"
        writer.close()


async def test_large_body_at_loopback_speed_accepted() -> None:
    """A 16 MiB body sent at full speed is received whole within the default body_timeout."""
    async with _serving(ConnectionLimits()) as (_, port):
        body = b"x" * (16 * 1024 * 1024)
        async with httpx.AsyncClient() as client:
            response = await client.post(f"http://127.0.0.1:{port}/length", content=body)
        assert (response.status_code, response.text) == (200, str(len(body)))


async def test_at_the_cap_a_new_connection_replaces_the_longest_idle(clients: _Clients) -> None:
    """With max_connections open and idle, a new connection closes the longest idle one and
    is served."""
    async with _serving(ConnectionLimits(max_connections=4)) as (_, port):
        idle = []
        for _ in range(4):
            reader, writer = await clients.connect(port)
            writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            await _response(reader)  # served: the connection is in, and now idle
            idle.append((reader, writer))
        async with httpx.AsyncClient() as client:
            response = await client.get(f"http://127.0.0.1:{port}/ok")
        assert response.status_code == 200
        await _seconds_until_closed(idle[0][0], SLACK)  # the first one went
        for _, writer in idle[1:]:
            assert not writer.is_closing()
            writer.close()


async def test_at_the_cap_with_none_idle_a_new_connection_gets_503_at_once(
    clients: _Clients,
) -> None:
    """With max_connections all answering requests, a new connection gets a bare 503 and is
    closed at once; once they are answered, new connections are served again."""
    async with _serving(ConnectionLimits(max_connections=4)) as (peer, port):
        busy = []
        for _ in range(4):
            reader, writer = await clients.connect(port)
            writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
            busy.append((reader, writer))
        await asyncio.sleep(0.2)  # all four requests in the application
        started = time.monotonic()
        reader, writer = await clients.connect(port)
        reply = await asyncio.wait_for(reader.read(4096), SLACK)
        refused_in = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 503 "), reply
        await _seconds_until_closed(reader, SLACK)
        peer.release.set()
        for busy_reader, busy_writer in busy:
            assert (await _response(busy_reader)).endswith(b"released")
            busy_writer.close()
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://127.0.0.1:{port}/ok")).status_code == 200
        print(f"refused in {refused_in * 1000:.1f} ms")


async def test_websocket_outlives_the_idle_timeout() -> None:
    """An upgraded WebSocket is not under the HTTP deadlines: it still echoes after several
    idle timeouts of silence."""
    limits = ConnectionLimits(idle_timeout=0.2, header_timeout=0.2)
    async with _serving(limits) as (_, port), websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
        await asyncio.sleep(1.0)  # five idle timeouts
        await ws.send("still here")
        assert await asyncio.wait_for(ws.recv(), 5) == "still here"


async def test_connections_counted_back_after_use() -> None:
    """Connections opened and closed one after another free their slots: with a cap of 4,
    50 sequential clients are all served."""
    async with _serving(ConnectionLimits(max_connections=4)) as (_, port):
        for _ in range(50):
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"http://127.0.0.1:{port}/ok")).status_code == 200


async def test_one_client_address_holds_at_most_its_share(clients: _Clients) -> None:
    """A client address holding max_connections_per_client unfinished requests gets a bare
    503 for one more, while another address is still served; once they close, the address
    may open its share of idle connections again, and one more replaces its longest idle."""
    limits = ConnectionLimits(max_connections=16, max_per_client=4)
    async with _serving(limits) as (_, port):
        slow = []
        for _ in range(4):
            reader, writer = await clients.connect(port)
            writer.write(b"GET /ok HTTP/1.1\r\n")  # headers begun, never finished
            slow.append((reader, writer))
        await asyncio.sleep(0.2)  # all four in the server
        reader, _ = await clients.connect(port)
        reply = await asyncio.wait_for(reader.read(4096), SLACK)
        assert reply.startswith(b"HTTP/1.1 503 "), reply
        assert reply.endswith(b'{"detail": "too many connections from this client; retry shortly"}')
        other, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=("127.0.0.2", 0)
        )
        clients.writers.append(writer)
        writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await _response(other)).endswith(b"ok")
        for _, slow_writer in slow:
            slow_writer.close()
        await asyncio.sleep(0.2)  # their slots are counted back
        idle = []
        for _ in range(5):
            reader, writer = await clients.connect(port)
            writer.write(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            assert (await _response(reader)).endswith(b"ok")
            idle.append(reader)
        await _seconds_until_closed(idle[0], SLACK)  # the fifth took the first one's place
