"""What ``[agent]`` asks of a realtime session: the tools, the session settings, the routes."""

from __future__ import annotations

import fnmatch
from typing import Any

from config.schema import AgentSettings, ModelAudio, TurnDetectionKind
from daemon.legs.leg import CallInfo
from daemon.realtime.dialect import SessionConfig, Tool, TurnDetection
from media.codec import PCM24K, PCMU

END_CALL = Tool(
    "end_call",
    "Hang up the call. Say goodbye first; the call ends when your goodbye has been heard.",
    {"type": "object", "properties": {}, "additionalProperties": False},
)
SEND_DTMF = Tool(
    "send_dtmf",
    "Send telephone keypad tones to the other end (for example to navigate a menu).",
    {
        "type": "object",
        "properties": {"digits": {"type": "string", "pattern": "^[0-9*#A-D]{1,32}$"}},
        "required": ["digits"],
        "additionalProperties": False,
    },
)
TRANSFER_CALL = "transfer_call"
DTMF_DIGITS = "0123456789*#ABCD"


def transfer_targets(agent: AgentSettings) -> list[str]:
    """The extensions the caller may be transferred to, the default first (none: no tool)."""
    return [t for t in (agent.transfer_target, *agent.transfer_extensions) if t]


def _transfer_tool(agent: AgentSettings) -> Tool | None:
    targets = transfer_targets(agent)
    if not targets:
        return None
    extension: dict[str, Any] = {"type": "string", "enum": targets}
    return Tool(
        TRANSFER_CALL,
        "Transfer the caller to a colleague. Tell the caller first. Without an extension the "
        f"caller goes to {targets[0]}.",
        {
            "type": "object",
            "properties": {"extension": extension},
            "additionalProperties": False,
        },
    )


def _tools(agent: AgentSettings, kind: str = "sip") -> tuple[Tool, ...]:
    """The session's tools; a browser call (``kind`` "web") has no REFER and no keypad tones,
    so it is offered neither ``transfer_call`` nor ``send_dtmf``."""
    http = tuple(Tool(t.name, t.description, t.parameters) for t in agent.tools)
    if kind == "web":
        return (END_CALL, *http)
    transfer = _transfer_tool(agent)
    return (END_CALL, SEND_DTMF, *((transfer,) if transfer else ()), *http)


def session_config(agent: AgentSettings, kind: str = "sip") -> SessionConfig:
    """The session asked for by ``[agent]``, for a call leg of ``kind`` (:attr:`CallInfo.kind`)."""
    formats = {ModelAudio.PCMU: PCMU, ModelAudio.PCM24: PCM24K}
    detection: TurnDetection | None = None
    if agent.turn_detection is not TurnDetectionKind.NONE:
        detection = TurnDetection(
            type=agent.turn_detection.value,
            threshold=agent.vad_threshold,
            prefix_padding_ms=agent.vad_prefix_padding_ms,
            silence_duration_ms=agent.vad_silence_ms,
            eagerness=agent.vad_eagerness,
            create_response=True,
            interrupt_response=False,  # barge-in is decided here (guards), not by the server
        )
    return SessionConfig(
        instructions=agent.instructions,
        voice=agent.voice,
        input_format=formats[agent.input_format],
        output_format=formats[agent.output_format],
        turn_detection=detection,
        transcription_model=agent.transcription_model,
        tools=_tools(agent, kind),
    )


def for_call(agent: AgentSettings, call: CallInfo) -> tuple[AgentSettings, int | None]:
    """``agent`` with the first matching ``[[agent.routes]]`` applied; (settings, route index)."""
    for index, route in enumerate(agent.routes):
        if route.caller and not fnmatch.fnmatchcase(call.caller, route.caller):
            continue
        if route.header:
            name, _, value = route.header.partition(":")
            if call.headers.get(name.strip().lower()) != value.strip():
                continue
        changes: dict[str, Any] = {}
        if route.instructions:
            changes["instructions"] = route.instructions
        if route.greeting is not None:
            changes["greeting"] = route.greeting
        if route.voice:
            changes["voice"] = route.voice
        return agent.model_copy(update=changes), index
    return agent, None
