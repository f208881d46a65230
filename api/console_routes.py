"""The web console's routes: its pages, login, live feed, and browser calls to the agent.

Routes (table in :func:`api.app.create_app`): ``GET /``, ``GET /login``, ``POST /login``,
``POST /logout``, ``GET /console/session``, ``GET /console/events`` (SSE),
``GET /console/static/{file}``, ``POST /web/calls`` and ``DELETE /web/calls/{call}``.
Until they are built each answers 501 with a detail.

The page's DOM hooks, which the browser tests drive and the console keeps:
``#login-token`` (the token field) and ``#login-submit`` on the login page; on the console,
``#talk`` (the "Talk to the agent" button), ``#hangup``, ``#call-state`` (the browser call's
state as text), one ``tr[data-call-id]`` row per call in the live and history tables
(with ``data-direction``), and the ``.badge-web`` direction badge of a browser call's row.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from api.app import ApiContext


def _not_built(what: str) -> Response:
    return JSONResponse({"detail": f"{what} is not available in this build"}, status_code=501)


class ConsoleRoutes:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def index(self, request: Request) -> Response:
        return _not_built("the console")

    async def login_page(self, request: Request) -> Response:
        return _not_built("the console login")

    async def login(self, request: Request) -> Response:
        return _not_built("the console login")

    async def logout(self, request: Request) -> Response:
        return _not_built("the console logout")

    async def session(self, request: Request) -> Response:
        return _not_built("the console session")

    async def events(self, request: Request) -> Response:
        return _not_built("the console's live feed")

    async def static(self, request: Request) -> Response:
        return _not_built("the console's files")

    async def web_call(self, request: Request) -> Response:
        return _not_built("browser calls")

    async def web_hangup(self, request: Request) -> Response:
        return _not_built("browser calls")
