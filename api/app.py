"""The Starlette application. Routes read the supervisor's state through one narrow door.

The contract is ``shared`` OpenAPI's ``/health``: ``status`` (healthy / unhealthy) and
``sip_registered``; we add ``version`` and ``uptime_seconds``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


@dataclass(frozen=True)
class HealthReport:
    status: Literal["healthy", "unhealthy"]
    sip_registered: bool
    version: str
    uptime_seconds: float
    active_calls: int
    queued_calls: int
    workers: list[dict[str, Any]]  # per SIP worker: up, registered, calls, restarts...


HealthSource = Callable[[], HealthReport]


def create_app(health: HealthSource) -> Starlette:
    """Build the app; ``health`` is called on the loop thread for every ``GET /health``."""

    async def get_health(request: Request) -> JSONResponse:
        return JSONResponse(asdict(health()))

    return Starlette(routes=[Route("/health", get_health, methods=["GET"])])
