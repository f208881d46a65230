"""The two shapes of the OpenAI Realtime protocol, as pure mappings.

**GA** (the default): ``session.audio.input.format = {"type": "audio/pcmu"}``, events
``response.output_audio.delta``... **beta**: ``input_audio_format = "g711_ulaw"``, events
``response.audio.delta``... Everything else in the daemon works with :class:`SessionConfig`
and the events of :mod:`daemon.realtime.events`; only this module knows the wire shapes.
The official ``openai`` package's typed models check every shape in the tests.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, ClassVar

from daemon.realtime import events as ev
from media.codec import PCM24K, PCMA, PCMU, AudioFormat, Encoding

Json = dict[str, Any]


@dataclass(frozen=True)
class TurnDetection:
    type: str = "server_vad"  # server_vad | semantic_vad
    threshold: float | None = None  # server_vad knobs; None = the server's default
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    eagerness: str | None = None  # semantic_vad: low | medium | high | auto
    create_response: bool = True
    interrupt_response: bool = True


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: Json


@dataclass(frozen=True)
class SessionConfig:
    instructions: str
    voice: str
    input_format: AudioFormat = PCMU
    output_format: AudioFormat = PCMU
    turn_detection: TurnDetection | None = field(default_factory=TurnDetection)
    transcription_model: str = ""  # "" = no input transcription
    tools: tuple[Tool, ...] = ()


class Dialect:
    """What both dialects share; subclasses hold the differences."""

    name = ""
    audio_delta = ""
    audio_done = ""
    transcript_done = ""

    # -- client events -------------------------------------------------------------------

    def session_update(self, config: SessionConfig) -> Json:
        raise NotImplementedError

    def append(self, audio_b64: str) -> Json:
        return {"type": "input_audio_buffer.append", "audio": audio_b64}

    def truncate(self, item_id: str, audio_end_ms: int, content_index: int = 0) -> Json:
        return {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": content_index,
            "audio_end_ms": audio_end_ms,
        }

    def cancel(self) -> Json:
        return {"type": "response.cancel"}

    def respond(self, instructions: str = "") -> Json:
        return {"type": "response.create", "response": {"instructions": instructions}}

    def user_text(self, text: str) -> Json:
        return {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": text}],
            },
        }

    def assistant_text(self, text: str) -> Json:
        raise NotImplementedError

    def function_output(self, call_id: str, output: str) -> Json:
        return {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
        }

    # -- server events -------------------------------------------------------------------

    def parse_format(self, value: Any) -> AudioFormat | None:
        raise NotImplementedError

    def parse_session(self, session: Json, created: bool) -> ev.SessionReported:
        raise NotImplementedError

    def parse(self, event: Json) -> ev.ModelEvent:
        """A server event as a :data:`~daemon.realtime.events.ModelEvent`."""
        kind = str(event.get("type", ""))
        if kind in ("session.created", "session.updated"):
            return self.parse_session(event.get("session") or {}, kind == "session.created")
        if kind == self.audio_delta:
            return ev.AudioDelta(
                str(event.get("response_id", "")),
                str(event["item_id"]),
                int(event.get("content_index", 0)),
                _b64decode(event.get("delta", "")),
            )
        if kind == self.audio_done:
            return ev.AudioDone(str(event.get("response_id", "")), str(event["item_id"]))
        if kind == self.transcript_done:
            return ev.AgentTranscript(str(event["item_id"]), str(event.get("transcript") or ""))
        if kind == "conversation.item.input_audio_transcription.completed":
            return ev.CallerTranscript(str(event["item_id"]), str(event.get("transcript") or ""))
        if kind == "input_audio_buffer.speech_started":
            return ev.SpeechStarted(
                int(event.get("audio_start_ms", 0)), str(event.get("item_id", ""))
            )
        if kind == "input_audio_buffer.speech_stopped":
            return ev.SpeechStopped(
                int(event.get("audio_end_ms", 0)), str(event.get("item_id", ""))
            )
        if kind == "response.created":
            return ev.ResponseCreated(str((event.get("response") or {}).get("id", "")))
        if kind == "response.done":
            response = event.get("response") or {}
            details = response.get("status_details") or {}
            error = details.get("error") or details.get("reason") or ""
            return ev.ResponseDone(
                str(response.get("id", "")), str(response.get("status", "")), str(error)
            )
        if kind == "response.output_item.done":
            item = event.get("item") or {}
            if item.get("type") == "function_call":
                return ev.FunctionCall(
                    str(item.get("call_id", "")),
                    str(item.get("name", "")),
                    str(item.get("arguments") or "{}"),
                    str(item.get("id", "")),
                )
        if kind == "error":
            error = event.get("error") or {}
            return ev.ServerError(
                str(error.get("type", "")),
                str(error.get("code") or ""),
                str(error.get("message", "")),
            )
        return ev.Other(kind)


class GaDialect(Dialect):
    name = "ga"
    audio_delta = "response.output_audio.delta"
    audio_done = "response.output_audio.done"
    transcript_done = "response.output_audio_transcript.done"

    def session_update(self, config: SessionConfig) -> Json:
        audio_in: Json = {
            "format": _ga_format(config.input_format),
            "turn_detection": _turn_detection(config.turn_detection),
        }
        if config.transcription_model:
            audio_in["transcription"] = {"model": config.transcription_model}
        session: Json = {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": config.instructions,
            "audio": {
                "input": audio_in,
                "output": {"format": _ga_format(config.output_format), "voice": config.voice},
            },
            "tools": [_tool(t) for t in config.tools],
            "tool_choice": "auto",
        }
        return {"type": "session.update", "session": session}

    def assistant_text(self, text: str) -> Json:
        return {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text}],
            },
        }

    def parse_format(self, value: Any) -> AudioFormat | None:
        if not isinstance(value, dict):
            return None
        kind = value.get("type")
        if kind == "audio/pcmu":
            return PCMU
        if kind == "audio/pcma":
            return PCMA
        if kind == "audio/pcm":
            return AudioFormat(Encoding.PCM16, int(value.get("rate") or 24000))
        return None

    def parse_session(self, session: Json, created: bool) -> ev.SessionReported:
        audio = session.get("audio") or {}
        audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
        return ev.SessionReported(
            created=created,
            input_format=self.parse_format(audio_in.get("format")),
            output_format=self.parse_format(audio_out.get("format")),
            voice=audio_out.get("voice"),
            instructions=session.get("instructions"),
            tools=tuple(str(t.get("name", "")) for t in session.get("tools") or ()),
            raw=session,
        )


class BetaDialect(Dialect):
    name = "beta"
    audio_delta = "response.audio.delta"
    audio_done = "response.audio.done"
    transcript_done = "response.audio_transcript.done"
    _names: ClassVar[dict[str, AudioFormat]] = {
        "g711_ulaw": PCMU,
        "g711_alaw": PCMA,
        "pcm16": PCM24K,
    }

    def session_update(self, config: SessionConfig) -> Json:
        session: Json = {
            "modalities": ["audio", "text"],
            "instructions": config.instructions,
            "voice": config.voice,
            "input_audio_format": self._name(config.input_format),
            "output_audio_format": self._name(config.output_format),
            "input_audio_transcription": (
                {"model": config.transcription_model} if config.transcription_model else None
            ),
            "turn_detection": _turn_detection(config.turn_detection),
            "tools": [_tool(t) for t in config.tools],
            "tool_choice": "auto",
        }
        return {"type": "session.update", "session": session}

    def assistant_text(self, text: str) -> Json:
        return {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": text}],
            },
        }

    def _name(self, fmt: AudioFormat) -> str:
        for name, known in self._names.items():
            if known == fmt:
                return name
        raise ValueError(f"the beta protocol has no name for {fmt}")

    def parse_format(self, value: Any) -> AudioFormat | None:
        return self._names.get(value) if isinstance(value, str) else None

    def parse_session(self, session: Json, created: bool) -> ev.SessionReported:
        return ev.SessionReported(
            created=created,
            input_format=self.parse_format(session.get("input_audio_format")),
            output_format=self.parse_format(session.get("output_audio_format")),
            voice=session.get("voice"),
            instructions=session.get("instructions"),
            tools=tuple(str(t.get("name", "")) for t in session.get("tools") or ()),
            raw=session,
        )


DIALECTS: dict[str, Dialect] = {"ga": GaDialect(), "beta": BetaDialect()}


def _ga_format(fmt: AudioFormat) -> Json:
    if fmt == PCMU:
        return {"type": "audio/pcmu"}
    if fmt == PCMA:
        return {"type": "audio/pcma"}
    if fmt.encoding is Encoding.PCM16 and fmt.rate == 24000:
        return {"type": "audio/pcm", "rate": 24000}
    raise ValueError(f"the realtime protocol has no format for {fmt}")


def _turn_detection(detection: TurnDetection | None) -> Json | None:
    if detection is None:
        return None
    shape: Json = {
        "type": detection.type,
        "create_response": detection.create_response,
        "interrupt_response": detection.interrupt_response,
    }
    if detection.type == "semantic_vad":
        if detection.eagerness:
            shape["eagerness"] = detection.eagerness
        return shape
    for key in ("threshold", "prefix_padding_ms", "silence_duration_ms"):
        value = getattr(detection, key)
        if value is not None:
            shape[key] = value
    return shape


def _tool(tool: Tool) -> Json:
    return {
        "type": "function",
        "name": tool.name,
        "description": tool.description,
        "parameters": tool.parameters,
    }


def _b64decode(value: Any) -> bytes:
    return base64.b64decode(str(value)) if value else b""
