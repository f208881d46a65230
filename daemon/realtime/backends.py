"""Where a realtime session connects and how it authenticates, from ``[agent]``.

- ``openai``: ``wss://api.openai.com/v1/realtime?model=M``, ``Authorization: Bearer``
  (beta adds ``OpenAI-Beta: realtime=v1``).
- ``azure``: GA ``wss://RESOURCE.openai.azure.com/openai/v1/realtime?model=DEPLOYMENT``;
  beta ``.../openai/realtime?api-version=2025-04-01-preview&deployment=DEPLOYMENT``; both
  with an ``api-key`` header.
- ``url``: the URL as given (``?model=`` added when a model is set), Bearer when a key is set.
- ``local``: the embedded engine at ``/v1/realtime`` on the daemon's own API port.

:func:`fallback_endpoint` is that engine as the failover of a cloud backend
(``fallback = "local"``); it speaks the GA protocol whatever ``dialect`` the cloud has.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import urlencode, urlsplit, urlunsplit

from config.schema import AgentSettings, ApiSettings, Backend, Fallback
from config.schema import Dialect as DialectName
from daemon.realtime.client import Endpoint
from daemon.realtime.dialect import DIALECTS

OPENAI_URL = "wss://api.openai.com/v1/realtime"
OPENAI_MODEL = "gpt-realtime"
AZURE_BETA_API_VERSION = "2025-04-01-preview"


def endpoint(agent: AgentSettings, api: ApiSettings) -> Endpoint:
    dialect = DIALECTS[agent.dialect.value]
    key = agent.api_key.get_secret_value()
    beta = agent.dialect is DialectName.BETA
    headers: dict[str, str] = {}
    if agent.backend is Backend.OPENAI:
        url = _with_query(OPENAI_URL, model=agent.model or OPENAI_MODEL)
        headers["Authorization"] = f"Bearer {key}"
        if beta:
            headers["OpenAI-Beta"] = "realtime=v1"
    elif agent.backend is Backend.AZURE:
        host = urlsplit(agent.url).netloc or agent.url
        # wss unless the endpoint is given as plain http:// or ws:// (a local gateway).
        scheme = "ws" if agent.url.startswith(("http://", "ws://")) else "wss"
        if beta:
            url = _with_query(
                f"{scheme}://{host}/openai/realtime",
                **{"api-version": AZURE_BETA_API_VERSION, "deployment": agent.model},
            )
        else:
            url = _with_query(f"{scheme}://{host}/openai/v1/realtime", model=agent.model)
        headers["api-key"] = key
    elif agent.backend is Backend.URL:
        url = _ws(agent.url)
        if agent.model and "model=" not in url:
            url = _with_query(url, model=agent.model)
        if key:
            headers["Authorization"] = f"Bearer {key}"
    else:
        # The API's own listening address; a wildcard bind is reached over loopback.
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]", "::1": "[::1]"}.get(  # noqa: S104
            api.host, api.host
        )
        url = f"ws://{host}:{api.port}/v1/realtime"
        # api.token, else the first named token: the engine takes any token the API takes.
        token = next(iter(api.named_tokens.values()), "")
        if token:
            headers["Authorization"] = f"Bearer {token}"
    return Endpoint(url, headers, dialect)


def fallback_endpoint(agent: AgentSettings, api: ApiSettings) -> Endpoint | None:
    """The embedded engine a call fails over to, or None (no fallback, or the backend is
    the engine already)."""
    if agent.fallback is not Fallback.LOCAL or agent.backend is Backend.LOCAL:
        return None
    local = agent.model_copy(update={"backend": Backend.LOCAL, "dialect": DialectName.GA})
    return endpoint(local, api)


def call_endpoints(
    agent: AgentSettings, api: ApiSettings, call: str
) -> tuple[Endpoint, Endpoint | None]:
    """A call's endpoint and its fallback; one on the embedded engine names the call
    (``call``, "worker:call", in ``X-Sipai-Call``) so the engine files its message under it."""

    def named(target: Endpoint) -> Endpoint:
        return dataclasses.replace(target, headers={**target.headers, "X-Sipai-Call": call})

    target = endpoint(agent, api)
    if agent.backend is Backend.LOCAL:
        target = named(target)
    fallback = fallback_endpoint(agent, api)
    return target, named(fallback) if fallback is not None else None


def _ws(url: str) -> str:
    """http(s) URLs are accepted for WebSocket servers and mapped to ws(s)."""
    if url.startswith("https://"):
        return "wss://" + url.removeprefix("https://")
    if url.startswith("http://"):
        return "ws://" + url.removeprefix("http://")
    return url


def _with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
