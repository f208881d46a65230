"""The two shapes of the OpenAI Realtime protocol, as pure mappings.

**GA** (the default): ``session.audio.input.format = {"type": "audio/pcmu"}``, events
``response.output_audio.delta``... **beta**: ``input_audio_format = "g711_ulaw"``, events
``response.audio.delta``... Everything else in the daemon works with :class:`SessionConfig`
and the events of :mod:`daemon.realtime.events`; only this module knows the wire shapes.
Both ends use it: the client (:mod:`daemon.realtime.client`) sends ``session.update`` and
parses server events, the embedded engine (:mod:`daemon.engine`) reads ``session.update``,
reports its :class:`SessionSettings` in the same shape and names its events through
:meth:`Dialect.event`. The official ``openai`` package's typed models check every shape in
the tests.
"""

from __future__ import annotations

import base64
import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, ClassVar

from daemon.realtime import events as ev
from media.codec import PCM24K, PCMA, PCMU, AudioFormat, Encoding

Json = dict[str, Any]
Parser = Callable[[Json], ev.ModelEvent]
SERVED_FORMATS = (PCMU, PCM24K)  # what the embedded engine takes and speaks


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


def _server_vad() -> Json:
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }


@dataclass(frozen=True)
class SessionSettings:
    """A session as the server side holds it, in neither dialect's shape.

    The formats are typed; turn detection, transcription and tools stay the JSON the client
    sent (the engine reads only some knobs and reports back the rest as given).
    """

    instructions: str = ""
    voice: str = "alloy"
    input_format: AudioFormat = PCMU
    output_format: AudioFormat = PCMU
    turn_detection: Json | None = field(default_factory=_server_vad)
    transcription: Json | None = None
    tools: tuple[Json, ...] = ()


class Dialect(ABC):
    """What both dialects share; subclasses hold the differences."""

    name = ""
    audio_delta = ""
    audio_done = ""
    transcript_delta = ""
    transcript_done = ""
    content_type_audio = ""  # the content part of a spoken assistant item
    content_type_text = ""  # the content part of an assistant text item
    names_function_arguments = True  # response.function_call_arguments.done carries "name"
    served_names = ""  # the formats the engine serves, for its error messages

    # -- client events -------------------------------------------------------------------

    def session_update(self, config: SessionConfig) -> Json:
        settings = SessionSettings(
            instructions=config.instructions,
            voice=config.voice,
            input_format=config.input_format,
            output_format=config.output_format,
            turn_detection=_turn_detection(config.turn_detection),
            transcription=(
                {"model": config.transcription_model} if config.transcription_model else None
            ),
            tools=tuple(_tool(t) for t in config.tools),
        )
        return {"type": "session.update", "session": self.session_shape(settings)}

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
        return _message("user", "input_text", text)

    def assistant_text(self, text: str) -> Json:
        return _message("assistant", self.content_type_text, text)

    def function_output(self, call_id: str, output: str) -> Json:
        return {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
        }

    # -- both ends -----------------------------------------------------------------------

    @abstractmethod
    def session_shape(self, settings: SessionSettings, session_id: str = "") -> Json:
        """The ``session`` object of ``session.update`` (client) or ``session.updated``."""

    # -- server events -------------------------------------------------------------------

    @abstractmethod
    def parse_format(self, value: Any) -> AudioFormat | None:
        """An audio format as this dialect writes it; None if absent or unknown."""

    def parse_session(self, session: Json, created: bool) -> ev.SessionReported:
        audio = self._audio_keys(session)
        return ev.SessionReported(
            created=created,
            input_format=self.parse_format(audio.get("input_format")),
            output_format=self.parse_format(audio.get("output_format")),
            voice=audio.get("voice"),
            instructions=session.get("instructions"),
            tools=tuple(str(t.get("name", "")) for t in session.get("tools") or ()),
            raw=session,
        )

    def _audio_keys(self, session: Json) -> Json:
        """The audio settings present in ``session`` under neutral names: input_format,
        output_format, voice, turn_detection, transcription."""
        raise NotImplementedError

    def parse(self, event: Json) -> ev.ModelEvent:
        """A server event as a :data:`~daemon.realtime.events.ModelEvent`."""
        kind = str(event.get("type", ""))
        parser = self._parsers.get(kind)
        return parser(event) if parser is not None else ev.Other(kind)

    @cached_property
    def _parsers(self) -> dict[str, Parser]:
        """Server event type -> its parser; the dialect's names come from its attributes."""
        return {
            "session.created": lambda e: self.parse_session(e.get("session") or {}, True),
            "session.updated": lambda e: self.parse_session(e.get("session") or {}, False),
            self.audio_delta: _audio_delta,
            self.audio_done: _audio_done,
            self.transcript_done: _agent_transcript,
            "conversation.item.input_audio_transcription.completed": _caller_transcript,
            "input_audio_buffer.speech_started": _speech_started,
            "input_audio_buffer.speech_stopped": _speech_stopped,
            "response.created": _response_created,
            "response.done": _response_done,
            "response.output_item.done": _output_item_done,
            "error": _server_error,
        }

    # -- the server side (the embedded engine) -------------------------------------------

    def event(self, type_ga: str) -> str:
        """This dialect's name for the server event called ``type_ga`` in GA."""
        return self._renames.get(type_ga, type_ga)

    @cached_property
    def _renames(self) -> dict[str, str]:
        names = ("audio_delta", "audio_done", "transcript_delta", "transcript_done")
        return {getattr(GaDialect, n): getattr(self, n) for n in names}

    def read_session_update(self, session: Json, settings: SessionSettings) -> SessionSettings:
        """``settings`` with what a client's ``session.update`` changes (absent keys keep
        theirs); ValueError for a format the engine does not serve."""
        audio = self._audio_keys(session)
        changes: Json = {"voice": str(audio.get("voice") or settings.voice)}
        if "instructions" in session:
            changes["instructions"] = str(session["instructions"] or "")
        if "tools" in session:
            changes["tools"] = tuple(session["tools"] or ())
        for key in ("input_format", "output_format"):
            if key in audio:
                changes[key] = self._served(audio[key])
        for key in ("turn_detection", "transcription"):
            if key in audio:
                changes[key] = audio[key]
        return dataclasses.replace(settings, **changes)

    def _served(self, value: Any) -> AudioFormat:
        fmt = self.parse_format(value)
        if fmt not in SERVED_FORMATS:
            raise ValueError(f"unsupported audio format {value!r}: {self.served_names}")
        return fmt


class GaDialect(Dialect):
    name = "ga"
    audio_delta = "response.output_audio.delta"
    audio_done = "response.output_audio.done"
    transcript_delta = "response.output_audio_transcript.delta"
    transcript_done = "response.output_audio_transcript.done"
    content_type_audio = "output_audio"
    content_type_text = "output_text"
    served_names = "audio/pcmu or audio/pcm 24 kHz"

    def session_shape(self, settings: SessionSettings, session_id: str = "") -> Json:
        audio_in: Json = {
            "format": _ga_format(settings.input_format),
            "turn_detection": settings.turn_detection,
        }
        if settings.transcription:
            audio_in["transcription"] = settings.transcription
        return {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": settings.instructions,
            "audio": {
                "input": audio_in,
                "output": {"format": _ga_format(settings.output_format), "voice": settings.voice},
            },
            "tools": list(settings.tools),
            "tool_choice": "auto",
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

    def _audio_keys(self, session: Json) -> Json:
        audio = session.get("audio") or {}
        audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
        where = {
            "input_format": (audio_in, "format"),
            "turn_detection": (audio_in, "turn_detection"),
            "transcription": (audio_in, "transcription"),
            "output_format": (audio_out, "format"),
            "voice": (audio_out, "voice"),
        }
        return {name: part[key] for name, (part, key) in where.items() if key in part}


class BetaDialect(Dialect):
    name = "beta"
    audio_delta = "response.audio.delta"
    audio_done = "response.audio.done"
    transcript_delta = "response.audio_transcript.delta"
    transcript_done = "response.audio_transcript.done"
    content_type_audio = "audio"
    content_type_text = "text"
    names_function_arguments = False
    served_names = "g711_ulaw or pcm16"
    _names: ClassVar[dict[str, AudioFormat]] = {
        "g711_ulaw": PCMU,
        "g711_alaw": PCMA,
        "pcm16": PCM24K,
    }
    _keys: ClassVar[dict[str, str]] = {
        "input_format": "input_audio_format",
        "output_format": "output_audio_format",
        "voice": "voice",
        "turn_detection": "turn_detection",
        "transcription": "input_audio_transcription",
    }

    def session_shape(self, settings: SessionSettings, session_id: str = "") -> Json:
        shape: Json = {"id": session_id} if session_id else {}
        return {
            **shape,
            "modalities": ["audio", "text"],
            "instructions": settings.instructions,
            "voice": settings.voice,
            "input_audio_format": self._name(settings.input_format),
            "output_audio_format": self._name(settings.output_format),
            "input_audio_transcription": settings.transcription,
            "turn_detection": settings.turn_detection,
            "tools": list(settings.tools),
            "tool_choice": "auto",
        }

    def _name(self, fmt: AudioFormat) -> str:
        for name, known in self._names.items():
            if known == fmt:
                return name
        raise ValueError(f"the beta protocol has no name for {fmt}")

    def parse_format(self, value: Any) -> AudioFormat | None:
        return self._names.get(value) if isinstance(value, str) else None

    def _audio_keys(self, session: Json) -> Json:
        return {name: session[key] for name, key in self._keys.items() if key in session}


DIALECTS: dict[str, Dialect] = {"ga": GaDialect(), "beta": BetaDialect()}


def _message(role: str, content_type: str, text: str) -> Json:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": role,
            "content": [{"type": content_type, "text": text}],
        },
    }


def _ga_format(fmt: AudioFormat) -> Json:
    if fmt == PCMU:
        return {"type": "audio/pcmu"}
    if fmt == PCMA:
        return {"type": "audio/pcma"}
    if fmt.encoding is Encoding.PCM16 and fmt.rate == 24000:
        return {"type": "audio/pcm", "rate": 24000}
    raise ValueError(f"the realtime protocol has no format for {fmt}")


# -- server event parsers (the same in both dialects; the names differ) --------------------


def _audio_delta(event: Json) -> ev.ModelEvent:
    return ev.AudioDelta(
        str(event.get("response_id", "")),
        str(event["item_id"]),
        int(event.get("content_index", 0)),
        _b64decode(event.get("delta", "")),
    )


def _audio_done(event: Json) -> ev.ModelEvent:
    return ev.AudioDone(str(event.get("response_id", "")), str(event["item_id"]))


def _agent_transcript(event: Json) -> ev.ModelEvent:
    return ev.AgentTranscript(str(event["item_id"]), str(event.get("transcript") or ""))


def _caller_transcript(event: Json) -> ev.ModelEvent:
    return ev.CallerTranscript(str(event["item_id"]), str(event.get("transcript") or ""))


def _speech_started(event: Json) -> ev.ModelEvent:
    return ev.SpeechStarted(int(event.get("audio_start_ms", 0)), str(event.get("item_id", "")))


def _speech_stopped(event: Json) -> ev.ModelEvent:
    return ev.SpeechStopped(int(event.get("audio_end_ms", 0)), str(event.get("item_id", "")))


def _response_created(event: Json) -> ev.ModelEvent:
    return ev.ResponseCreated(str((event.get("response") or {}).get("id", "")))


def _response_done(event: Json) -> ev.ModelEvent:
    response = event.get("response") or {}
    details = response.get("status_details") or {}
    error = details.get("error") or details.get("reason") or ""
    return ev.ResponseDone(str(response.get("id", "")), str(response.get("status", "")), str(error))


def _output_item_done(event: Json) -> ev.ModelEvent:
    item = event.get("item") or {}
    if item.get("type") != "function_call":
        return ev.Other(str(event.get("type", "")))
    return ev.FunctionCall(
        str(item.get("call_id", "")),
        str(item.get("name", "")),
        str(item.get("arguments") or "{}"),
        str(item.get("id", "")),
    )


def _server_error(event: Json) -> ev.ModelEvent:
    error = event.get("error") or {}
    return ev.ServerError(
        str(error.get("type", "")), str(error.get("code") or ""), str(error.get("message", ""))
    )


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
