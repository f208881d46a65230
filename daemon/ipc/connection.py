"""The supervisor <-> SIP worker protocol, over one Unix stream socket per worker.

Each message is an envelope of UTF-8 JSON::

    {"v": 1, "kind": "request" | "response" | "event", "type": "...", "id": 7, "body": {...}}

It travels in frames: a 4-byte big-endian word (the frame kind in its top two bits, the
payload length below them), then at most ``MAX_FRAME`` bytes of payload. A message that fits
one frame goes as a ``WHOLE`` frame, whose word is just the length; a longer one (an outbound
call's audio, a synthesised reply, a caller's utterance: minutes of PCM) is cut into ``PIECE``
frames of ``PIECE_BYTES`` ended by a ``LAST_PIECE``, up to ``MAX_MESSAGE`` bytes in all (a
reader that knows only whole frames takes a piece for an oversized frame and closes cleanly).
A sender writes one multi-frame message at a time, so pieces need no id; whole frames may come
between them, so a claim or a call event is never queued behind minutes of audio.

Either side may send requests (the supervisor: ``outbound``, ``ping``...; a worker:
``claim``...); each gets exactly one response with the same ``id``, whose body is the result or
``{"error": "..."}``. Events have no id and get no response. Bodies are the typed messages of
:mod:`daemon.ipc.messages`: each end serves the requests and events of its own handler table
(message class -> handler), validating a body against its class before the handler sees it.

Robustness: a frame that is too long ends the connection (the stream cannot be resynchronised);
a message beyond ``MAX_MESSAGE`` is dropped and counted; a message that is not JSON or not a
valid envelope is answered (when it has an id) or logged, and never crashes the reader; a
request of an unknown type gets an error response ("unknown request type 'x'"), one whose body
does not fit its message an "invalid x: field: reason" response and an ``ipc.bad_body``
warning (an event: the warning only); a handler's exception goes back as an error response
(an event handler's is logged); a peer that goes away fails every request still waiting with
:class:`IpcClosed`. Writes wait for the socket (``drain``), so a slow reader
slows the writer instead of growing its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import struct
from collections.abc import Awaitable, Callable, Mapping
from enum import IntEnum
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from daemon.ipc.messages import Event, Message, Request, first_error
from daemon.logs import get_logger

log = get_logger(__name__)

VERSION = 1
MAX_FRAME = 1 << 20  # payload bytes of one frame: a guard against a corrupt length
PIECE_BYTES = 256 << 10  # payload bytes of each piece of a multi-frame message
MAX_MESSAGE = 64 << 20  # bytes of one message (5,000 characters of speech at 16 kHz: ~15 MiB)
_HEADER = struct.Struct(">I")  # FrameKind << _KIND_SHIFT | payload length
_KIND_SHIFT = 30
_LENGTH_MASK = (1 << _KIND_SHIFT) - 1


class FrameKind(IntEnum):
    WHOLE = 0  # a message in one frame
    PIECE = 1  # part of a message; more pieces follow
    LAST_PIECE = 2  # the end of a message cut into pieces


Body = dict[str, Any]
ReplyT = TypeVar("ReplyT", bound=Message)
# What one end serves: a request's class -> its handler (the reply), an event's -> its handler.
RequestHandlers = Mapping[type[Request[Any]], Callable[[Any], Awaitable[Message]]]
EventHandlers = Mapping[type[Event], Callable[[Any], None]]


class IpcError(Exception):
    """The peer answered a request with an error."""


class IpcClosed(IpcError):
    """The connection is gone (the peer exited, crashed or closed it)."""


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")

    v: Literal[1]
    kind: Literal["request", "response", "event"]
    type: str = Field(min_length=1, max_length=64)
    id: int | None = None
    body: Body = Field(default_factory=dict)


def encode(envelope: Envelope) -> list[bytes]:
    """The frames that carry ``envelope``: one, or pieces of ``PIECE_BYTES`` when it is longer."""
    payload = envelope.model_dump_json(exclude_none=True).encode()
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"IPC message of {len(payload)} bytes exceeds {MAX_MESSAGE}")
    if len(payload) <= PIECE_BYTES:
        return [_header(FrameKind.WHOLE, len(payload)) + payload]
    frames = []
    for start in range(0, len(payload), PIECE_BYTES):
        piece = payload[start : start + PIECE_BYTES]
        last = start + PIECE_BYTES >= len(payload)
        kind = FrameKind.LAST_PIECE if last else FrameKind.PIECE
        frames.append(_header(kind, len(piece)) + piece)
    return frames


def _header(kind: FrameKind, length: int) -> bytes:
    return _HEADER.pack(kind << _KIND_SHIFT | length)


class Reassembly:
    """Joins the pieces of the message in transit; whole frames pass through (pure, no I/O)."""

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self._size = 0
        self._dropping = False  # the message in transit grew beyond MAX_MESSAGE

    def add(self, kind: int, payload: bytes) -> bytes | None:
        """The complete message this frame ends, if any; ValueError for a frame to count as bad
        (an unknown kind, or the piece that takes a message beyond ``MAX_MESSAGE``)."""
        if kind == FrameKind.WHOLE:
            return payload
        if kind not in (FrameKind.PIECE, FrameKind.LAST_PIECE):
            raise ValueError(f"unknown frame kind {kind}")
        last = kind == FrameKind.LAST_PIECE
        if self._dropping:
            self._dropping = not last
            return None
        self._size += len(payload)
        if self._size > MAX_MESSAGE:
            self._pieces, self._size, self._dropping = [], 0, not last
            raise ValueError(f"IPC message beyond {MAX_MESSAGE} bytes")
        self._pieces.append(payload)
        if not last:
            return None
        message = b"".join(self._pieces)
        self._pieces, self._size = [], 0
        return message


class Connection:
    """One end of the protocol over an asyncio stream pair; ``run()`` reads until EOF."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        name: str,
        requests: RequestHandlers | None = None,
        events: EventHandlers | None = None,
    ) -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self._serves = {cls.type: (cls, handler) for cls, handler in (requests or {}).items()}
        self._hears = {cls.type: (cls, handler) for cls, handler in (events or {}).items()}
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Body]] = {}
        self._write_lock = asyncio.Lock()  # one frame at a time on the socket
        self._pieces_lock = asyncio.Lock()  # one multi-frame message at a time
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = asyncio.Event()
        self.bad_frames = 0

    async def request(self, message: Request[ReplyT], within: float = 10.0) -> ReplyT:
        """Send a request and return its reply; raise IpcError/IpcClosed/TimeoutError."""
        type_ = message.type
        if self.closed.is_set():
            raise IpcClosed(f"{self.name}: connection closed")
        request_id = next(self._ids)
        future: asyncio.Future[Body] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = future
        try:
            envelope = Envelope(v=1, kind="request", type=type_, id=request_id, body=message.body())
            await self._send(envelope)
            async with asyncio.timeout(within):
                result = await future
        finally:
            self._pending.pop(request_id, None)
        if "error" in result:
            raise IpcError(f"{self.name}: {type_}: {result['error']}")
        try:
            return cast(ReplyT, await _validate(message.reply, result, self._big(result)))
        except ValidationError as exc:
            raise IpcError(f"{self.name}: {type_}: invalid reply: {first_error(exc)}") from None

    async def event(self, message: Event) -> None:
        await self._send(Envelope(v=1, kind="event", type=message.type, body=message.body()))

    async def _send(self, envelope: Envelope) -> None:
        frames = encode(envelope)
        if len(frames) == 1:
            await self._write(frames[0])
            return
        # Once begun, a message is sent whole even if its sender is cancelled: cut between
        # its pieces, the peer would glue the next long message onto it.
        task = asyncio.ensure_future(self._write_pieces(frames))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        await asyncio.shield(task)

    async def _write_pieces(self, frames: list[bytes]) -> None:
        async with self._pieces_lock:
            for frame in frames:  # other messages' whole frames may go between these
                await self._write(frame)

    async def _write(self, frame: bytes) -> None:
        async with self._write_lock:
            if self.closed.is_set():
                raise IpcClosed(f"{self.name}: connection closed")
            try:
                self._writer.write(frame)
                await self._writer.drain()
            except (ConnectionError, RuntimeError) as exc:
                self._close()
                raise IpcClosed(f"{self.name}: {exc}") from None

    async def run(self) -> None:
        """Read and dispatch frames until the peer closes or the stream breaks."""
        reassembly = Reassembly()
        try:
            while True:
                header = await self._reader.readexactly(_HEADER.size)
                (word,) = _HEADER.unpack(header)
                kind, length = word >> _KIND_SHIFT, word & _LENGTH_MASK
                if length > MAX_FRAME:
                    log.error("ipc.frame_too_long", peer=self.name, length=length)
                    break  # the stream cannot be resynchronised
                payload = await self._reader.readexactly(length)
                try:
                    message = reassembly.add(kind, payload)
                except ValueError as exc:
                    self.bad_frames += 1
                    log.warning("ipc.bad_frame", peer=self.name, error=str(exc))
                    continue
                if message is not None:
                    self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the peer closed or vanished (mid-frame too): end of this connection
        finally:
            self._close()

    def _dispatch(self, payload: bytes) -> None:
        try:
            envelope = Envelope.model_validate_json(payload)
        except ValidationError as exc:
            self.bad_frames += 1
            log.warning("ipc.bad_frame", peer=self.name, error=first_error(exc))
            request_id = _request_id(payload)
            if request_id is not None:
                self._spawn(self._respond(request_id, "invalid", {"error": "invalid frame"}))
            return
        if envelope.kind == "response":
            future = self._pending.get(envelope.id or 0)
            if future is not None and not future.done():
                future.set_result(envelope.body)
        elif envelope.kind == "event":
            self._hear(envelope.type, envelope.body)
        elif envelope.id is None:
            self.bad_frames += 1
            log.warning("ipc.bad_frame", peer=self.name, error="request without id")
        else:
            big = len(payload) > PIECE_BYTES
            self._spawn(self._serve(envelope.id, envelope.type, envelope.body, big))

    def _hear(self, type_: str, body: Body) -> None:
        known = self._hears.get(type_)
        if known is None:
            log.warning("ipc.unknown_event", peer=self.name, type=type_)
            return
        cls, handler = known
        try:
            message = cls.model_validate(body)
        except ValidationError as exc:
            log.warning("ipc.bad_body", peer=self.name, type=type_, error=first_error(exc))
            return
        try:
            handler(message)
        except Exception as exc:
            log.error("ipc.event_failed", peer=self.name, type=type_, error=repr(exc))

    async def _serve(self, request_id: int, type_: str, body: Body, big: bool) -> None:
        known = self._serves.get(type_)
        if known is None:
            await self._respond(request_id, type_, {"error": f"unknown request type {type_!r}"})
            return
        cls, handler = known
        try:
            message = await _validate(cls, body, big)
        except ValidationError as exc:
            problem = first_error(exc)
            log.warning("ipc.bad_body", peer=self.name, type=type_, error=problem)
            await self._respond(request_id, type_, {"error": f"invalid {type_}: {problem}"})
            return
        try:
            result = (await handler(message)).body()
        except Exception as exc:  # the error goes back to the requester, and to the log
            log.warning("ipc.request_failed", peer=self.name, type=type_, error=repr(exc))
            result = {"error": str(exc) or repr(exc)}
        await self._respond(request_id, type_, result)

    @staticmethod
    def _big(body: Body) -> bool:
        """A reply worth validating off the loop (audio): one with a long string in it."""
        return any(isinstance(v, str) and len(v) > PIECE_BYTES for v in body.values())

    async def _respond(self, request_id: int, type_: str, body: Body) -> None:
        with contextlib.suppress(IpcClosed):
            try:
                await self._send(
                    Envelope(v=1, kind="response", type=type_, id=request_id, body=body)
                )
            except ValueError as exc:  # too large to encode: the requester must not wait it out
                log.error("ipc.reply_failed", peer=self.name, type=type_, error=str(exc))
                error = {"error": f"the {type_} reply cannot be sent: {exc}"}
                await self._send(
                    Envelope(v=1, kind="response", type=type_, id=request_id, body=error)
                )

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(IpcClosed(f"{self.name}: connection closed"))
        self._writer.close()

    async def aclose(self) -> None:
        self._close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()
        for task in list(self._tasks):
            task.cancel()


async def _validate(cls: type[Message], body: Body, big: bool) -> Message:
    """``body`` as a ``cls``; a message of minutes of audio is decoded off the event loop, so
    the calls the process holds meanwhile keep their media flowing."""
    if big:
        return await asyncio.to_thread(cls.model_validate, body)
    return cls.model_validate(body)


def _request_id(payload: bytes) -> int | None:
    """The id of a malformed request, if one can be read, so it can still be answered."""
    try:
        data = json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and data.get("kind") == "request" and isinstance(data.get("id"), int):
        return int(data["id"])
    return None
