"""HTTP tools declared in ``[[agent.tools]]``: POST the model's arguments, hand back the JSON.

A failing tool is an answer for the model (``{"error": ...}``), never an exception for the call.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import httpx

from config.schema import HttpTool
from daemon.logs import get_logger

log = get_logger(__name__)


async def outcome(call_key: str, name: str, run: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    """What a tool call gives the model: its result, or the error it failed with."""
    try:
        return await run
    except Exception as exc:  # a failing tool is the model's problem, not the call's
        log.warning("agent.tool_failed", call_id=call_key, tool=name, error=str(exc))
        return {"error": str(exc) or type(exc).__name__}


class HttpTools:
    """One HTTP client per call, opened at the first tool call and closed with the call."""

    def __init__(self, call_key: str) -> None:
        self.call_key = call_key
        self._http: httpx.AsyncClient | None = None

    async def run(self, tool: HttpTool, arguments: dict[str, Any]) -> dict[str, Any]:
        if self._http is None:
            self._http = httpx.AsyncClient()
        headers = {"X-Sipai-Call": self.call_key}
        token = tool.bearer_token.get_secret_value()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            response = await self._http.post(
                tool.url, json=arguments, headers=headers, timeout=tool.timeout_seconds
            )
        except httpx.HTTPError as exc:
            return {"error": f"{tool.name}: {type(exc).__name__}: {exc}"}
        if not response.is_success:
            return {"error": f"{tool.name}: HTTP {response.status_code}: {response.text[:300]}"}
        try:
            result = response.json()
        except ValueError:
            return {"result": response.text[:4000]}
        return result if isinstance(result, dict) else {"result": result}

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
