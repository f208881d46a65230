"""One realtime session of the embedded engine: the OpenAI Realtime protocol, served.

Per WebSocket connection: the session settings (``session.update``), the input audio buffer
with turn detection by the media core's VAD (``server_vad`` knobs honoured), Whisper on each
committed turn, a brain for the reply, and Piper for the voice, streamed as audio deltas one
sentence at a time so the first audio leaves before the whole reply is synthesised. A new
turn or ``response.cancel`` cancels the reply in progress, synthesis included. Bad events get
an ``error`` event; the connection stays up.

A turn that cannot be transcribed is never met with silence: the client gets
``conversation.item.input_audio_transcription.failed``, the caller hears a spoken apology
(after :data:`MAX_STT_FAILURES` in a row, a goodbye and ``end_call``), and ``on_error`` reports
it for the call's record.

Events are written in the GA shape; with ``beta`` the names and session shape of the beta
protocol are used instead.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from daemon.engine.brains import Brain, BrainCall, Turn
from daemon.logs import get_logger
from daemon.speech import SpeechToText, TextToSpeech
from media import g711
from media.resample import Resampler
from media.vad import SpeechStarted, SpeechStopped, VoiceActivityDetector

log = get_logger(__name__)

Json = dict[str, Any]
Send = Callable[[Json], Awaitable[None]]
VAD_RATE = 16000
CHUNK_MS = 100  # audio deltas carry this much audio each
SENTENCE = re.compile(r"(?<=[.!?])\s+")
MAX_STT_FAILURES = 2  # caller turns in a row that could not be transcribed: then end the call
APOLOGY = "Sorry, I could not hear that. Please say it again."
GOODBYE = (
    "Sorry, I cannot hear you because of a technical problem. Please call again later. Goodbye."
)
_ids = itertools.count(1)


def _id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


@dataclass
class Settings:
    """The session as configured so far (GA terms)."""

    instructions: str = ""
    voice: str = "alloy"
    input_pcm: bool = False  # audio/pcm 24 kHz (else audio/pcmu)
    output_pcm: bool = False
    turn_detection: Json | None = field(
        default_factory=lambda: {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": True,
            "interrupt_response": True,
        }
    )
    transcription: Json | None = None
    tools: list[Json] = field(default_factory=list)


class EngineSession:
    def __init__(
        self,
        send: Send,
        tts: TextToSpeech,
        stt: SpeechToText,
        brain: Brain,
        beta: bool = False,
    ) -> None:
        self._send_raw = send
        self.tts = tts
        self.stt = stt
        self.brain = brain
        self.beta = beta
        self.id = _id("sess")
        self.settings = Settings()
        self.conversation: list[Turn] = []
        self._buffer: list[NDArray[np.int16]] = []  # uncommitted input, 16 kHz
        self._buffer_start_ms = 0
        self._heard_ms = 0  # input received so far
        self._vad = self._new_vad()
        self._to_16k = Resampler(8000, VAD_RATE)
        self._response: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._speech_item: str | None = None
        self.closed = False
        self._timing: dict[str, float] | None = None  # the caller turn being answered
        self.on_turn: Callable[[dict[str, float]], None] | None = None
        self.on_error: Callable[[str], None] | None = None  # a failure for the call's record
        self._stt_failures = 0  # caller turns in a row whose transcription failed

    # -- the connection -------------------------------------------------------------------

    async def start(self) -> None:
        await self._send({"type": "session.created", "session": self._session_shape()})

    async def handle(self, text: str) -> None:
        """One client message; errors become ``error`` events."""
        try:
            event = json.loads(text)
        except ValueError:
            await self._error("invalid_json", "the message is not JSON")
            return
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            await self._error("invalid_event", "an event is a JSON object with a type")
            return
        handler = self._handlers().get(event["type"])
        if handler is None:
            await self._error(
                "unknown_event", f"unknown event type {event['type']!r}", event.get("event_id")
            )
            return
        try:
            await handler(event)
        except (KeyError, TypeError, ValueError) as exc:
            await self._error("invalid_value", f"{event['type']}: {exc}", event.get("event_id"))

    async def close(self) -> None:
        """The client is gone: stop everything this session runs, sending nothing more."""
        self.closed = True
        tasks = [*self._tasks, *((self._response,) if self._response else ())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _handlers(self) -> dict[str, Callable[[Json], Awaitable[None]]]:
        return {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append,
            "input_audio_buffer.commit": self._commit_event,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.delete": self._item_delete,
            "conversation.item.truncate": self._item_truncate,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
        }

    # -- session --------------------------------------------------------------------------

    async def _session_update(self, event: Json) -> None:
        session = event["session"]
        if not isinstance(session, dict):
            raise TypeError("session must be an object")
        s = self.settings
        if "instructions" in session:
            s.instructions = str(session["instructions"] or "")
        if "tools" in session:
            s.tools = list(session["tools"] or [])
        if self.beta:
            self._beta_update(session)
        else:
            self._ga_update(session)
        self._vad = self._new_vad()
        self._to_16k = Resampler(24000 if s.input_pcm else 8000, VAD_RATE)
        await self._send({"type": "session.updated", "session": self._session_shape()})

    def _beta_update(self, session: Json) -> None:
        s = self.settings
        s.voice = str(session.get("voice") or s.voice)
        if "input_audio_format" in session:
            s.input_pcm = self._beta_format(session["input_audio_format"])
        if "output_audio_format" in session:
            s.output_pcm = self._beta_format(session["output_audio_format"])
        if "turn_detection" in session:
            s.turn_detection = session["turn_detection"]
        if "input_audio_transcription" in session:
            s.transcription = session["input_audio_transcription"]

    def _ga_update(self, session: Json) -> None:
        s = self.settings
        audio = session.get("audio") or {}
        audio_in, audio_out = audio.get("input") or {}, audio.get("output") or {}
        if "format" in audio_in:
            s.input_pcm = self._ga_format(audio_in["format"])
        if "format" in audio_out:
            s.output_pcm = self._ga_format(audio_out["format"])
        s.voice = str(audio_out.get("voice") or s.voice)
        if "turn_detection" in audio_in:
            s.turn_detection = audio_in["turn_detection"]
        if "transcription" in audio_in:
            s.transcription = audio_in["transcription"]

    @staticmethod
    def _ga_format(value: Any) -> bool:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind == "audio/pcmu":
            return False
        if kind == "audio/pcm" and int(value.get("rate") or 24000) == 24000:
            return True
        raise ValueError(f"unsupported audio format {value!r}: audio/pcmu or audio/pcm 24 kHz")

    @staticmethod
    def _beta_format(value: Any) -> bool:
        if value in ("g711_ulaw", "pcm16"):
            return bool(value == "pcm16")
        raise ValueError(f"unsupported audio format {value!r}: g711_ulaw or pcm16")

    def _session_shape(self) -> Json:
        s = self.settings
        if self.beta:
            return {
                "id": self.id,
                "modalities": ["audio", "text"],
                "instructions": s.instructions,
                "voice": s.voice,
                "input_audio_format": "pcm16" if s.input_pcm else "g711_ulaw",
                "output_audio_format": "pcm16" if s.output_pcm else "g711_ulaw",
                "input_audio_transcription": s.transcription,
                "turn_detection": s.turn_detection,
                "tools": s.tools,
                "tool_choice": "auto",
            }
        pcm = {"type": "audio/pcm", "rate": 24000}
        pcmu = {"type": "audio/pcmu"}
        audio_in: Json = {
            "format": pcm if s.input_pcm else pcmu,
            "turn_detection": s.turn_detection,
        }
        if s.transcription:
            audio_in["transcription"] = s.transcription
        return {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": s.instructions,
            "audio": {
                "input": audio_in,
                "output": {"format": pcm if s.output_pcm else pcmu, "voice": s.voice},
            },
            "tools": s.tools,
            "tool_choice": "auto",
        }

    def _new_vad(self) -> VoiceActivityDetector:
        detection = self.settings.turn_detection or {}
        threshold = float(detection.get("threshold") or 0.5)
        return VoiceActivityDetector(
            rate=VAD_RATE,
            aggressiveness=min(3, max(0, round(threshold * 4) - 1)),
            min_speech_ms=200,
            hangover_ms=int(detection.get("silence_duration_ms") or 500),
        )

    # -- input audio ----------------------------------------------------------------------

    async def _append(self, event: Json) -> None:
        data = base64.b64decode(event["audio"], validate=True)
        if self.settings.input_pcm:
            pcm = np.frombuffer(data[: len(data) & ~1], dtype="<i2").astype(np.int16)
            self._heard_ms += len(pcm) // 24
        else:
            pcm = g711.ulaw_decode(data)
            self._heard_ms += len(pcm) // 8
        audio = self._to_16k.process(pcm)
        self._buffer.append(audio)
        if self.settings.turn_detection is None:
            return
        for change in self._vad.process(audio):
            if isinstance(change, SpeechStarted):
                await self._speech_started(change.at_ms)
            elif isinstance(change, SpeechStopped):
                await self._speech_stopped(change.at_ms)

    async def _speech_started(self, at_ms: int) -> None:
        self._speech_item = _id("item")
        detection = self.settings.turn_detection or {}
        padding = int(detection.get("prefix_padding_ms") or 300)
        # Keep only what the turn needs: the padding before the start of speech.
        self._trim_buffer(max(0, at_ms - padding))
        await self._send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": at_ms,
                "item_id": self._speech_item,
            }
        )
        if detection.get("interrupt_response", True) and self._response is not None:
            await self._cancel_response()

    async def _speech_stopped(self, at_ms: int) -> None:
        item = self._speech_item or _id("item")
        self._speech_item = None
        await self._send(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": at_ms, "item_id": item}
        )
        await self._commit(
            item, respond=bool((self.settings.turn_detection or {}).get("create_response", True))
        )

    def _trim_buffer(self, from_ms: int) -> None:
        audio = np.concatenate(self._buffer) if self._buffer else np.zeros(0, dtype=np.int16)
        drop = max(0, (from_ms - self._buffer_start_ms) * VAD_RATE // 1000)
        self._buffer = [audio[drop:]]
        self._buffer_start_ms += drop * 1000 // VAD_RATE

    async def _commit_event(self, event: Json) -> None:
        if not self._buffer or not sum(len(b) for b in self._buffer):
            await self._error(
                "input_audio_buffer_commit_empty",
                "the input audio buffer is empty",
                event.get("event_id"),
            )
            return
        await self._commit(_id("item"), respond=False)

    async def _commit(self, item_id: str, respond: bool) -> None:
        audio = np.concatenate(self._buffer) if self._buffer else np.zeros(0, dtype=np.int16)
        self._buffer = []
        self._buffer_start_ms = self._vad.position_ms
        previous = self.conversation[-1].item_id if self.conversation else None
        await self._send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": previous,
            }
        )
        turn = Turn(item_id, "user", "")
        self.conversation.append(turn)
        await self._send(
            {
                "type": "conversation.item.created",
                "previous_item_id": previous,
                "item": {
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "message",
                    "role": "user",
                    "status": "completed",
                    "content": [{"type": "input_audio", "transcript": None}],
                },
            }
        )
        task = asyncio.create_task(self._transcribe(turn, audio, respond))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        _retrieve(task)

    async def _transcribe(self, turn: Turn, audio: NDArray[np.int16], respond: bool) -> None:
        started = time.monotonic()
        try:
            text = (await self.stt.transcribe(audio, VAD_RATE)).strip()
        except Exception as exc:  # the caller hears an apology, the client an event
            await self._transcription_failed(turn, exc, respond)
            return
        self._stt_failures = 0
        self._timing = {"turn_end": started, "stt_ms": (time.monotonic() - started) * 1000}
        turn.text = text
        await self._send(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": turn.item_id,
                "content_index": 0,
                "transcript": text,
                "usage": {"type": "duration", "seconds": round(len(audio) / VAD_RATE, 2)},
            }
        )
        if respond:
            await self._start_response("")

    async def _transcription_failed(self, turn: Turn, exc: Exception, respond: bool) -> None:
        self._stt_failures += 1
        message = str(exc) or repr(exc)
        log.error(
            "engine.transcription_failed",
            session=self.id,
            item_id=turn.item_id,
            failures=self._stt_failures,
            error=repr(exc),
        )
        if self.on_error is not None:
            self.on_error(message)
        await self._send(
            {
                "type": "conversation.item.input_audio_transcription.failed",
                "item_id": turn.item_id,
                "content_index": 0,
                "error": {
                    "type": "transcription_error",
                    "code": "transcription_failed",
                    "message": message,
                    "param": None,
                },
            }
        )
        if not respond:
            return  # the client asked for no reply: it decides what to say
        if self._stt_failures >= MAX_STT_FAILURES:
            await self._start_response("", (GOODBYE, BrainCall("end_call")))
        else:
            await self._start_response("", (APOLOGY,))

    async def _clear(self, event: Json) -> None:
        self._buffer = []
        self._buffer_start_ms = self._vad.position_ms
        await self._send({"type": "input_audio_buffer.cleared"})

    # -- conversation ---------------------------------------------------------------------

    async def _item_create(self, event: Json) -> None:
        item = event["item"]
        kind = item["type"]
        item_id = str(item.get("id") or _id("item"))
        if kind == "message":
            text = " ".join(
                str(part.get("text") or part.get("transcript") or "")
                for part in item.get("content") or []
            ).strip()
            role = str(item["role"])
            turn = Turn(item_id, "assistant" if role == "assistant" else "user", text)
        elif kind == "function_call_output":
            turn = Turn(item_id, "tool", str(item["output"]), call_id=str(item["call_id"]))
        elif kind == "function_call":
            turn = Turn(item_id, "assistant", "", call_id=str(item["call_id"]))
        else:
            raise ValueError(f"unknown item type {kind!r}")
        previous = self.conversation[-1].item_id if self.conversation else None
        self.conversation.append(turn)
        await self._send(
            {
                "type": "conversation.item.created",
                "previous_item_id": previous,
                "item": {**item, "id": item_id, "object": "realtime.item", "status": "completed"},
            }
        )

    async def _item_delete(self, event: Json) -> None:
        item_id = str(event["item_id"])
        before = len(self.conversation)
        self.conversation = [t for t in self.conversation if t.item_id != item_id]
        if len(self.conversation) == before:
            await self._error("item_not_found", f"no item {item_id!r}", event.get("event_id"))
            return
        await self._send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _item_truncate(self, event: Json) -> None:
        item_id = str(event["item_id"])
        turn = next((t for t in self.conversation if t.item_id == item_id), None)
        if turn is None:
            await self._error("item_not_found", f"no item {item_id!r}", event.get("event_id"))
            return
        audio_end_ms = int(event["audio_end_ms"])
        turn.text = _truncated(turn.text, audio_end_ms, turn.spoken_ms)
        await self._send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": int(event.get("content_index", 0)),
                "audio_end_ms": audio_end_ms,
            }
        )

    # -- responses ------------------------------------------------------------------------

    async def _response_create(self, event: Json) -> None:
        response = event.get("response") or {}
        await self._start_response(str(response.get("instructions") or ""))

    async def _response_cancel(self, event: Json) -> None:
        if self._response is None:
            await self._error(
                "response_cancel_not_active", "no response is in progress", event.get("event_id")
            )
            return
        await self._cancel_response()

    async def _cancel_response(self) -> None:
        task, self._response = self._response, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _start_response(
        self, instructions: str, script: Sequence[str | BrainCall] | None = None
    ) -> None:
        """Reply: the brain's words, or ``script``'s when the engine itself must speak."""
        await self._cancel_response()
        task = asyncio.create_task(self._respond(instructions, script))
        self._response = task
        task.add_done_callback(self._response_finished)

    def _response_finished(self, task: asyncio.Task[None]) -> None:
        if self._response is task:
            self._response = None
        _retrieve(task)

    async def _respond(
        self, instructions: str, script: Sequence[str | BrainCall] | None = None
    ) -> None:
        response_id = _id("resp")
        output: list[Json] = []
        await self._send(
            {
                "type": "response.created",
                "response": {
                    "id": response_id,
                    "object": "realtime.response",
                    "status": "in_progress",
                    "output": [],
                },
            }
        )
        status = "completed"
        try:
            reply = (
                _scripted(script)
                if script is not None
                else self.brain.reply(
                    self.conversation, self.settings.instructions, instructions, self.settings.tools
                )
            )
            speech: _Speech | None = None
            async for part in reply:
                if isinstance(part, BrainCall):
                    output.append(await self._function_call(response_id, len(output), part))
                    continue
                if speech is None:
                    speech = _Speech(self, response_id, len(output))
                    await speech.begin()
                await speech.say(part)
            if speech is not None:
                output.append(await speech.end())
        except asyncio.CancelledError:
            status = "cancelled"
            if speech is not None:
                speech.cut()
            raise
        except Exception as exc:
            status = "failed"
            log.error("engine.response_failed", error=repr(exc))
        finally:
            done: Json = {
                "id": response_id,
                "object": "realtime.response",
                "status": status,
                "output": output,
            }
            if status == "cancelled":
                done["status_details"] = {"type": "cancelled", "reason": "turn_detected"}
            await asyncio.shield(self._send({"type": "response.done", "response": done}))

    async def _function_call(self, response_id: str, index: int, call: BrainCall) -> Json:
        item = {
            "id": _id("item"),
            "object": "realtime.item",
            "type": "function_call",
            "call_id": _id("call"),
            "name": call.name,
            "arguments": call.arguments,
            "status": "completed",
        }
        where = {"response_id": response_id, "output_index": index}
        await self._send({"type": "response.output_item.added", **where, "item": item})
        arguments_done: Json = {
            "type": "response.function_call_arguments.done",
            **where,
            "item_id": item["id"],
            "call_id": item["call_id"],
            "arguments": call.arguments,
        }
        if not self.beta:
            arguments_done["name"] = call.name  # the beta event has no name
        await self._send(arguments_done)
        await self._send({"type": "response.output_item.done", **where, "item": item})
        self.conversation.append(
            Turn(str(item["id"]), "assistant", "", call_id=str(item["call_id"]), call=call)
        )
        return item

    # -- sending --------------------------------------------------------------------------

    async def _send(self, event: Json) -> None:
        if self.closed:
            return
        event = {"event_id": _id("event"), **event}
        if self.beta:
            event["type"] = _BETA_NAMES.get(event["type"], event["type"])
        await self._send_raw(event)

    async def _error(self, code: str, message: str, event_id: Any = None) -> None:
        error: Json = {"type": "invalid_request_error", "code": code, "message": message}
        if event_id is not None:
            error["event_id"] = str(event_id)
        await self._send({"type": "error", "error": error})

    def first_audio(self, tts_started: float) -> None:
        """A reply's first sentence is synthesised: how long the turn took, and where it went."""
        timing, self._timing = self._timing, None
        if timing is None:
            return  # not a reply to a caller turn (a greeting), or not its first sentence
        now = time.monotonic()
        turn = {
            "turn_end_to_audio_ms": round((now - timing["turn_end"]) * 1000, 1),
            "stt_ms": round(timing["stt_ms"], 1),
            "tts_first_sentence_ms": round((now - tts_started) * 1000, 1),
        }
        log.info("engine.turn", session=self.id, **turn)
        if self.on_turn is not None:
            self.on_turn(turn)

    def encode(self, pcm24k: NDArray[np.int16]) -> bytes:
        """Synthesised audio at 24 kHz in the session's output format."""
        if self.settings.output_pcm:
            return pcm24k.astype("<i2").tobytes()
        return g711.ulaw_encode(_to_8k(pcm24k)).tobytes()


_BETA_NAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
}


async def _scripted(parts: Sequence[str | BrainCall]) -> AsyncIterator[str | BrainCall]:
    for part in parts:
        yield part


def _retrieve(task: asyncio.Task[None]) -> None:
    """Log what a finished task raised, so no exception of a session goes unretrieved."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("engine.task_failed", task=task.get_name(), error=repr(exc))


def _to_8k(pcm24k: NDArray[np.int16]) -> NDArray[np.int16]:
    resampler = Resampler(24000, 8000)
    return np.concatenate((resampler.process(pcm24k), resampler.flush()))


def _truncated(text: str, audio_end_ms: int, spoken_ms: int) -> str:
    """The part of ``text`` said in the first ``audio_end_ms`` of ``spoken_ms``."""
    if spoken_ms <= 0 or audio_end_ms >= spoken_ms:
        return text
    words = text.split()
    keep = len(words) * audio_end_ms // spoken_ms
    return " ".join(words[:keep])


class _Speech:
    """One spoken output item of a response, streamed sentence by sentence."""

    def __init__(self, session: EngineSession, response_id: str, index: int) -> None:
        self.session = session
        self.item_id = _id("item")
        self.where = {"response_id": response_id, "output_index": index}
        self.text = ""
        self.pending = ""
        self.spoken_ms = 0
        self.turn = Turn(self.item_id, "assistant", "")

    async def begin(self) -> None:
        session = self.session
        session.conversation.append(self.turn)
        item = {
            "id": self.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        await session._send({"type": "response.output_item.added", **self.where, "item": item})
        await session._send(
            {
                "type": "response.content_part.added",
                **self.where,
                "item_id": self.item_id,
                "content_index": 0,
                "part": {"type": "audio", "transcript": ""},
            }
        )

    async def say(self, text: str) -> None:
        """More reply text: every complete sentence is synthesised and sent at once."""
        self.pending += text
        *sentences, self.pending = SENTENCE.split(self.pending)
        for sentence in sentences:
            await self._speak(sentence)

    async def _speak(self, sentence: str) -> None:
        sentence = sentence.strip()
        if not sentence:
            return
        session = self.session
        started = time.monotonic()
        pcm = await session.tts.synthesize(sentence, 24000)
        session.first_audio(started)
        spoken = (" " if self.text else "") + sentence
        self.text += spoken
        self.turn.text = self.text
        data = session.encode(pcm)
        step = len(data) * CHUNK_MS // max(1, len(pcm) // 24)
        step = max(1, step)
        ids = {**self.where, "item_id": self.item_id, "content_index": 0}
        await session._send(
            {"type": "response.output_audio_transcript.delta", **ids, "delta": spoken}
        )
        for offset in range(0, len(data), step):
            chunk = base64.b64encode(data[offset : offset + step]).decode()
            await session._send({"type": "response.output_audio.delta", **ids, "delta": chunk})
        self.spoken_ms += len(pcm) // 24
        self.turn.spoken_ms = self.spoken_ms

    def cut(self) -> None:
        self.turn.text = self.text

    async def end(self) -> Json:
        await self._speak(self.pending)
        self.pending = ""
        session = self.session
        ids = {**self.where, "item_id": self.item_id, "content_index": 0}
        await session._send({"type": "response.output_audio.done", **ids})
        await session._send(
            {"type": "response.output_audio_transcript.done", **ids, "transcript": self.text}
        )
        part = {"type": "audio", "transcript": self.text}
        await session._send({"type": "response.content_part.done", **ids, "part": part})
        item = {
            "id": self.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [
                {"type": "audio" if session.beta else "output_audio", "transcript": self.text}
            ],
        }
        await session._send({"type": "response.output_item.done", **self.where, "item": item})
        return item
