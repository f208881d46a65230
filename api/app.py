"""The Starlette application: the REST contract plus our additions.

Routes: ``GET /health`` (never authenticated; ``?strict=1`` answers 503 when unhealthy),
``POST /call``, ``GET /call/{call_id}`` (outbound and inbound ids alike),
``GET /call/{call_id}/recording``, ``GET /calls``, ``GET /metrics``, ``GET /openapi.json`` and
the WebSocket ``/v1/realtime``; the web console's (:mod:`api.console_routes`) and the
realtime WebRTC routes (:mod:`api.realtime_calls`). With tokens set (``api.token``,
``api.tokens``), every route but ``/health`` (and the console's login page and files) needs
``Authorization: Bearer <token>`` (the WebSocket also takes ``api-key``) or the session
cookie of a console login; with the cookie, every unsafe method (POST, DELETE...) also needs
the session's ``X-CSRF-Token``, which a page of another origin cannot know. Each request is
logged (``api.request``) with the name of the token it used (a session's: the token it was
opened with), never the token. With no token set, the JSON API is open as before, but the
console's routes and ``/web/calls`` answer clients on this machine only. Every rejected
request gets a JSON body with ``detail``, a refused WebSocket handshake too (an HTTP
response, not a close); invalid bodies get 400 naming the field, never 422, and nothing is
stored for them. ``POST /call`` takes an ``Idempotency-Key`` header: a key already used by
the same caller within 24 h replays the first response (``Idempotent-Replayed: true``, no
second call) for the same body, and gets 422 for another.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from stat import S_ISREG
from typing import Any, Literal, Protocol

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.datastructures import Address
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import (
    FileResponse,
    JSONResponse,
    MalformedRangeHeader,
    PlainTextResponse,
    RangeNotSatisfiable,
    Response,
)
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from api.auth import ApiTokens, offered_token
from api.console_auth import SESSION_COOKIE, ConsoleSession, ConsoleSessions
from api.console_routes import (
    FOREIGN_ORIGIN,
    LOOPBACK_ONLY,
    ConsoleRoutes,
    foreign_origin,
    is_local,
)
from api.models import (
    IDEMPOTENCY_HEADER,
    OutboundCallRequest,
    describe,
    idempotency_key,
    parse_request,
)
from api.realtime_calls import RealtimeCalls, RealtimeSocket, realtime_credential
from daemon.call_feed import CallFeed
from daemon.inbound_records import inbound_view, recording_view
from daemon.logs import get_logger
from daemon.outbound import OutboundService, OutboundUnavailable, QueueFull
from daemon.ratelimit import RateLimiter
from daemon.store import (
    FINAL_STATUSES,
    DuplicateCallId,
    IdempotencyClaim,
    IdempotencyRecord,
    IdempotentReplay,
    Store,
)

log = get_logger(__name__)

SEQ_MAX = 2**63 - 1  # record numbers are SQLite INTEGERs
_INTEGER = re.compile(r"-?[0-9]{1,20}")
STRICT_VALUES = ("0", "1", "true", "false")

RESULT_FIELDS = (
    "duration_seconds",
    "message_played",
    "choice_response",
    "choice_raw_text",
    "error",
)
# beyond the contract: in the stored result only when the request had machine_detection
DETECTION_FIELDS = ("answered_by", "machine_detection_ms")


@dataclass(frozen=True)
class HealthReport:
    status: Literal["healthy", "unhealthy"]
    sip_registered: bool
    version: str
    uptime_seconds: float
    active_calls: int
    queued_calls: int
    workers: list[dict[str, Any]]  # per SIP worker: up, registered, calls, restarts...
    registration_error: str | None = None  # why not registered, once an attempt failed
    web: dict[str, Any] | None = None  # the browser calls' workers: up, calls, restarts; None: off


class WebCallRefused(Exception):
    """A browser's offer the web workers will not answer: ``status`` 400 or 503, ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class WebCalls(Protocol):
    """Browser calls, held by the web workers (``daemon.web``)."""

    async def offer(
        self,
        sdp: str,
        mode: Literal["agent", "engine"],
        session: dict[str, Any] | None,
        caller: str,
        user_agent: str,
    ) -> tuple[str, str]:
        """The call's id and the SDP answer; raises :class:`WebCallRefused`."""
        ...

    async def hangup(self, call: str) -> None:
        """End the call ``call`` (nothing if it has ended)."""
        ...


class EphemeralKeyStore(Protocol):
    """Single-use keys for ``/v1/realtime*`` (``api.ephemeral``)."""

    def mint(self, seconds: int, session: dict[str, Any]) -> Any: ...

    def check(self, key: str) -> None: ...

    def redeem(self, key: str) -> dict[str, Any]: ...

    def restore(self, key: str, session: dict[str, Any]) -> None: ...


@dataclass(frozen=True)
class ApiContext:
    """What the routes may use; everything lives on the supervisor's loop."""

    health: Callable[[], HealthReport]
    store: Store | None = None
    outbound: OutboundService | None = None
    tokens: Mapping[str, str] = field(default_factory=dict)  # name -> token; empty: no auth
    max_body_bytes: int = 65536
    rate_limit_per_minute: int = 0  # POST /call per client; 0 = no limit
    draining: Callable[[], bool] = lambda: False
    metrics: Callable[[], Awaitable[str]] | None = None
    spec: dict[str, Any] | None = None
    engine: Callable[[WebSocket], Awaitable[None]] | None = None  # /v1/realtime
    web: WebCalls | None = None  # None: browser calls are off
    feed: CallFeed | None = None  # the console's live calls
    keys: EphemeralKeyStore | None = None
    console: bool = True  # api.console: the web console at /
    console_session_hours: float = 12.0  # how long a console login lasts


def _error(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


# An Idempotency-Key of POST /call (api.models.idempotency_key) is remembered per caller (token
# name) for IDEMPOTENCY_SECONDS with the SHA-256 of the validated body and the response it got.
def body_sha256(body: dict[str, Any]) -> str:
    """The fingerprint of a validated request: key order, whitespace and defaults given
    explicitly do not change it, any value does."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _replay(record: IdempotencyRecord, fingerprint: str) -> JSONResponse:
    """The first response again for the same body; 422 naming the call for another body."""
    if record.body_sha256 != fingerprint:
        return _error(
            422,
            f"Idempotency-Key {record.key!r} was used with a different request body (call "
            f"{record.call_id}); use a new key for a new call",
            call_id=record.call_id,
        )
    return JSONResponse(record.response, headers={"idempotent-replayed": "true"})


UNAUTHORISED = "missing or invalid bearer token"
BAD_CSRF = "missing or invalid CSRF token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class _BadParameter(Exception):
    """A query parameter out of its documented type or range; the message names it."""


def _query_int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    """The integer query parameter ``name`` within ``low..high``, or ``default`` if absent."""
    text = request.query_params.get(name)
    if text is None:
        return default
    if not _INTEGER.fullmatch(text) or not low <= int(text) <= high:
        raise _BadParameter(f"{name}: must be an integer from {low} to {high}")
    return int(text)


def create_app(ctx: ApiContext) -> Starlette:
    sessions = ConsoleSessions(ctx.console_session_hours, time.monotonic)
    routes = _Routes(ctx, sessions)
    guarded, logged = routes.guarded, routes.logged
    console = ConsoleRoutes(ctx, routes.tokens, sessions)
    rtc = RealtimeCalls(ctx)
    return Starlette(
        routes=[
            Route("/health", routes.get_health, methods=["GET"]),
            Route("/call", guarded(routes.post_call), methods=["POST"]),
            Route("/call/{call_id}", guarded(routes.get_call), methods=["GET"]),
            Route("/call/{call_id}/recording", guarded(routes.get_recording), methods=["GET"]),
            Route("/calls", guarded(routes.list_calls), methods=["GET"]),
            Route("/metrics", guarded(routes.metrics), methods=["GET"]),
            Route("/openapi.json", guarded(routes.openapi), methods=["GET"]),
            WebSocketRoute("/v1/realtime", routes.realtime),
            Route("/v1/realtime/calls", rtc.keyed(guarded(rtc.create_call)), methods=["POST"]),
            Route("/v1/realtime/calls/{call_id}/hangup", guarded(rtc.hangup), methods=["POST"]),
            Route("/v1/realtime/client_secrets", guarded(rtc.client_secret), methods=["POST"]),
            Route("/", logged(console.index), methods=["GET"]),
            Route("/login", logged(console.login_page), methods=["GET"]),
            Route("/login", logged(console.login), methods=["POST"]),
            Route("/logout", guarded(console.logout, local=True), methods=["POST"]),
            Route("/console/session", guarded(console.session, local=True), methods=["GET"]),
            Route("/console/events", guarded(console.events, local=True), methods=["GET"]),
            Route("/console/static/{file}", logged(console.static), methods=["GET"]),
            Route("/console/{page}.html", logged(console.page), methods=["GET"]),
            Route("/web/calls", guarded(console.web_call, local=True), methods=["POST"]),
            Route("/web/calls/{call}", guarded(console.web_hangup, local=True), methods=["DELETE"]),
        ],
        exception_handlers={
            HTTPException: routes.http_error,
            ClientDisconnect: routes.client_disconnected,
            500: routes.server_error,
        },
    )


class _Routes:
    def __init__(self, ctx: ApiContext, sessions: ConsoleSessions) -> None:
        self.ctx = ctx
        self.tokens = ApiTokens(ctx.tokens)
        self.sessions = sessions
        per_minute = ctx.rate_limit_per_minute
        self.limiter = RateLimiter(per_minute) if per_minute else None

    def guarded(
        self,
        handler: Callable[[Request], Awaitable[Response]],
        *,
        local: bool = False,
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` behind the tokens: a bearer token, or a console session's cookie (plus
        its CSRF token on unsafe methods); an unsafe request from another site's page (a
        foreign Origin) is refused whatever it carries. ``local``: with no token set, clients
        on this machine only. The handler finds ``request.state.token`` (the token's name), ``.via``
        (bearer | session | open) and ``.session``."""

        async def route(request: Request) -> Response:
            started = time.monotonic()
            name = self.tokens.identify(offered_token(request.headers))
            via = "bearer" if name is not None else None
            session: ConsoleSession | None = None
            if via is None:
                session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
                if session is not None:
                    name, via = session.token_name, "session"
            request.state.token, request.state.session = name, session
            request.state.via = via or "open"
            response: Response
            if foreign_origin(request):
                response = _error(403, FOREIGN_ORIGIN)
            elif self.tokens.required and via is None:
                response = JSONResponse(
                    {"detail": UNAUTHORISED},
                    status_code=401,
                    headers={"www-authenticate": "Bearer"},
                )
            elif local and not self.tokens.required and not is_local(request):
                response = _error(403, LOOPBACK_ONLY)
            elif (
                session is not None
                and request.method not in SAFE_METHODS
                and not session.csrf_matches(request.headers.get("x-csrf-token"))
            ):
                response = _error(403, BAD_CSRF)
            else:
                response = await handler(request)
            self._log(request, response, started, refused=name is None)
            return response

        return route

    def logged(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """``handler`` open to all (it checks what it needs itself), in the access log."""

        async def route(request: Request) -> Response:
            started = time.monotonic()
            request.state.token = None
            response = await handler(request)
            refused = getattr(request.state, "refused", False)
            self._log(request, response, started, refused=refused)
            return response

        return route

    def _log(self, request: Request, response: Response, started: float, refused: bool) -> None:
        status = response.status_code
        _log_request(
            request.method,
            _logged_path(request, refused=refused and status == 401),
            status,
            getattr(request.state, "token", None),
            client=request.client,
            started=started,
        )

    async def get_health(self, request: Request) -> Response:
        strict_text = request.query_params.get("strict", "0")
        if strict_text not in STRICT_VALUES:
            return _error(400, f"strict: must be one of {', '.join(STRICT_VALUES)}")
        report = self.ctx.health()
        strict = strict_text in ("1", "true")
        code = 503 if strict and report.status != "healthy" else 200
        return JSONResponse(asdict(report), status_code=code)

    async def _body(self, request: Request) -> bytes | None:
        """The request body, or None when it exceeds the limit."""
        limit = self.ctx.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return None
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                return None
        return body

    async def post_call(self, request: Request) -> Response:
        ctx = self.ctx
        if ctx.draining():
            return _error(503, "the daemon is stopping and takes no new calls")
        if self.limiter is not None:
            client = request.state.token or (request.client.host if request.client else "")
            wait = self.limiter.check(client, time.monotonic())
            if wait:
                return JSONResponse(
                    {"detail": f"more than {self.limiter.per_minute} calls a minute: retry later"},
                    status_code=429,
                    headers={"retry-after": str(wait)},
                )
        body = await self._body(request)
        if body is None:
            return _error(400, f"request body exceeds {ctx.max_body_bytes} bytes")
        try:
            call = parse_request(json.loads(body))
        except ValidationError as exc:
            return _error(400, describe(exc))
        except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
            detail = str(exc)
            if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
                detail = f"body is not valid JSON: {exc}"
            return _error(400, detail)
        try:
            key = idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))
        except ValueError as exc:
            return _error(400, str(exc))
        return await self._place(call, request.state.token or "", key)

    async def _place(self, call: OutboundCallRequest, scope: str, key: str | None) -> Response:
        """Store and queue a valid request. With an Idempotency-Key ``key`` (of the caller's
        ``scope``), a key seen before replays its first response for the same body (nothing
        queued) and is refused with 422 for another; a new one is stored with the call."""
        ctx = self.ctx
        fingerprint = body_sha256(call.model_dump(mode="json"))
        if key is not None and ctx.store is not None:
            found = await ctx.store.find_idempotency(scope, key)
            if found is not None:
                return _replay(found, fingerprint)
        if ctx.outbound is None or not ctx.outbound.available:
            return _error(503, "outbound calls are not available: no call flow is configured")
        call_id = call.call_id or ctx.outbound.new_call_id()
        stored = call.model_dump(mode="json")
        stored["call_id"] = call_id
        response = {"call_id": call_id, "status": "queued", "message": "Call initiated"}
        claim = None
        if key is not None:
            claim = IdempotencyClaim(scope, key, fingerprint, response)
        try:
            await ctx.outbound.submit(call_id, stored, idempotency=claim)
        except IdempotentReplay as exc:  # a request with this key came first
            return _replay(exc.record, fingerprint)
        except DuplicateCallId:
            return _error(409, f"call_id {call_id!r} is already in use", call_id=call_id)
        except (OutboundUnavailable, QueueFull) as exc:
            if key is not None and ctx.store is not None:  # a same-key request came first
                found = await ctx.store.find_idempotency(scope, key)
                if found is not None:
                    return _replay(found, fingerprint)
            if isinstance(exc, OutboundUnavailable):
                return _error(503, str(exc))
            return JSONResponse(
                {"detail": str(exc)}, status_code=503, headers={"retry-after": str(exc.retry_after)}
            )
        return JSONResponse(response)

    async def get_call(self, request: Request) -> Response:
        call_id = request.path_params["call_id"]
        found = await _find(self.ctx.store, call_id)
        if found is None:
            return JSONResponse({"call_id": call_id, "status": "not_found"}, status_code=404)
        return JSONResponse(found.view)

    async def get_recording(self, request: Request) -> Response:
        """The call's WAV file, whole or by byte ranges; the path comes from its record only."""
        call_id = request.path_params["call_id"]
        found = await _find(self.ctx.store, call_id)
        recording = found.record["recording"] if found is not None else None
        if found is None or recording is None or found.view["status"] == "in_progress":
            return _error(404, f"call {call_id!r} has no recording")
        try:
            stat = await asyncio.to_thread(os.stat, recording["path"])
        except OSError:
            stat = None
        if stat is None or not S_ISREG(stat.st_mode):  # deleted, or replaced by a directory
            return _error(404, f"the recording of call {call_id!r} is gone")
        wanted = request.headers.get("range")
        if wanted is not None:
            try:  # Starlette's own parser: a refused range gets a JSON detail, as every refusal
                FileResponse._parse_range_header(wanted, stat.st_size)
            except MalformedRangeHeader as exc:
                return _error(400, f"range: {exc.content}")
            except RangeNotSatisfiable:
                return JSONResponse(
                    {"detail": f"range: beyond the {stat.st_size} bytes of the recording"},
                    status_code=416,
                    headers={"content-range": f"bytes */{stat.st_size}"},
                )
        return FileResponse(
            recording["path"],
            media_type="audio/wav",
            filename=f"{call_id}.wav",
            stat_result=stat,
            # Only a known hash names the content (a late recording has none).
            headers={"etag": f'"{recording["sha256"]}"'} if recording["sha256"] else None,
        )

    async def list_calls(self, request: Request) -> Response:
        store = self.ctx.store
        if store is None:
            return JSONResponse({"calls": [], "next_before": None})
        try:
            limit = _query_int(request, "limit", 50, 1, 200)
            before = _query_int(request, "before", None, 0, SEQ_MAX)
        except _BadParameter as exc:
            return _error(400, str(exc))
        assert limit is not None
        direction = request.query_params.get("direction", "outbound")
        if direction in ("inbound", "web"):  # answered by the agent: SIP calls, browsers'
            inbound = await store.list_inbound(limit, before, direction)
            next_seq = inbound[-1]["seq"] if len(inbound) == limit else None
            views = [_inbound_listed(r) for r in inbound]
            return JSONResponse({"calls": views, "next_before": next_seq})
        if direction != "outbound":
            return _error(400, "direction: must be 'outbound', 'inbound' or 'web'")
        records = await store.list_calls(limit, before)
        next_before = records[-1]["seq"] if len(records) == limit else None
        return JSONResponse({"calls": [_call_view(r) for r in records], "next_before": next_before})

    async def metrics(self, request: Request) -> Response:
        text = await self.ctx.metrics() if self.ctx.metrics is not None else ""
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(self.ctx.spec or {})

    async def realtime(self, websocket: WebSocket) -> None:
        """The embedded engine, behind the same tokens as the other routes."""
        started = time.monotonic()
        name, session, refused = realtime_credential(
            self.tokens, self.ctx, websocket.headers, redeem=self.ctx.engine is not None
        )
        path, client = websocket.url.path, websocket.client
        if refused is not None or (self.tokens.required and name is None):
            detail = refused.message if refused is not None else UNAUTHORISED
            await _deny(websocket, 401, detail, {"www-authenticate": "Bearer"})
            _log_request("GET", path, 401, name, client=client, started=started)
            return
        if self.ctx.engine is None:
            await _deny(websocket, 503, "the realtime engine is not running")
            _log_request("GET", path, 503, name, client=client, started=started)
            return
        _log_request("GET", path, 101, name, client=client, started=started)
        await self.ctx.engine(RealtimeSocket.of(websocket, session))

    async def http_error(self, request: Request, exc: Exception) -> Response:
        if isinstance(exc, HTTPException):  # a 405 keeps its Allow header
            return JSONResponse(
                {"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
            )
        return _error(404, "not found")

    async def client_disconnected(self, request: Request, exc: Exception) -> Response:
        """The client hung up, or was cut off by api.body_timeout, before its body was in."""
        log.info("api.client_disconnected", path=request.url.path)
        return _error(400, "the client disconnected before the request body was complete")

    async def server_error(self, request: Request, exc: Exception) -> Response:
        log.error("api.error", path=request.url.path, error=repr(exc))
        return _error(500, "internal error")


def _logged_path(request: Request, refused: bool) -> str:
    """The path to log: for a refused request its route's template, so that unauthenticated
    requests to made-up ids are the same line (and rate-limited as repeats), not one each."""
    route = request.scope.get("route")
    if refused and route is not None:
        return str(getattr(route, "path", request.url.path))
    return request.url.path


def _log_request(
    method: str,
    path: str,
    status: int,
    token: str | None,
    *,
    client: Address | None,
    started: float,
) -> None:
    """The access log: one event per request, naming the token used (never the token)."""
    log.info(
        "api.request",
        method=method,
        path=path,
        status=status,
        token=token,
        client=client.host if client is not None else None,
        ms=round((time.monotonic() - started) * 1000, 1),
    )


async def _deny(
    websocket: WebSocket, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    """Refuse a WebSocket handshake with an HTTP response carrying ``detail``."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(
            JSONResponse({"detail": detail}, status_code=status, headers=headers)
        )
    else:  # a server without the denial-response extension answers a close with 403
        await websocket.close(code=1008, reason=detail)


@dataclass(frozen=True)
class _Found:
    record: dict[str, Any]  # as the store keeps it
    view: dict[str, Any]  # as GET /call/{call_id} shows it


async def _find(store: Store | None, call_id: str) -> _Found | None:
    """The call of this id: an outbound call, else an inbound one, else None."""
    if store is None:
        return None
    record = await store.get_call(call_id)
    if record is not None:
        return _Found(record, _call_view(record))
    record = await store.get_inbound(call_id)
    return _Found(record, _inbound_view(record)) if record is not None else None


def _call_view(record: dict[str, Any]) -> dict[str, Any]:
    final = record["status"] in FINAL_STATUSES
    view: dict[str, Any] = {
        "call_id": record["call_id"],
        "status": "not_found" if final else "in_progress",
        "direction": "outbound",
        "extension": record["extension"],
        "call_status": "queued" if record["status"] == "dialing" else record["status"],
        "created_at": record["created_at"],
        "sip_code": record["sip_code"],
        "answered_at": record["answered_at"],
        "ended_at": record["ended_at"],
    }
    if final and record["result"]:
        for name in RESULT_FIELDS:
            view[name] = record["result"].get(name)
        for name in DETECTION_FIELDS:
            if name in record["result"]:
                view[name] = record["result"][name]
    if final:
        view["black_box"] = record["black_box"]
        if "recording" in record:
            view["recording"] = recording_view(record["call_id"], record["recording"])
    if "webhooks" in record:
        view["webhooks"] = record["webhooks"]
    if "seq" in record:
        view["seq"] = record["seq"]
    return view


def _inbound_view(record: dict[str, Any]) -> dict[str, Any]:
    """An inbound call's view (as its ``inbound.ended`` webhook carries it), with its record
    number for paging ``GET /calls``, as an outbound call's view has."""
    return {**inbound_view(record), "seq": record["seq"]}


def _inbound_listed(record: dict[str, Any]) -> dict[str, Any]:
    """An item of ``GET /calls?direction=inbound``: the view of ``GET /call/{call_id}``, except
    that ``status`` stays the record's own (in_progress, completed, failed), as the list always
    said, with the record's SIP Call-ID, worker and start time."""
    return {
        **_inbound_view(record),
        "status": record["status"],
        "sip_call_id": record["sip_call_id"],
        "worker": record["worker"],
        "started_at": record["started_at"],
    }
