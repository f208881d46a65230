"""The web console's routes: its pages, login, live feed, and browser calls to the agent.

Routes (table in :func:`api.app.create_app`): ``GET /``, ``GET /login``, ``POST /login``,
``POST /logout``, ``GET /console/session``, ``GET /console/events`` (server-sent events),
``GET /console/static/{file}`` (and ``GET /console/{page}.html``), ``POST /web/calls`` and
``DELETE /web/calls/{call}``.

Who may use them: with tokens set, a browser logs in once with a token (``POST /login``) and
then holds a session cookie (:mod:`api.console_auth`); the guard of :mod:`api.app` takes the
cookie or a bearer token, and wants the session's CSRF token on unsafe requests. With no
token set, the console answers clients on this machine only (loopback, not through a proxy)
and ``/console/session`` carries a warning the page shows. Every answer carries
:data:`SECURITY_HEADERS` (a strict Content-Security-Policy: the pages load nothing but the
daemon's own files, and no inline script or style); HTML is never cached.

The page's DOM hooks, which the browser tests drive and the console keeps:
``#login-token`` (the token field) and ``#login-submit`` on the login page; on the console,
``#talk`` (the "Talk to the agent" button), ``#hangup``, ``#call-state`` (the browser call's
state as text), one ``tr[data-call-id]`` row per call in the live and history tables
(with ``data-direction``), and the ``.badge-web`` direction badge of a browser call's row;
in a call's detail (``#detail``), ``#detail-transcript`` (one ``li`` per turn),
``#detail-black-box`` (one ``th``/``td`` row per figure), ``#detail-recording`` (the
``<audio>`` player) and ``#detail-webhooks`` (one ``tr[data-webhook-kind]`` per webhook, with
one ``ol.attempts li`` per attempt carrying ``data-status`` and ``data-ms``).
"""

from __future__ import annotations

import html
import ipaddress
import json
import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from api.auth import ApiTokens, offered_token
from api.console_auth import (
    LOGIN_COOKIE,
    LOGIN_SECONDS,
    SESSION_COOKIE,
    ConsoleSession,
    ConsoleSessions,
    TooManySessions,
    login_token,
    same_token,
)
from daemon.call_feed import FeedFull
from daemon.logs import get_logger

if TYPE_CHECKING:
    from api.app import ApiContext

log = get_logger(__name__)

CSP = (
    "default-src 'self'; media-src 'self' blob:; connect-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    # same-origin, not no-referrer: with no-referrer a browser sends "Origin: null" on a form
    # POST, which the cross-site check must refuse
    "referrer-policy": "same-origin",
}
HTML_HEADERS = {**SECURITY_HEADERS, "cache-control": "no-store"}
UNPROTECTED_WARNING = (
    "No api.token: anyone who can reach this machine's loopback can use this console."
)
LOOPBACK_ONLY = "the console answers only on this machine while api.token is not set"
CONSOLE_OFF = "the console is off (api.console = false)"
BROWSER_CALLS_OFF = "browser calls are off ([web] enabled = false or workers = 0)"
FOREIGN_ORIGIN = "cross-site request refused: the Origin header is not this server's origin"
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_LOGIN_BYTES = 4096
MAX_OFFER_BYTES = 65536
SSE_RETRY_MS = 2000
FILES = Path(__file__).with_name("console")
_FILE_NAME = re.compile(r"[a-z0-9_-]{1,64}\.(css|js|html)")
_TYPES = {"css": "text/css", "js": "text/javascript", "html": "text/html"}


def _host_name(host: str) -> str:
    """The name part of a Host header (``[::1]:8080`` -> ``[::1]``), lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


def is_local(request: Request) -> bool:
    """True for a client on this machine that did not come through a proxy (a proxy on
    loopback would make every client look local) and that asked for this machine by a
    loopback name (a site whose name was rebound to 127.0.0.1 sends its own name)."""
    if request.client is None or "x-forwarded-for" in request.headers:
        return False
    if "forwarded" in request.headers:
        return False
    if _host_name(request.headers.get("host", "")) not in LOOPBACK_NAMES:
        return False
    try:
        return ipaddress.ip_address(request.client.host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int] | None:
    """``url``'s origin as (scheme, host, port), the default port filled in."""
    try:
        parts = urlsplit(url)
        scheme, host, port = parts.scheme.lower(), parts.hostname, parts.port
    except ValueError:
        return None
    if scheme not in DEFAULT_PORTS or not host:
        return None
    return scheme, host, port or DEFAULT_PORTS[scheme]


def foreign_origin(request: Request) -> bool:
    """An unsafe request sent by a page of another site: its Origin header is present and is
    not this request's own origin (scheme, Host and port). Requests without Origin (curl,
    backends) are not foreign."""
    offered = request.headers.get("origin")
    if request.method in SAFE_METHODS or offered is None:
        return False
    scheme = "https" if _over_https(request) else request.url.scheme
    own = _origin(f"{scheme}://{request.headers.get('host', '')}")
    return own is None or _origin(offered) != own


def _over_https(request: Request) -> bool:
    """The browser's connection is TLS: ours, or a TLS proxy's on this machine."""
    if request.url.scheme == "https":
        return True
    proxied = request.headers.get("x-forwarded-proto", "").lower() == "https"
    client = request.client.host if request.client is not None else ""
    try:
        return proxied and ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False


def _json(status: int, body: Mapping[str, object]) -> JSONResponse:
    return JSONResponse(dict(body), status_code=status, headers=SECURITY_HEADERS)


def _error(status: int, detail: str) -> JSONResponse:
    return _json(status, {"detail": detail})


class ConsoleRoutes:
    def __init__(self, ctx: ApiContext, tokens: ApiTokens, sessions: ConsoleSessions) -> None:
        self.ctx = ctx
        self.tokens = tokens
        self.sessions = sessions
        self._files = {
            path.name: path.read_bytes()
            for path in sorted(FILES.iterdir())
            if _FILE_NAME.fullmatch(path.name)
        }

    # -- pages -------------------------------------------------------------------------

    def _closed(self, request: Request) -> Response | None:
        """Why this request may not see the console, if it may not."""
        if not self.ctx.console:
            return _error(404, CONSOLE_OFF)
        if not self.tokens.required and not is_local(request):
            return _error(403, LOOPBACK_ONLY)
        return None

    def _file(self, name: str) -> Response:
        body = self._files.get(name)
        if body is None:
            return _error(404, f"no console file {name!r}")
        kind = name.rsplit(".", 1)[1]
        headers = HTML_HEADERS if kind == "html" else SECURITY_HEADERS
        return Response(body, media_type=_TYPES[kind], headers=headers)

    def _logged_in(self, request: Request) -> bool:
        """A live session cookie, or a bearer token, or no token needed at all (the access
        log then names the token)."""
        if not self.tokens.required:
            return True
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        name = session.token_name if session is not None else None
        request.state.token = name or self.tokens.identify(offered_token(request.headers))
        return request.state.token is not None

    async def index(self, request: Request) -> Response:
        """The console; a browser not logged in is sent to the login page."""
        closed = self._closed(request)
        if closed is not None:
            return closed
        if not self._logged_in(request):
            return RedirectResponse("/login", status_code=303, headers=HTML_HEADERS)
        return self._file("index.html")

    async def page(self, request: Request) -> Response:
        """Another page of the console (``/console/{page}.html``), behind the login as ``/``."""
        closed = self._closed(request)
        if closed is not None:
            return closed
        if not self._logged_in(request):
            return RedirectResponse("/login", status_code=303, headers=HTML_HEADERS)
        name = f"{request.path_params['page']}.html"
        if name == "login.html":  # a template: served by GET /login only
            return _error(404, f"no console file {name!r}")
        return self._file(name)

    async def static(self, request: Request) -> Response:
        """The console's style sheet and scripts (nothing secret: the login page needs them)."""
        closed = self._closed(request)
        if closed is not None:
            return closed
        name = str(request.path_params["file"])
        if not _FILE_NAME.fullmatch(name) or name.endswith(".html"):
            return _error(404, f"no console file {name!r}")
        return self._file(name)

    # -- login -------------------------------------------------------------------------

    def _login_form(self, status: int, error: str = "") -> Response:
        """The login page with a fresh form token, set in its cookie too (double submit)."""
        token = login_token()
        page = self._files["login.html"].decode()
        page = page.replace("{{csrf}}", token).replace("{{error}}", html.escape(error))
        page = page.replace("{{error_hidden}}", "" if error else "hidden")
        response = Response(page, status_code=status, media_type="text/html", headers=HTML_HEADERS)
        response.set_cookie(
            LOGIN_COOKIE,
            token,
            max_age=LOGIN_SECONDS,
            path="/login",
            httponly=True,
            samesite="strict",
        )
        return response

    async def login_page(self, request: Request) -> Response:
        closed = self._closed(request)
        if closed is not None:
            return closed
        if not self.tokens.required:
            return RedirectResponse("/", status_code=303, headers=HTML_HEADERS)
        return self._login_form(200)

    async def login(self, request: Request) -> Response:
        """Check the form's token; a good one opens a session (its cookie) and goes to ``/``."""
        closed = self._closed(request)
        if closed is not None:
            return closed
        if not self.tokens.required:
            return RedirectResponse("/", status_code=303, headers=HTML_HEADERS)
        if foreign_origin(request):
            return _error(403, FOREIGN_ORIGIN)
        declared = request.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > MAX_LOGIN_BYTES:
            return self._login_form(400, "The login form is too large.")
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/x-www-form-urlencoded":
            return self._login_form(400, "Log in with the form.")
        form = await request.form(max_files=0, max_fields=8)
        csrf, token = form.get("csrf"), form.get("token")
        if not isinstance(csrf, str) or not same_token(csrf, request.cookies.get(LOGIN_COOKIE)):
            return self._login_form(403, "The login form expired: try again.")
        name = self.tokens.identify(token if isinstance(token, str) else "")
        if name is None:
            request.state.refused = True
            return self._login_form(401, "Wrong token.")
        request.state.token = name
        try:
            cookie, _ = self.sessions.open(name)
        except TooManySessions as exc:
            log.warning("console.sessions_full", token=name)
            return self._login_form(503, str(exc))
        log.info("console.login", token=name)
        response = RedirectResponse("/", status_code=303, headers=HTML_HEADERS)
        self._set_session_cookie(response, cookie, request)
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    async def logout(self, request: Request) -> Response:
        """End this browser's session (guarded: the session's CSRF token is needed)."""
        self.sessions.close(request.cookies.get(SESSION_COOKIE))
        response = _json(200, {"detail": "logged out"})
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
        return response

    async def session(self, request: Request) -> Response:
        """What the page needs: its CSRF token, who it is, and a warning when unprotected.

        With no token set, a browser gets a local session here (and its cookie), so the page
        works the same way with or without tokens."""
        if not self.ctx.console:
            return _error(404, CONSOLE_OFF)
        session: ConsoleSession | None = getattr(request.state, "session", None)
        cookie = None
        if session is None and not self.tokens.required:
            try:
                cookie, session = self.sessions.open("local")
            except TooManySessions as exc:
                return _error(503, str(exc))
        body = {
            "csrf": session.csrf if session is not None else None,
            "token_name": session.token_name if session is not None else request.state.token,
            "auth": "token" if self.tokens.required else "none",
            "warning": None if self.tokens.required else UNPROTECTED_WARNING,
        }
        response = JSONResponse(body, headers={**SECURITY_HEADERS, "cache-control": "no-store"})
        if cookie is not None:
            self._set_session_cookie(response, cookie, request)
        return response

    def _set_session_cookie(self, response: Response, cookie: str, request: Request) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            cookie,
            max_age=self.sessions.seconds,
            path="/",
            httponly=True,
            samesite="strict",
            secure=_over_https(request),
        )

    # -- the live feed -----------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """Calls as they change, as server-sent events: a snapshot of the calls in progress,
        then one ``call`` event per change, ``: ping`` while nothing happens, ``resync`` when
        this stream fell too far behind; it ends when the daemon stops."""
        feed = self.ctx.feed
        if not self.ctx.console:
            return _error(404, CONSOLE_OFF)
        if feed is None:
            return _error(503, "the live feed is not running")
        try:
            items = feed.stream()
        except FeedFull as exc:
            return _error(503, f"{exc}: close one and retry")

        async def body() -> AsyncIterator[bytes]:
            yield f"retry: {SSE_RETRY_MS}\n\n".encode()
            async for name, data in items:
                if name == "ping":
                    yield b": ping\n\n"
                else:
                    yield f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        headers = {**SECURITY_HEADERS, "cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    # -- browser calls -----------------------------------------------------------------

    async def web_call(self, request: Request) -> Response:
        """The "Talk to the agent" button: the browser's SDP offer in, the answer out (201)."""
        from api.app import WebCallRefused  # noqa: PLC0415 - api.app imports this module

        ctx = self.ctx
        if ctx.web is None:
            return _error(503, BROWSER_CALLS_OFF)
        if ctx.draining():
            return _error(503, "the daemon is stopping and takes no new calls")
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/sdp":
            return _error(400, "the body must be an SDP offer (Content-Type: application/sdp)")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_OFFER_BYTES):
            return _error(400, f"the SDP offer exceeds {MAX_OFFER_BYTES} bytes")
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_OFFER_BYTES:
                return _error(400, f"the SDP offer exceeds {MAX_OFFER_BYTES} bytes")
        try:
            sdp = body.decode("utf-8")
        except UnicodeDecodeError:
            return _error(400, "the SDP offer is not UTF-8 text")
        if not sdp.startswith("v=0"):
            return _error(400, "the body is not an SDP offer: it must start with v=0")
        name = request.state.token or "local"
        user_agent = request.headers.get("user-agent", "")[:256]
        try:
            call, answer = await ctx.web.offer(sdp, "agent", None, f"web:{name}", user_agent)
        except WebCallRefused as exc:
            return _error(exc.status, exc.detail)
        headers = {**SECURITY_HEADERS, "location": f"/web/calls/{call}"}
        return Response(answer, status_code=201, media_type="application/sdp", headers=headers)

    async def web_hangup(self, request: Request) -> Response:
        """End a browser call (nothing if it has ended)."""
        if self.ctx.web is None:
            return _error(503, BROWSER_CALLS_OFF)
        call = str(request.path_params["call"])
        await self.ctx.web.hangup(call)
        return _json(200, {"call": call, "status": "ended"})
