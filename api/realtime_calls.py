"""OpenAI's realtime WebRTC routes for the embedded engine, and its ephemeral keys.

Routes (table in :func:`api.app.create_app`): ``POST /v1/realtime/calls`` (an SDP offer in,
201 with the answer out), ``POST /v1/realtime/calls/{call_id}/hangup`` and
``POST /v1/realtime/client_secrets``. Until they are built each answers 501 with a detail.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

if TYPE_CHECKING:
    from api.app import ApiContext


def _not_built(what: str) -> Response:
    return JSONResponse({"detail": f"{what} is not available in this build"}, status_code=501)


class RealtimeCalls:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    async def create_call(self, request: Request) -> Response:
        return _not_built("realtime sessions over WebRTC")

    async def hangup(self, request: Request) -> Response:
        return _not_built("realtime sessions over WebRTC")

    async def client_secret(self, request: Request) -> Response:
        return _not_built("ephemeral keys")
