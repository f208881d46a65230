"""Per-call session settings: [[agent.routes]] matched on the caller and INVITE headers."""

from __future__ import annotations

from config.schema import AgentSettings
from daemon.calls.agent_config import for_call, session_config
from daemon.legs.leg import CallInfo

AGENT = AgentSettings.model_validate(
    {
        "instructions": "Default desk.",
        "greeting": "Hello.",
        "voice": "alloy",
        "routes": [
            {"header": "X-Queue: sales", "instructions": "Sales desk.", "greeting": ""},
            {"caller": "+44*", "voice": "marin"},
        ],
    }
)


def _call(caller: str, **headers: str) -> CallInfo:
    return CallInfo("w0-1", True, "sip-1", caller, "", f"sip:{caller}@pbx", headers)


def test_first_matching_route_applies() -> None:
    sales, index = for_call(AGENT, _call("+4420", **{"x-queue": "sales"}))
    assert index == 0
    assert (sales.instructions, sales.greeting, sales.voice) == ("Sales desk.", "", "alloy")
    uk, index = for_call(AGENT, _call("+4420"))
    assert index == 1
    assert (uk.instructions, uk.greeting, uk.voice) == ("Default desk.", "Hello.", "marin")
    assert session_config(uk).voice == "marin"


def test_no_route_keeps_the_defaults() -> None:
    agent, index = for_call(AGENT, _call("1001", **{"x-queue": "support"}))
    assert index is None
    assert agent is AGENT


def test_a_browser_call_is_offered_neither_transfer_nor_dtmf() -> None:
    """With transfer targets set, a SIP call's session has transfer_call and send_dtmf, a
    browser call's only end_call and the HTTP tools."""
    agent = AgentSettings.model_validate(
        {
            "transfer_target": "2000",
            "tools": [{"name": "lookup", "description": "Find an order.", "url": "http://x/"}],
        }
    )
    sip = CallInfo("w0-1", True, "sip-1", "1001")
    web = CallInfo("web-1", True, "webrtc:1", "web:local", kind="web")
    sip_tools = [t.name for t in session_config(agent, sip.kind).tools]
    web_tools = [t.name for t in session_config(agent, web.kind).tools]
    assert sip_tools == ["end_call", "send_dtmf", "transfer_call", "lookup"]
    assert web_tools == ["end_call", "lookup"]
