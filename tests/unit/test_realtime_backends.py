"""Where each backend connects and how it authenticates."""

from __future__ import annotations

from typing import Any

import pytest

from config.schema import AgentSettings, ApiSettings
from daemon.realtime.backends import call_endpoints, endpoint, fallback_endpoint


def _agent(**values: Any) -> AgentSettings:
    return AgentSettings.model_validate(values)


@pytest.mark.parametrize(
    ("agent", "url", "headers"),
    [
        (
            {"backend": "openai", "api_key": "sk-1"},
            "wss://api.openai.com/v1/realtime?model=gpt-realtime",
            {"Authorization": "Bearer sk-1"},
        ),
        (
            {
                "backend": "openai",
                "api_key": "sk-1",
                "model": "gpt-4o-realtime-preview",
                "dialect": "beta",
            },
            "wss://api.openai.com/v1/realtime?model=gpt-4o-realtime-preview",
            {"Authorization": "Bearer sk-1", "OpenAI-Beta": "realtime=v1"},
        ),
        (
            {
                "backend": "azure",
                "api_key": "az",
                "url": "https://res.openai.azure.com",
                "model": "dep",
            },
            "wss://res.openai.azure.com/openai/v1/realtime?model=dep",
            {"api-key": "az"},
        ),
        (
            {
                "backend": "azure",
                "api_key": "az",
                "url": "https://res.openai.azure.com/",
                "model": "dep",
                "dialect": "beta",
            },
            "wss://res.openai.azure.com/openai/realtime?api-version=2025-04-01-preview&deployment=dep",
            {"api-key": "az"},
        ),
        (
            {"backend": "url", "url": "https://llm.lan/v1/realtime", "model": "m"},
            "wss://llm.lan/v1/realtime?model=m",
            {},
        ),
        (
            {
                "backend": "url",
                "url": "ws://127.0.0.1:9/v1/realtime?model=x",
                "api_key": "k",
                "model": "m",
            },
            "ws://127.0.0.1:9/v1/realtime?model=x",
            {"Authorization": "Bearer k"},
        ),
        ({"backend": "local"}, "ws://127.0.0.1:8080/v1/realtime", {}),
    ],
)
def test_url_and_headers(agent: dict[str, Any], url: str, headers: dict[str, str]) -> None:
    found = endpoint(_agent(**agent), ApiSettings())
    assert (found.url, found.headers) == (url, headers)
    assert found.dialect.name == agent.get("dialect", "ga")


def test_local_uses_the_api_port_and_token() -> None:
    api = ApiSettings.model_validate({"host": "::", "port": 9000, "token": "t"})
    found = endpoint(_agent(), api)
    assert (found.url, found.headers) == (
        "ws://[::1]:9000/v1/realtime",
        {"Authorization": "Bearer t"},
    )


def test_local_without_api_token_uses_a_named_token() -> None:
    """With only named tokens, the workers reach the engine with the first one by name."""
    api = ApiSettings.model_validate({"tokens": {"ops": "t-ops", "crm": "t-crm"}})
    assert endpoint(_agent(), api).headers == {"Authorization": "Bearer t-crm"}


def test_the_fallback_is_the_engine_in_ga_naming_the_call() -> None:
    """fallback = "local" on a cloud backend: the engine on the API port with the API token,
    in the GA protocol whatever the cloud's dialect; both endpoints of a call on the engine
    name the call; no fallback without the setting, or when the backend is the engine."""
    api = ApiSettings.model_validate({"port": 9000, "token": "t"})
    cloud = _agent(backend="openai", api_key="sk-1", dialect="beta", fallback="local")
    target, fallback = call_endpoints(cloud, api, "0:c1")
    assert target == endpoint(cloud, api)
    assert fallback is not None
    assert (fallback.url, fallback.dialect.name) == ("ws://127.0.0.1:9000/v1/realtime", "ga")
    assert fallback.headers == {"Authorization": "Bearer t", "X-Sipai-Call": "0:c1"}
    assert fallback_endpoint(_agent(backend="openai", api_key="sk-1"), api) is None
    local = _agent(fallback="local")
    assert fallback_endpoint(local, api) is None
    target, fallback = call_endpoints(local, api, "1:c2")
    assert (target.headers["X-Sipai-Call"], fallback) == ("1:c2", None)
