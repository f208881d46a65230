"""A real WebSocket server in the test process speaking the OpenAI Realtime protocol.

Every client event it receives is checked with the official ``openai`` package's typed models
for the dialect in use (``violations`` lists what failed), and every event it sends is checked
the same way before it goes out. Per connection it answers ``session.update`` with
``session.updated`` (the session as asked, or with ``session_override`` applied), records the
caller audio it receives (decoded to 8 kHz PCM, with the input-buffer timeline), answers
``conversation.item.truncate``, and then runs the test's ``script`` coroutine, which speaks,
calls tools, sends speech events or drops the socket. With ``refuse`` set it answers every
handshake with that HTTP status instead (a model that cannot be reached), counting them.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
from numpy.typing import NDArray
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from media import g711
from media.resample import Resampler
from tests.realtime_oracle import check_client_event, check_server_event

Script = Callable[["FakeSession"], Awaitable[None]]
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids)}"


# The error event a rate-limited model sends (the agent ends the call politely on it).
RATE_LIMITED: dict[str, Any] = {
    "type": "error",
    "error": {
        "type": "rate_limit_error",
        "code": "rate_limit_exceeded",
        "message": "Too many requests.",
    },
}


@dataclass
class Received:
    at: float  # time.monotonic() on arrival
    event: dict[str, Any]


@dataclass
class FakeSession:
    server: FakeRealtime
    ws: ServerConnection
    path: str
    headers: dict[str, str]
    dialect: str
    events: list[Received] = field(default_factory=list)
    session: dict[str, Any] = field(default_factory=dict)  # as last updated
    audio: list[NDArray[np.int16]] = field(default_factory=list)  # caller audio, 8 kHz
    cancels: int = 0

    def __post_init__(self) -> None:
        self.changed = asyncio.Condition()
        self.updated = asyncio.Event()
        self._to_8k: Resampler | None = None
        self._cancelled = asyncio.Event()

    # -- what the client sent ------------------------------------------------------------

    @property
    def input_pcm(self) -> NDArray[np.int16]:
        """All caller audio received so far, as 8 kHz PCM."""
        return np.concatenate(self.audio) if self.audio else np.zeros(0, dtype=np.int16)

    @property
    def input_ms(self) -> int:
        return len(self.input_pcm) // 8

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r.event for r in self.events if r.event.get("type") == kind]

    async def wait_for(
        self, kind: str, timeout: float = 10.0, where: Callable[[dict[str, Any]], bool] = bool
    ) -> Received:
        async with asyncio.timeout(timeout), self.changed:
            while True:
                for received in self.events:
                    if received.event.get("type") == kind and where(received.event):
                        return received
                await self.changed.wait()

    async def wait_for_input(
        self, predicate: Callable[[NDArray[np.int16]], bool], timeout: float
    ) -> None:
        async with asyncio.timeout(timeout), self.changed:
            while not predicate(self.input_pcm):
                await self.changed.wait()

    async def _received(self, event: dict[str, Any]) -> None:
        try:
            check_client_event(event, self.dialect)
        except Exception as exc:
            self.server.violations.append(f"{event.get('type')}: {exc}")
        kind = event.get("type")
        if kind == "session.update":
            requested = dict(event.get("session") or {})
            self.session = {**requested, **self.server.session_override}
            await self.send({"type": "session.updated", "session": self.session})
            self.updated.set()
        elif kind == "input_audio_buffer.append":
            self._append(base64.b64decode(event["audio"]))
        elif kind == "response.cancel":
            self.cancels += 1
            self._cancelled.set()
        elif kind == "conversation.item.truncate":
            await self.send(
                {
                    "type": "conversation.item.truncated",
                    "item_id": event["item_id"],
                    "content_index": event["content_index"],
                    "audio_end_ms": event["audio_end_ms"],
                }
            )
        async with self.changed:
            self.events.append(Received(time.monotonic(), event))
            self.changed.notify_all()

    def _append(self, data: bytes) -> None:
        formats = self.session.get("audio", {}).get("input", {}).get("format", {})
        pcm24 = (
            self.session.get("input_audio_format") == "pcm16" or formats.get("type") == "audio/pcm"
        )
        if pcm24:
            if self._to_8k is None:
                self._to_8k = Resampler(24000, 8000)
            samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
            self.audio.append(self._to_8k.process(samples))
        else:
            self.audio.append(g711.ulaw_decode(data))

    # -- what the server says ------------------------------------------------------------

    async def send(self, event: dict[str, Any]) -> None:
        event = {"event_id": _id("event"), **event}
        check_server_event(event, self.dialect)  # the fake itself must speak the protocol
        await self.ws.send(json.dumps(event))

    @property
    def output_rate(self) -> int:
        if self.dialect == "beta":
            return 24000 if self.session.get("output_audio_format") == "pcm16" else 8000
        fmt = self.session.get("audio", {}).get("output", {}).get("format", {})
        return 24000 if fmt.get("type") == "audio/pcm" else 8000

    def _encode(self, pcm: NDArray[np.int16]) -> bytes:
        if self.output_rate == 24000:
            return pcm.astype("<i2").tobytes()
        return g711.ulaw_encode(pcm).tobytes()

    async def respond(
        self,
        pcm: NDArray[np.int16],
        transcript: str = "",
        chunk_ms: int = 100,
        pace: float = 0.0,
    ) -> tuple[str, str, bool]:
        """Speak ``pcm`` (at :attr:`output_rate`) as one response; (response, item, cancelled).

        ``pace`` > 0 sends each chunk that many chunk-durations apart (1.0 = real time); 0
        sends everything at once. A ``response.cancel`` from the client stops it.
        """
        beta = self.dialect == "beta"
        response_id, item_id = _id("resp"), _id("item")
        self._cancelled.clear()
        base = {"response_id": response_id, "item_id": item_id, "output_index": 0}
        await self.send(
            {
                "type": "response.created",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "in_progress",
                    "output": [],
                },
            }
        )
        step = self.output_rate * chunk_ms // 1000
        cancelled = False
        for offset in range(0, len(pcm), step):
            if self._cancelled.is_set():
                cancelled = True
                break
            delta = base64.b64encode(self._encode(pcm[offset : offset + step])).decode()
            kind = "response.audio.delta" if beta else "response.output_audio.delta"
            await self.send({"type": kind, **base, "content_index": 0, "delta": delta})
            await asyncio.sleep(pace * chunk_ms / 1000)
        if not cancelled:
            done = "response.audio.done" if beta else "response.output_audio.done"
            await self.send({"type": done, **base, "content_index": 0})
            if transcript:
                kind = (
                    "response.audio_transcript.done"
                    if beta
                    else "response.output_audio_transcript.done"
                )
                await self.send(
                    {**base, "type": kind, "content_index": 0, "transcript": transcript}
                )
        status: dict[str, Any] = {"status": "cancelled" if cancelled else "completed"}
        if cancelled:
            status["status_details"] = {"type": "cancelled", "reason": "client_cancelled"}
        await self.send(
            {
                "type": "response.done",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "output": [],
                    **status,
                },
            }
        )
        return response_id, item_id, cancelled

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> str:
        """A response that calls tool ``name``; returns the call_id."""
        response_id, call_id = _id("resp"), _id("call")
        await self.send(
            {
                "type": "response.created",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "in_progress",
                    "output": [],
                },
            }
        )
        item = {
            "id": _id("item"),
            "type": "function_call",
            "call_id": call_id,
            "name": name,
            "arguments": json.dumps(arguments),
            "status": "completed",
            "object": "realtime.item",
        }
        await self.send(
            {
                "type": "response.output_item.done",
                "response_id": response_id,
                "output_index": 0,
                "item": item,
            }
        )
        await self.send(
            {
                "type": "response.done",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "completed",
                    "output": [],
                },
            }
        )
        return call_id

    async def caller_said(self, text: str) -> None:
        """The transcription of a caller turn, as input transcription reports it."""
        await self.send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": _id("item"),
                "content_index": 0,
                "transcript": text,
                "usage": {"type": "duration", "seconds": 1},
            }
        )

    def drop(self) -> None:
        """Cut the TCP connection without a close frame: the client sees 1006."""
        self.ws.transport.abort()

    async def speech_started(self, audio_start_ms: int) -> float:
        """Send ``input_audio_buffer.speech_started``; returns when it was sent."""
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": audio_start_ms,
                "item_id": _id("item"),
            }
        )
        return time.monotonic()


class FakeRealtime:
    def __init__(
        self,
        dialect: str = "ga",
        script: Script | None = None,
        session_override: dict[str, Any] | None = None,
    ) -> None:
        self.dialect = dialect
        self.script = script
        self.session_override = session_override or {}
        self.sessions: list[FakeSession] = []
        self.violations: list[str] = []
        self.errors: list[str] = []
        self.refuse: int | None = None  # an HTTP status for every handshake, instead of a session
        self.refused = 0
        self._server: Any = None
        self.url = ""

    async def __aenter__(self) -> FakeRealtime:
        self._server = await websockets.serve(
            self._handle, "127.0.0.1", 0, process_request=self._process_request
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v1/realtime"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def session(self, index: int = 0, timeout: float = 20.0) -> FakeSession:
        async with asyncio.timeout(timeout):
            while len(self.sessions) <= index:
                await asyncio.sleep(0.02)
        return self.sessions[index]

    def _process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        if self.refuse is None:
            return None
        self.refused += 1
        return ws.respond(self.refuse, "refused by the test\n")

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        session = FakeSession(
            self,
            ws,
            request.path,
            {k.lower(): v for k, v in request.headers.raw_items()},
            self.dialect,
        )
        self.sessions.append(session)
        created: dict[str, Any] = (
            {"type": "realtime"} if self.dialect == "ga" else {"id": _id("sess")}
        )
        await session.send({"type": "session.created", "session": created})
        script_task: asyncio.Task[None] | None = None
        try:
            async for message in ws:
                await session._received(json.loads(message))
                if session.updated.is_set() and script_task is None and self.script is not None:
                    script_task = asyncio.create_task(self._run_script(session))
        except websockets.ConnectionClosed:
            pass
        finally:
            if script_task is not None:
                script_task.cancel()

    async def _run_script(self, session: FakeSession) -> None:
        assert self.script is not None
        try:
            await self.script(session)
        except (asyncio.CancelledError, websockets.ConnectionClosed):
            pass
        except Exception as exc:  # surfaced by the test through ``errors``
            self.errors.append(repr(exc))
