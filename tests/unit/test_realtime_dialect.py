"""The GA and beta dialects against the official ``openai`` package's typed models."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from daemon.realtime import events as ev
from daemon.realtime.client import FailureKind, RealtimeError, server_failure
from daemon.realtime.dialect import DIALECTS, SessionConfig, Tool, TurnDetection
from media.codec import PCM24K, PCMU
from tests.realtime_oracle import check_client_event, check_server_event

CONFIG = SessionConfig(
    instructions="You answer the phone for a dental practice.",
    voice="marin",
    input_format=PCMU,
    output_format=PCM24K,
    turn_detection=TurnDetection(threshold=0.6, prefix_padding_ms=300, silence_duration_ms=500),
    transcription_model="whisper-1",
    tools=(
        Tool("end_call", "Hang up.", {"type": "object", "properties": {}}),
        Tool(
            "transfer_call",
            "Transfer.",
            {"type": "object", "properties": {"target": {"type": "string"}}},
        ),
    ),
)


def _client_events(dialect: str) -> list[dict[str, Any]]:
    d = DIALECTS[dialect]
    semantic = SessionConfig(
        "x", "alloy", turn_detection=TurnDetection("semantic_vad", eagerness="low")
    )
    return [
        d.session_update(CONFIG),
        d.session_update(semantic),
        d.session_update(SessionConfig("x", "alloy", turn_detection=None)),
        d.append(base64.b64encode(b"\xff" * 160).decode()),
        d.truncate("item_1", 1234),
        d.cancel(),
        d.respond("Greet the caller."),
        d.user_text("The caller pressed 5."),
        d.assistant_text("Hello, how can I help?"),
        d.function_output("call_1", '{"ok": true}'),
    ]


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_every_client_event_is_valid(dialect: str) -> None:
    for event in _client_events(dialect):
        check_client_event(event, dialect)


def test_the_oracle_tells_the_dialects_apart() -> None:
    """A GA session.update is not a beta one and the other way round (the check has teeth)."""
    with pytest.raises(ValueError, match="fields the beta protocol lacks"):
        check_client_event(DIALECTS["ga"].session_update(CONFIG), "beta")
    with pytest.raises(ValueError, match="validation error"):
        check_client_event(DIALECTS["beta"].session_update(CONFIG), "ga")


def test_session_shapes() -> None:
    ga = DIALECTS["ga"].session_update(CONFIG)["session"]
    assert ga["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert ga["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert ga["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
    assert ga["audio"]["input"]["transcription"] == {"model": "whisper-1"}
    beta = DIALECTS["beta"].session_update(CONFIG)["session"]
    assert (beta["input_audio_format"], beta["output_audio_format"]) == ("g711_ulaw", "pcm16")
    assert beta["input_audio_transcription"] == {"model": "whisper-1"}


def _server(dialect: str, event: dict[str, Any]) -> ev.ModelEvent:
    """Validate ``event`` as the server would send it, then parse it."""
    check_server_event(event, dialect)
    return DIALECTS[dialect].parse(event)


@pytest.mark.parametrize(
    ("dialect", "delta", "transcript"),
    [
        ("ga", "response.output_audio.delta", "response.output_audio_transcript.done"),
        ("beta", "response.audio.delta", "response.audio_transcript.done"),
    ],
)
def test_server_events_are_understood(dialect: str, delta: str, transcript: str) -> None:
    common = {"event_id": "e", "response_id": "r1", "item_id": "i1", "output_index": 0}
    audio = _server(
        dialect,
        {"type": delta, **common, "content_index": 0, "delta": base64.b64encode(b"ab").decode()},
    )
    assert audio == ev.AudioDelta("r1", "i1", 0, b"ab")
    said = _server(
        dialect, {"type": transcript, **common, "content_index": 0, "transcript": "Hello."}
    )
    assert said == ev.AgentTranscript("i1", "Hello.")
    started = _server(
        dialect,
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": "e",
            "audio_start_ms": 1500,
            "item_id": "i2",
        },
    )
    assert started == ev.SpeechStarted(1500, "i2")
    heard = _server(
        dialect,
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": "e",
            "item_id": "i2",
            "content_index": 0,
            "transcript": "I need an appointment.",
            "usage": {"type": "duration", "seconds": 2},
        },
    )
    assert heard == ev.CallerTranscript("i2", "I need an appointment.")
    call = _server(
        dialect,
        {
            "type": "response.output_item.done",
            "event_id": "e",
            "response_id": "r1",
            "output_index": 0,
            "item": {
                "id": "i3",
                "type": "function_call",
                "call_id": "c1",
                "name": "end_call",
                "arguments": "{}",
                "status": "completed",
                **({"object": "realtime.item"} if dialect == "beta" else {}),
            },
        },
    )
    assert call == ev.FunctionCall("c1", "end_call", "{}", "i3")
    error = _server(
        dialect,
        {
            "type": "error",
            "event_id": "e",
            "error": {"type": "server_error", "code": "x", "message": "boom"},
        },
    )
    assert error == ev.ServerError("server_error", "x", "boom")


def test_session_updated_reports_the_formats() -> None:
    ga = DIALECTS["ga"].parse(
        {"type": "session.updated", "session": DIALECTS["ga"].session_update(CONFIG)["session"]}
    )
    assert isinstance(ga, ev.SessionReported)
    assert (ga.input_format, ga.output_format, ga.voice) == (PCMU, PCM24K, "marin")
    assert ga.tools == ("end_call", "transfer_call")
    beta = DIALECTS["beta"].parse(
        {"type": "session.created", "session": {"input_audio_format": "pcm16"}}
    )
    assert isinstance(beta, ev.SessionReported)
    assert (beta.created, beta.input_format, beta.output_format) == (True, PCM24K, None)


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_events_of_no_use_are_other(dialect: str) -> None:
    """Event types the call code has no parser for, and output items that are not function
    calls, parse as Other with their type."""
    d = DIALECTS[dialect]
    assert d.parse({"type": "rate_limits.updated", "rate_limits": []}) == ev.Other(
        "rate_limits.updated"
    )
    other_delta = DIALECTS["beta" if dialect == "ga" else "ga"].audio_delta
    assert d.parse({"type": other_delta, "item_id": "i", "delta": ""}) == ev.Other(other_delta)
    message = {"type": "response.output_item.done", "item": {"type": "message", "id": "i"}}
    assert d.parse(message) == ev.Other("response.output_item.done")


RETRYABLE = {
    (FailureKind.CONNECT, 0): True,
    (FailureKind.TIMEOUT, 0): True,
    **{(FailureKind.CLOSED, code): True for code in (1006, 1011, 1012, 1013)},
    **{(FailureKind.CLOSED, code): False for code in (0, 1000, 1001, 1008, 4000)},
    **{
        (kind, code): False
        for kind in (
            FailureKind.AUTH,
            FailureKind.RATE_LIMIT,
            FailureKind.PROTOCOL,
            FailureKind.MISMATCH,
        )
        for code in (0, 401, 429, 1006, 1011)
    },
}


def test_only_connect_timeout_and_some_closes_are_retryable() -> None:
    """A new session is tried for connect and timeout failures and for closes 1006, 1011,
    1012 and 1013 only; the kinds keep the strings logs and call records carry."""
    table = {(kind, code): kind.retryable(code) for kind, code in RETRYABLE}
    assert table == RETRYABLE
    assert [k.value for k in FailureKind] == [
        "auth",
        "rate_limit",
        "connect",
        "timeout",
        "closed",
        "protocol",
        "mismatch",
    ]
    error = RealtimeError(FailureKind.CLOSED, "the realtime socket closed: 1011", 1011)
    assert (error.kind, error.retryable, f"model {error.kind}") == (
        "closed",
        True,
        "model closed",
    )


def test_server_failure_classifies_error_events() -> None:
    """A server_error is a retryable 1011 loss, a rate limit ends the session (not
    retryable), any other error event leaves the session up."""
    lost = server_failure(ev.ServerError("server_error", "", "boom"))
    assert lost is not None
    assert (lost.kind, lost.code, lost.retryable, str(lost)) == (
        FailureKind.CLOSED,
        1011,
        True,
        "server_error: boom",
    )
    limited = server_failure(ev.ServerError("requests", "rate_limit_exceeded", "slow down"))
    assert limited is not None
    assert (limited.kind, limited.retryable, str(limited)) == (
        FailureKind.RATE_LIMIT,
        False,
        "rate_limit_exceeded: slow down",
    )
    bad = ev.ServerError("invalid_request_error", "item_not_found", "no item")
    assert server_failure(bad) is None
