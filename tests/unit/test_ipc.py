"""The worker IPC protocol over a real Unix stream socket."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from daemon.ipc.connection import (
    MAX_FRAME,
    MAX_MESSAGE,
    PIECE_BYTES,
    Connection,
    Envelope,
    FrameKind,
    IpcClosed,
    IpcError,
    Reassembly,
    encode,
)
from daemon.ipc.messages import Claim, ClaimReply, Done, Event, Message, Request


class Sum(Message):
    sum: int


class Add(Request[Sum]):
    type = "add"
    reply = Sum
    a: int
    b: int


class Fail(Request[Done]):
    type = "fail"


class Slow(Request[Done]):
    type = "slow"


class Teleport(Request[Done]):
    type = "teleport"  # served by neither end


class Digested(Message):
    bytes: int
    sha256: str


class Digest(Request[Digested]):
    type = "digest"
    reply = Digested
    data: str


class Data(Message):
    data: str


class Blob(Request[Data]):
    type = "blob"
    reply = Data
    kib: int


class Registration(Event):
    type = "registration"
    registered: bool


class Note(Event):
    type = "call"
    n: int


class Ringing(Event):
    type = "ringing"


class Audio(Event):
    type = "audio"
    pcm: str


class Pair:
    """A server-side Connection and a client-side Connection on one socket."""

    server: Connection
    client: Connection
    raw_writer: asyncio.StreamWriter
    server_task: asyncio.Future[None]


@pytest.fixture
async def pair(short_tmp: Path) -> AsyncIterator[Pair]:
    result = Pair()
    accepted = asyncio.Event()
    events: list[tuple[str, dict[str, Any]]] = []

    async def add(m: Add) -> Sum:
        return Sum(sum=m.a + m.b)

    async def fail(m: Fail) -> Done:
        raise RuntimeError("no such call w0-9")

    async def digest(m: Digest) -> Digested:
        data = base64.b64decode(m.data)
        return Digested(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())

    async def blob(m: Blob) -> Data:
        return Data(data=base64.b64encode(bytes(range(256)) * m.kib * 4).decode())

    async def slow(m: Slow) -> Done:
        await asyncio.sleep(30)
        return Done()

    def heard(m: Event) -> None:
        events.append((m.type, m.body()))

    def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        result.server = Connection(
            reader,
            writer,
            "worker-0",
            {Add: add, Fail: fail, Digest: digest, Blob: blob, Slow: slow},
            {Registration: heard, Note: heard, Ringing: heard, Audio: heard},
        )
        result.server_task = asyncio.ensure_future(result.server.run())
        accepted.set()

    path = str(short_tmp / "w0.sock")
    server = await asyncio.start_unix_server(on_connect, path)
    reader, writer = await asyncio.open_unix_connection(path)
    result.raw_writer = writer

    async def claim(m: Claim) -> ClaimReply:
        return ClaimReply(granted=m.sip_call_id == "abc")

    result.client = Connection(reader, writer, "supervisor", {Claim: claim, Slow: slow})
    client_task = asyncio.ensure_future(result.client.run())
    await accepted.wait()
    result.server.events = events  # type: ignore[attr-defined]
    yield result
    await result.client.aclose()
    await result.server.aclose()
    client_task.cancel()
    server.close()


async def test_requests_both_ways_and_events(pair: Pair) -> None:
    """Each side can ask the other; events arrive in order without replies."""
    assert await pair.client.request(Add(a=2, b=3)) == Sum(sum=5)
    assert await pair.server.request(Claim(sip_call_id="abc")) == ClaimReply(granted=True)
    await pair.client.event(Registration(registered=True))
    await pair.client.event(Note(n=1))
    await asyncio.sleep(0.05)
    assert pair.server.events == [  # type: ignore[attr-defined]
        ("registration", {"registered": True}),
        ("call", {"n": 1}),
    ]


async def test_errors_and_unknown_types_come_back_as_errors(pair: Pair) -> None:
    """A handler's exception and an unknown request type are answered, not fatal."""
    with pytest.raises(IpcError, match="no such call w0-9"):
        await pair.client.request(Fail())
    with pytest.raises(IpcError, match="unknown request type 'teleport'"):
        await pair.client.request(Teleport())
    assert await pair.client.request(Add(a=1, b=1)) == Sum(sum=2)


async def test_a_reply_too_large_to_send_comes_back_as_an_error_at_once(pair: Pair) -> None:
    """A handler whose reply exceeds MAX_MESSAGE logs ipc.reply_failed and the requester gets
    an error reply within seconds, not its 30 s timeout."""
    kib = MAX_MESSAGE // 768 + 1  # base64 of kib KiB: just over MAX_MESSAGE
    started = time.monotonic()
    with capture_logs() as logs, pytest.raises(IpcError, match="cannot be sent") as raised:
        await pair.client.request(Blob(kib=kib), within=30.0)
    elapsed = time.monotonic() - started
    assert elapsed < 10.0, f"the error reply took {elapsed:.1f} s"
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["ipc.reply_failed"]
    assert f"exceeds {MAX_MESSAGE}" in str(raised.value)
    assert await pair.client.request(Add(a=1, b=1)) == Sum(sum=2)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


async def test_malformed_frames_are_survived(pair: Pair) -> None:
    """Junk, wrong versions and missing fields are counted; a request id still gets an error."""
    writer = pair.raw_writer
    for junk in (
        b"not json",
        b"[1, 2]",
        json.dumps({"v": 2, "kind": "event", "type": "x"}).encode(),
        json.dumps({"v": 1, "kind": "gossip", "type": "x"}).encode(),
        json.dumps({"v": 1, "kind": "request", "type": "add"}).encode(),  # no id
        json.dumps({"v": 1, "kind": "request", "type": "", "id": 99}).encode(),
    ):
        writer.write(_frame(junk))
    await writer.drain()
    assert await pair.client.request(Add(a=4, b=5)) == Sum(sum=9)
    assert pair.server.bad_frames == 6


async def test_oversized_frame_closes_only_that_connection(pair: Pair) -> None:
    """A length beyond MAX_FRAME ends the connection cleanly; waiting requests fail."""
    waiting = asyncio.ensure_future(pair.client.request(Slow(), within=20))
    await asyncio.sleep(0.05)
    pair.raw_writer.write(struct.pack(">I", MAX_FRAME + 1))
    await pair.raw_writer.drain()
    await asyncio.wait_for(pair.server.closed.wait(), 5)
    with pytest.raises(IpcClosed):
        await asyncio.wait_for(waiting, 5)


async def test_peer_vanishing_mid_message(pair: Pair) -> None:
    """Half a frame, then the peer is gone: the reader ends, pending requests fail."""
    waiting = asyncio.ensure_future(pair.server.request(Slow(), within=20))
    await asyncio.sleep(0.05)
    payload = json.dumps({"v": 1, "kind": "event", "type": "call", "body": {}}).encode()
    pair.raw_writer.write(_frame(payload)[:7])
    await pair.raw_writer.drain()
    pair.raw_writer.close()
    await asyncio.wait_for(pair.server.closed.wait(), 5)
    with pytest.raises(IpcClosed):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(IpcClosed):
        await asyncio.wait_for(pair.server.request(Add(a=1, b=2)), 5)


async def test_messages_beyond_one_frame_cross_intact_both_ways(pair: Pair) -> None:
    """A 6 MB request and a 4 MB response (minutes of PCM) cross whole, in bounded frames."""
    data = os.urandom(6_000_000)
    reply = await pair.client.request(Digest(data=base64.b64encode(data).decode()))
    assert reply == Digested(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    big = await pair.client.request(Blob(kib=4000))
    assert base64.b64decode(big.data) == bytes(range(256)) * 4000 * 4


async def test_a_long_request_cancelled_mid_send_leaves_the_stream_whole(pair: Pair) -> None:
    """A 6 MB request cancelled while its pieces are being written is still sent whole, so
    the next long request reaches the peer intact and is answered."""
    data = os.urandom(6_000_000)
    first = asyncio.ensure_future(pair.client.request(Digest(data=base64.b64encode(data).decode())))
    await asyncio.sleep(0)  # the first pieces are out, the socket's buffer is full
    first.cancel()
    second = os.urandom(1_000_000)
    body = Digest(data=base64.b64encode(second).decode())
    reply = await pair.client.request(body, within=5)
    assert reply == Digested(bytes=len(second), sha256=hashlib.sha256(second).hexdigest())
    assert first.cancelled()


def test_a_long_message_is_cut_into_bounded_pieces() -> None:
    """Every frame of a long message stays within PIECE_BYTES; the pieces rejoin to the JSON."""
    envelope = Envelope(v=1, kind="event", type="audio", body={"pcm": "A" * 6_000_000})
    frames = encode(envelope)
    words = [struct.unpack(">I", f[:4])[0] for f in frames]
    kinds = [word >> 30 for word in words]
    assert kinds == [FrameKind.PIECE] * (len(frames) - 1) + [FrameKind.LAST_PIECE]
    assert all(
        word & (1 << 30) - 1 == len(f) - 4 <= PIECE_BYTES
        for word, f in zip(words, frames, strict=True)
    )
    assert PIECE_BYTES <= MAX_FRAME < min(words)  # to a whole-frame-only reader: oversized
    assert b"".join(f[4:] for f in frames) == envelope.model_dump_json(exclude_none=True).encode()
    small = encode(Envelope(v=1, kind="event", type="ringing"))
    assert small == [_frame(b'{"v":1,"kind":"event","type":"ringing","body":{}}')]  # kind 0
    print(f"{len(frames)} frames of <= {PIECE_BYTES} bytes for a 6 MB body")


async def test_whole_frames_pass_between_the_pieces_of_a_message(pair: Pair) -> None:
    """An event sent while a long message is in transit is dispatched at once, not after it."""
    frames = encode(Envelope(v=1, kind="event", type="audio", body={"pcm": "A" * 600_000}))
    assert [f[0] >> 6 for f in frames] == [FrameKind.PIECE, FrameKind.PIECE, FrameKind.LAST_PIECE]
    small = _frame(json.dumps({"v": 1, "kind": "event", "type": "ringing"}).encode())
    pair.raw_writer.write(frames[0] + small + frames[1] + frames[2])
    await pair.raw_writer.drain()
    events = pair.server.events  # type: ignore[attr-defined]
    async with asyncio.timeout(5):
        while len(events) < 2:
            await asyncio.sleep(0.01)
    assert [t for t, _ in events] == ["ringing", "audio"]
    assert events[1][1] == {"pcm": "A" * 600_000}


def test_a_message_beyond_the_limit_is_refused_and_dropped() -> None:
    """The sender refuses a message over MAX_MESSAGE; a receiver drops one and reads on."""
    with pytest.raises(ValueError, match=f"exceeds {MAX_MESSAGE}"):
        encode(Envelope(v=1, kind="event", type="x", body={"pcm": "A" * MAX_MESSAGE}))
    reassembly = Reassembly()
    piece = b"A" * MAX_FRAME
    for _ in range(MAX_MESSAGE // MAX_FRAME):
        assert reassembly.add(FrameKind.PIECE, piece) is None
    with pytest.raises(ValueError, match="beyond"):
        reassembly.add(FrameKind.PIECE, piece)
    assert reassembly.add(FrameKind.PIECE, piece) is None  # the rest of it is skipped
    assert reassembly.add(FrameKind.LAST_PIECE, piece) is None
    assert reassembly.add(FrameKind.WHOLE, b"{}") == b"{}"
    assert reassembly.add(FrameKind.PIECE, b"{") is None
    assert reassembly.add(FrameKind.LAST_PIECE, b"}") == b"{}"
    with pytest.raises(ValueError, match="unknown frame kind 7"):
        reassembly.add(7, b"")
