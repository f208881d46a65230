"""What the call code hears from a realtime model, whatever the dialect on the wire.

The dialect modules turn server events into these; everything the call flow does is written
against them. Event types the call flow has no use for become :class:`Other`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from media.codec import AudioFormat


@dataclass(frozen=True)
class SessionReported:
    """``session.created`` / ``session.updated``: the formats the session really uses."""

    created: bool
    input_format: AudioFormat | None
    output_format: AudioFormat | None
    voice: str | None
    instructions: str | None
    tools: tuple[str, ...]
    raw: dict[str, Any] = field(repr=False)


@dataclass(frozen=True)
class ResponseCreated:
    response_id: str


@dataclass(frozen=True)
class ResponseDone:
    response_id: str
    status: str  # completed | cancelled | failed | incomplete
    error: str = ""  # status_details, when it failed


@dataclass(frozen=True)
class AudioDelta:
    response_id: str
    item_id: str
    content_index: int
    audio: bytes


@dataclass(frozen=True)
class AudioDone:
    response_id: str
    item_id: str


@dataclass(frozen=True)
class AgentTranscript:
    """The whole transcript of one spoken agent item."""

    item_id: str
    text: str


@dataclass(frozen=True)
class CallerTranscript:
    """The transcription of one caller turn (input audio transcription)."""

    item_id: str
    text: str


@dataclass(frozen=True)
class SpeechStarted:
    audio_start_ms: int
    item_id: str


@dataclass(frozen=True)
class SpeechStopped:
    audio_end_ms: int
    item_id: str


@dataclass(frozen=True)
class FunctionCall:
    call_id: str
    name: str
    arguments: str
    item_id: str


@dataclass(frozen=True)
class ServerError:
    type: str
    code: str
    message: str


@dataclass(frozen=True)
class Other:
    type: str


ModelEvent = (
    SessionReported
    | ResponseCreated
    | ResponseDone
    | AudioDelta
    | AudioDone
    | AgentTranscript
    | CallerTranscript
    | SpeechStarted
    | SpeechStopped
    | FunctionCall
    | ServerError
    | Other
)
