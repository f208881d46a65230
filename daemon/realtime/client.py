"""One realtime model session over a WebSocket: connect, configure, check, send, receive.

:meth:`RealtimeSession.open` connects (bounded), waits for ``session.created``, sends the
``session.update`` built by the dialect and waits for the ``session.updated`` that answers
it. The session must echo the input format asked for (a model told ``pcm16`` while receiving
mu-law hears noise, and its VAD fails silently): a different input format, or missing tools,
is a :class:`SessionMismatch`. A different *output* format is accepted and reported: some
models send PCM whatever was asked, and the caller's decoder follows the session.

Failures are classified (:class:`FailureKind`, the ``kind`` of :class:`RealtimeError`) so the
call flow can tell a refused key from a rate limit from a dropped socket;
:func:`server_failure` says which ``error`` events lose the session.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from daemon.logs import get_logger
from daemon.realtime import events as ev
from daemon.realtime.dialect import Dialect, Json, SessionConfig

log = get_logger(__name__)

# Close codes worth a reconnect: abnormal closure (no close frame) and server error.
RETRYABLE_CLOSE = frozenset({1006, 1011, 1012, 1013})


class FailureKind(StrEnum):
    """Why a realtime session failed; the values are what logs and call records show."""

    AUTH = "auth"  # the key was refused (HTTP 401/403)
    RATE_LIMIT = "rate_limit"  # HTTP 429 or a rate_limit error event
    CONNECT = "connect"  # no connection (refused, DNS, handshake)
    TIMEOUT = "timeout"  # no session within the bound
    CLOSED = "closed"  # the socket closed; the close code tells whether it passes
    PROTOCOL = "protocol"  # the server said something unreadable or refused the session
    MISMATCH = "mismatch"  # the session is not the one asked for

    def retryable(self, code: int = 0) -> bool:
        """Whether a new session may fix it: connect and timeout always, a close only with a
        code of :data:`RETRYABLE_CLOSE`, nothing else."""
        if self is FailureKind.CLOSED:
            return code in RETRYABLE_CLOSE
        return self in (FailureKind.CONNECT, FailureKind.TIMEOUT)


class RealtimeError(Exception):
    def __init__(self, kind: FailureKind | str, message: str, code: int = 0) -> None:
        super().__init__(message)
        self.kind = FailureKind(kind)  # a value ("closed") names its kind too
        self.code = code

    @property
    def retryable(self) -> bool:
        return self.kind.retryable(self.code)


class SessionMismatch(RealtimeError):
    def __init__(self, message: str) -> None:
        super().__init__(FailureKind.MISMATCH, message)


_HTTP_FAILURES = {401: FailureKind.AUTH, 403: FailureKind.AUTH, 429: FailureKind.RATE_LIMIT}


def server_failure(event: ev.ServerError) -> RealtimeError | None:
    """What an ``error`` event means for the session: a ``server_error`` loses it as a 1011
    close would (retryable), a rate limit ends it; None for an error about one request."""
    if event.type == "server_error":
        return RealtimeError(FailureKind.CLOSED, f"server_error: {event.message}", 1011)
    if "rate_limit" in event.code:
        return RealtimeError(FailureKind.RATE_LIMIT, f"{event.code}: {event.message}")
    return None


@dataclass(frozen=True)
class Endpoint:
    url: str
    headers: dict[str, str] = field(repr=False)
    dialect: Dialect

    @property
    def safe_url(self) -> str:
        """The URL for logs (no query secrets are ever put in it, but be explicit)."""
        return self.url


class RealtimeSession:
    def __init__(self, endpoint: Endpoint, config: SessionConfig) -> None:
        self.endpoint = endpoint
        self.dialect = endpoint.dialect
        self.config = config
        self.reported: ev.SessionReported | None = None
        self._ws: ClientConnection | None = None

    async def open(self, within: float) -> ev.SessionReported:
        """Connect and configure within ``within`` seconds; the session as the server has it."""
        try:
            async with asyncio.timeout(within):
                return await self._open()
        except TimeoutError:
            await self.close()
            raise RealtimeError(
                FailureKind.TIMEOUT, f"{self.endpoint.safe_url}: no session within {within:g} s"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def _open(self) -> ev.SessionReported:
        try:
            self._ws = await websockets.connect(
                self.endpoint.url,
                additional_headers=self.endpoint.headers,
                max_size=16 * 1024 * 1024,
                open_timeout=None,  # bounded by the caller's timeout
                ping_interval=20,
                ping_timeout=20,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            kind = _HTTP_FAILURES.get(status, FailureKind.CONNECT)
            raise RealtimeError(
                kind, f"{self.endpoint.safe_url}: HTTP {status} on connect", status
            ) from None
        except (OSError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            raise RealtimeError(FailureKind.CONNECT, f"{self.endpoint.safe_url}: {exc}") from None
        created = await self._expect_session(created=True)
        await self.send(self.dialect.session_update(self.config))
        updated = await self._expect_session(created=False)
        self._check(updated)
        self.reported = updated
        log.debug("realtime.session", url=self.endpoint.safe_url, created=created.created)
        return updated

    async def _expect_session(self, created: bool) -> ev.SessionReported:
        while True:
            event = await self.receive()
            if isinstance(event, ev.SessionReported) and event.created == created:
                return event
            if isinstance(event, ev.ServerError):
                raise RealtimeError(
                    FailureKind.PROTOCOL,
                    f"session {'start' if created else 'update'} refused: "
                    f"{event.code or event.type}: {event.message}",
                )

    def _check(self, reported: ev.SessionReported) -> None:
        asked = self.config
        if reported.input_format != asked.input_format:
            raise SessionMismatch(
                f"the session's input format is {reported.input_format}, "
                f"asked for {asked.input_format}"
            )
        missing = {t.name for t in asked.tools} - set(reported.tools)
        if missing:
            raise SessionMismatch(f"the session lacks the tools {sorted(missing)}")
        if reported.output_format is None:
            raise SessionMismatch("the session reports no output audio format")
        if reported.output_format != asked.output_format:
            log.warning(
                "realtime.output_format_differs",
                asked=str(asked.output_format),
                reported=str(reported.output_format),
            )

    async def send(self, event: Json) -> None:
        ws = self._ws
        if ws is None:
            raise RealtimeError(FailureKind.CLOSED, "the realtime session is not open")
        try:
            await ws.send(json.dumps(event, separators=(",", ":")))
        except ConnectionClosed as exc:
            raise _closed(exc) from None

    async def receive(self) -> ev.ModelEvent:
        ws = self._ws
        if ws is None:
            raise RealtimeError(FailureKind.CLOSED, "the realtime session is not open")
        try:
            message = await ws.recv()
        except ConnectionClosed as exc:
            raise _closed(exc) from None
        try:
            raw: Any = json.loads(message)
        except ValueError:
            raise RealtimeError(FailureKind.PROTOCOL, "a server message is not JSON") from None
        if not isinstance(raw, dict):
            raise RealtimeError(FailureKind.PROTOCOL, "a server message is not a JSON object")
        try:
            return self.dialect.parse(raw)
        except (KeyError, TypeError, ValueError) as exc:
            raise RealtimeError(
                FailureKind.PROTOCOL, f"malformed {raw.get('type')!r} event: {exc!r}"
            ) from None

    async def close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()


def _closed(exc: ConnectionClosed) -> RealtimeError:
    frame = exc.rcvd or exc.sent
    code = frame.code if frame is not None else 1006
    reason = frame.reason if frame is not None else "no close frame"
    message = f"the realtime socket closed: {code} {reason}".strip()
    return RealtimeError(FailureKind.CLOSED, message, code)
