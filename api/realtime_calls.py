"""OpenAI's realtime WebRTC routes for the embedded engine, and its ephemeral keys.

Routes (table in :func:`api.app.create_app`):

- ``POST /v1/realtime/client_secrets`` (``api.token`` or a console session): mints a key
  (:mod:`api.ephemeral`) for the session in the body; 200 with OpenAI's
  ``ClientSecretCreateResponse`` (``value`` ``ek_...``, ``expires_at``, ``session``).
- ``POST /v1/realtime/calls``: an SDP offer in, **201** with the SDP answer out
  (``Content-Type: application/sdp``, ``Location: /v1/realtime/calls/rtc_<hex>``). The body is
  the raw offer (``application/sdp``; the session is then the ``session`` query parameter's
  URL-encoded JSON, else the engine's defaults), or ``sdp`` and ``session`` fields as
  ``multipart/form-data`` or ``application/json`` (OpenAI's Python SDK); any other type is
  415. An ephemeral key opens the session it was minted with: an offer that brings its own
  ``session`` with a key is refused (400 naming the field). Credentials: ``api.token``, a
  console session, or an ephemeral key (``Authorization: Bearer ek_...``), which this offer
  uses up (a refused one, 4xx or 503, leaves it unused). The offer is checked
  (:func:`api.sdp.check_offer`) before a web worker sees it: 400 naming the problem.
- ``POST /v1/realtime/calls/{call_id}/hangup``: ends the session (200), 404 if unknown.

The session runs in a web worker (``daemon.web.engine_relay``): audio on the track, events on
the ``oai-events`` data channel, the engine behind it the one of ``/v1/realtime``. Refusals
carry our body and OpenAI's in one: ``{"detail": msg, "error": {"message": msg, "type":
"invalid_request_error", "code": ...}}``.

An ephemeral key opens only these sessions: never ``/call``, ``/calls`` or any other route
(those take ``api.token`` and console sessions only). On the ``/v1/realtime`` WebSocket a
browser, which cannot set headers there, offers it as the subprotocol
``openai-insecure-api-key.<key>`` next to ``realtime`` (:func:`api.auth.offered_token`);
:class:`RealtimeSocket` then accepts with ``realtime``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message
from starlette.websockets import WebSocket

from api.auth import ApiTokens, offered_token
from api.ephemeral import KeyRefused, TooManyKeys, is_ephemeral, parse_mint
from api.sdp import MAX_OFFER_BYTES, check_offer
from daemon.logs import get_logger

if TYPE_CHECKING:
    from api.app import ApiContext

log = get_logger(__name__)

EPHEMERAL = "ephemeral"  # the token name logged for a request that used an ephemeral key
MAX_BODY_BYTES = 2 * MAX_OFFER_BYTES  # an offer (<= 64 KB) plus its session, in any form
MAX_CALLS = 4096  # session ids remembered for hang-up (the oldest forgotten first)
Handler = Callable[[Request], Awaitable[Response]]


def refusal(
    status: int, detail: str, code: str, headers: Mapping[str, str] | None = None
) -> Response:
    """Our error body and OpenAI's in one."""
    error = {"message": detail, "type": "invalid_request_error", "code": code}
    return JSONResponse(
        {"detail": detail, "error": error}, status_code=status, headers=dict(headers or {})
    )


class _BadOffer(Exception):
    def __init__(self, status: int, detail: str, code: str) -> None:
        super().__init__(detail)
        self.status, self.detail, self.code = status, detail, code


def _session(value: Any, where: str) -> dict[str, Any] | None:
    """A session given as JSON text or an object; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _BadOffer(400, f"{where}: not valid JSON", "invalid_session") from None
    if not isinstance(value, dict):
        raise _BadOffer(400, f"{where}: must be a JSON object", "invalid_session")
    return value


async def _read(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise _BadOffer(400, f"request body exceeds {limit} bytes", "body_too_large")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BadOffer(400, f"request body exceeds {limit} bytes", "body_too_large")
    return body


async def _offer(request: Request) -> tuple[str, dict[str, Any] | None]:
    """The offer's SDP and the session it asks for, from any of the three body forms."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind not in ("application/sdp", "multipart/form-data", "application/json"):
        raise _BadOffer(
            415,
            "content-type: must be application/sdp, multipart/form-data or application/json",
            "unsupported_media_type",
        )
    body = await _read(request, MAX_BODY_BYTES)
    if kind == "application/sdp":
        raw: Any = body
        query = parse_qs(request.url.query).get("session")
        session = _session(query[0], "session") if query else None
    elif kind == "application/json":
        try:
            fields = json.loads(body)
        except ValueError:
            raise _BadOffer(400, "body is not valid JSON", "invalid_json") from None
        if not isinstance(fields, dict) or not isinstance(fields.get("sdp"), str):
            raise _BadOffer(400, "sdp: a string field is required", "invalid_sdp")
        raw, session = fields["sdp"], _session(fields.get("session"), "session")
    else:
        raw, session = await _form(request, body)
    problem = check_offer(raw)
    if problem is not None:
        raise _BadOffer(400, problem, "invalid_sdp")
    text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    return text, session


async def _form(request: Request, body: bytes) -> tuple[bytes, dict[str, Any] | None]:
    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        async with Request(request.scope, replay).form(max_files=2, max_fields=8) as form:
            values = {name: form.get(name) for name in ("sdp", "session")}
            parts = {
                name: await value.read() if isinstance(value, UploadFile) else value
                for name, value in values.items()
            }
    except Exception as exc:  # python-multipart's parse errors
        detail = f"body is not valid multipart/form-data: {exc}"
        raise _BadOffer(400, detail, "invalid_body") from None
    sdp = parts["sdp"]
    if sdp is None:
        raise _BadOffer(400, "sdp: a form field is required", "invalid_sdp")
    session = parts["session"]
    if isinstance(session, bytes):
        session = session.decode("utf-8", "replace")
    return (sdp if isinstance(sdp, bytes) else sdp.encode()), _session(session, "session")


class RealtimeCalls:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx
        self._calls: dict[str, str] = {}  # rtc_<hex> -> the web workers' call id

    # -- credentials --------------------------------------------------------------------

    def keyed(self, guarded: Handler) -> Handler:
        """``guarded`` (token or console session), or an ephemeral key for this route only."""

        async def route(request: Request) -> Response:
            offered = offered_token(request.headers)
            if not is_ephemeral(offered) or self.ctx.keys is None:
                return await guarded(request)
            started = time.monotonic()
            response = await self._with_key(request, offered)
            log.info(
                "api.request",
                method=request.method,
                path=request.url.path,
                status=response.status_code,
                token=EPHEMERAL,
                client=request.client.host if request.client else None,
                ms=round((time.monotonic() - started) * 1000, 1),
            )
            return response

        return route

    async def _with_key(self, request: Request, key: str) -> Response:
        keys = self.ctx.keys
        assert keys is not None
        try:
            keys.check(key)
            sdp, session = await _offer(request)
            if session is not None:  # the key opens the session it was minted with, only
                detail = "session: an ephemeral key opens the session it was minted with"
                raise _BadOffer(400, detail, "invalid_session")
            unavailable = self._unavailable()
            if unavailable is not None:  # the key stays unused
                return unavailable
            minted = keys.redeem(key)  # used up by this offer (two at once cannot both pass)
        except KeyRefused as exc:
            return refusal(401, exc.message, exc.code, {"www-authenticate": "Bearer"})
        except _BadOffer as exc:
            return refusal(exc.status, exc.detail, exc.code)
        opened = False
        try:
            response = await self._open(request, sdp, minted, EPHEMERAL)
            opened = response.status_code == 201
        finally:
            if not opened:  # refused (400, 503) or failed before a call existed
                keys.restore(key, minted)
        return response

    # -- routes -------------------------------------------------------------------------

    async def create_call(self, request: Request) -> Response:
        key = getattr(request.state, "ephemeral", None)  # a guard that let a key through
        if isinstance(key, str) and self.ctx.keys is not None:
            return await self._with_key(request, key)
        try:
            sdp, session = await _offer(request)
        except _BadOffer as exc:
            return refusal(exc.status, exc.detail, exc.code)
        return await self._open(request, sdp, session, request.state.token or "local")

    async def _open(
        self, request: Request, sdp: str, session: dict[str, Any] | None, who: str
    ) -> Response:
        from api.app import WebCallRefused  # noqa: PLC0415 (app imports this module)

        web = self.ctx.web
        unavailable = self._unavailable()
        if unavailable is not None:
            return unavailable
        assert web is not None  # _unavailable refuses without one
        try:
            call, answer = await web.offer(
                sdp, "engine", session, f"web:{who}", request.headers.get("user-agent", "")
            )
        except WebCallRefused as exc:
            code = "invalid_sdp" if exc.status == 400 else "unavailable"
            return refusal(exc.status, exc.detail, code)
        rtc = "rtc_" + secrets.token_hex(16)
        self._calls[rtc] = call
        while len(self._calls) > MAX_CALLS:
            del self._calls[next(iter(self._calls))]
        return Response(
            answer,
            status_code=201,
            media_type="application/sdp",
            headers={"location": f"/v1/realtime/calls/{rtc}"},
        )

    def _unavailable(self) -> Response | None:
        """The 503 for an offer no web worker may take now, else None."""
        if self.ctx.draining():
            return refusal(503, "the daemon is stopping and takes no new calls", "unavailable")
        if self.ctx.web is None:
            return refusal(503, "browser calls are off ([web] enabled = false)", "unavailable")
        return None

    async def hangup(self, request: Request) -> Response:
        rtc = request.path_params["call_id"]
        call = self._calls.pop(rtc, None)
        if call is None or self.ctx.web is None:
            return refusal(404, f"no realtime call {rtc!r}", "call_not_found")
        await self.ctx.web.hangup(call)
        return JSONResponse({})

    async def client_secret(self, request: Request) -> Response:
        keys = self.ctx.keys
        if keys is None:
            return refusal(401, "ephemeral keys are not served here", "invalid_key")
        try:
            body = await _read(request, self.ctx.max_body_bytes)
            seconds, session = parse_mint(json.loads(body) if body.strip() else {})
        except _BadOffer as exc:
            return refusal(400, exc.detail, exc.code)
        except ValueError as exc:  # bad JSON, or a field parse_mint names
            detail = str(exc)
            if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
                detail = f"body is not valid JSON: {exc}"
            return refusal(400, detail, "invalid_request")
        try:
            minted = keys.mint(seconds, session)
        except TooManyKeys as exc:
            return refusal(
                503,
                f"{exc}: retry once one is used or expires",
                "too_many_keys",
                {"retry-after": str(exc.retry_after)},
            )
        log.info("api.ephemeral_key_minted", token=request.state.token, seconds=seconds)
        return JSONResponse(minted.answer())


def realtime_credential(
    tokens: ApiTokens, ctx: ApiContext, headers: Mapping[str, str], redeem: bool = True
) -> tuple[str | None, dict[str, Any] | None, KeyRefused | None]:
    """Who a ``/v1/realtime`` handshake is (a token's name, or ``"ephemeral"`` for a key it
    uses up now, with the session the key was minted for), or why its key is refused.
    With ``redeem`` false (the session cannot open anyway) a key is checked, not used up."""
    offered = offered_token(headers, api_key_header=True)
    if ctx.keys is not None and is_ephemeral(offered):
        try:
            if not redeem:
                ctx.keys.check(offered)
                return EPHEMERAL, None, None
            session = ctx.keys.redeem(offered)
        except KeyRefused as exc:
            return None, None, exc
        return EPHEMERAL, session, None
    return tokens.identify(offered), None, None


class RealtimeSocket(WebSocket):
    """A ``/v1/realtime`` connection as the engine sees it: accepted with the ``realtime``
    subprotocol when the client asked for it (browsers do, to carry their key), and, for a
    key minted with a session, that session applied first, as if the client had sent it as
    its first ``session.update`` (the client sees ``session.created``, then
    ``session.updated``)."""

    def __init__(self, websocket: WebSocket, session: dict[str, Any] | None) -> None:
        super().__init__(websocket.scope, websocket._receive, websocket._send)
        self._subprotocol = "realtime" if "realtime" in self.scope.get("subprotocols", []) else None
        self._first: str | None = None
        if session:
            shaped = {k: v for k, v in session.items() if k not in ("id", "object", "expires_at")}
            self._first = json.dumps({"type": "session.update", "session": shaped})

    @classmethod
    def of(cls, websocket: WebSocket, session: dict[str, Any] | None = None) -> WebSocket:
        if not session and "realtime" not in websocket.scope.get("subprotocols", []):
            return websocket
        return cls(websocket, session)

    async def accept(self, subprotocol: str | None = None, headers: Any = None) -> None:
        await super().accept(subprotocol or self._subprotocol, headers)

    async def receive_text(self) -> str:
        first, self._first = self._first, None
        return first if first is not None else await super().receive_text()
