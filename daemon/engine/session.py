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

The session speaks one :class:`~daemon.realtime.dialect.Dialect`, the client's own mapping:
it reads ``session.update`` and reports the session through it, and events written with their
GA names are renamed by it on the way out. Replies are streamed by
:mod:`daemon.engine.speech_out`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from daemon.engine import speech_out
from daemon.engine.brains import Brain, BrainCall, Turn
from daemon.engine.speech_out import new_id
from daemon.engine.turns import (
    ONSET_MS,
    QUIET_ONSET_MS,
    Loudness,
    Recognition,
    TurnPolicy,
    unfinished,
)
from daemon.logs import get_logger
from daemon.realtime.dialect import DIALECTS, Dialect, SessionSettings
from daemon.speech import SpeechToText, TextToSpeech
from media import g711
from media.codec import PCMU, AudioFormat
from media.framing import FrameSplitter
from media.resample import Resampler
from media.vad import SpeechStarted, SpeechStopped, VoiceActivityDetector

log = get_logger(__name__)

Json = dict[str, Any]
Send = Callable[[Json], Awaitable[None]]
VAD_RATE = 16000
VAD_FRAME_BYTES = 2 * VAD_RATE * 20 // 1000  # the VAD's 20 ms frames
MAX_STT_FAILURES = 2  # caller turns in a row that could not be transcribed: then end the call
APOLOGY = "Sorry, I could not hear that. Please say it again."
GOODBYE = (
    "Sorry, I cannot hear you because of a technical problem. Please call again later. Goodbye."
)


class InputAudio:
    """The uncommitted input audio buffer at 16 kHz and the VAD that finds turns in it."""

    def __init__(self) -> None:
        self.chunks: list[NDArray[np.int16]] = []
        self.start_ms = 0  # where the buffer starts on the VAD's clock
        self.speech_item: str | None = None  # the item of the speech in progress
        self.format = PCMU
        self.vad = _new_vad(None)
        self.resampler = Resampler(PCMU.rate, VAD_RATE)
        # The VAD is fed whole frames only, so that resetting it loses no audio from its clock.
        self.frames = FrameSplitter(VAD_FRAME_BYTES)
        self.epoch = 0  # counts commits and new VADs: a judgement of older audio is void

    def configure(self, fmt: AudioFormat, detection: Json | None) -> None:
        """A new session format or turn detection: a fresh VAD and resampler."""
        self.format = fmt
        self.vad = _new_vad(detection)
        self.resampler = Resampler(fmt.rate, VAD_RATE)
        self.frames.clear()
        self.epoch += 1

    def append(self, data: bytes) -> list[bytes]:
        """Decode and buffer ``data`` (the session's input format); the whole VAD frames
        (16 kHz) it completes."""
        if self.format == PCMU:
            pcm = g711.ulaw_decode(data)
        else:
            pcm = np.frombuffer(data[: len(data) & ~1], dtype="<i2").astype(np.int16)
        audio = self.resampler.process(pcm)
        self.chunks.append(audio)
        return self.frames.feed(audio.astype("<i2").tobytes())

    def snapshot(self) -> NDArray[np.int16]:
        """The buffer so far, kept."""
        audio = self.take_all()
        self.chunks = [audio]
        return audio

    @property
    def empty(self) -> bool:
        return not sum(len(b) for b in self.chunks)

    def trim(self, from_ms: int) -> None:
        """Drop what came before ``from_ms`` (VAD clock)."""
        audio = self.take_all()
        drop = max(0, (from_ms - self.start_ms) * VAD_RATE // 1000)
        self.chunks = [audio[drop:]]
        self.start_ms += drop * 1000 // VAD_RATE

    def take_all(self) -> NDArray[np.int16]:
        audio = np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.int16)
        self.chunks = []
        return audio

    def commit(self) -> NDArray[np.int16]:
        """The whole buffer, which starts over at the VAD's position."""
        audio = self.take_all()
        self.start_ms = self.vad.position_ms
        self.epoch += 1
        return audio


@dataclass(frozen=True)
class Pause:
    """A silence after the caller's speech, as the VAD saw it."""

    utterance: str  # the speech item
    end_ms: int  # the end of the last voiced frame (VAD clock)
    epoch: int  # the input buffer's epoch


@dataclass
class CallerTurns:
    """What the session knows of the caller's turns."""

    answering: dict[str, float] | None = None  # the turn being answered: its end, Whisper ms
    failures: int = 0  # turns in a row whose transcription failed
    judged: Pause | None = None  # the latest pause given to Smart Turn
    smart_turn_ms: float = 0.0  # its latest inference in the turn in progress
    model_vetoes: int = 0  # pauses of the turn in progress the model found unfinished
    word_vetoes: int = 0  # pauses it found finished whose transcript ended unfinished
    first_word_veto_ms: int = -1  # the first of those (its speech end, VAD clock)


class EngineSession:
    def __init__(
        self,
        send: Send,
        tts: TextToSpeech,
        stt: SpeechToText,
        brain: Brain,
        dialect: Dialect = DIALECTS["ga"],
        *,
        turns: TurnPolicy | None = None,
    ) -> None:
        self._send_raw = send
        self.tts = tts
        self.stt = stt
        self.brain = brain
        self.dialect = dialect
        self.id = new_id("sess")
        self.settings = SessionSettings()
        self.conversation: list[Turn] = []
        self._input = InputAudio()
        self._response: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.closed = False
        self._turns = CallerTurns()
        self.policy = turns or TurnPolicy()
        self._recognition = Recognition(stt)
        self._loudness = Loudness()  # of the utterance in progress (smart_turn mode)
        self.on_turn: Callable[[dict[str, float]], None] | None = None
        self.on_error: Callable[[str], None] | None = None  # a failure for the call's record

    # -- the connection -------------------------------------------------------------------

    async def start(self) -> None:
        await self.send({"type": "session.created", "session": self._session_shape()})

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
        self._recognition.close()
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
        self.settings = self.dialect.read_session_update(session, self.settings)
        self._input.configure(self.settings.input_format, self.settings.turn_detection)
        await self.send({"type": "session.updated", "session": self._session_shape()})

    def _session_shape(self) -> Json:
        return self.dialect.session_shape(self.settings, self.id)

    # -- input audio ----------------------------------------------------------------------

    async def _append(self, event: Json) -> None:
        frames = self._input.append(base64.b64decode(event["audio"], validate=True))
        if self.settings.turn_detection is None:
            return
        for frame in frames:
            for change in self._input.vad.process(frame):
                if isinstance(change, SpeechStarted):
                    await self._speech_started(change.at_ms)
                elif isinstance(change, SpeechStopped):
                    await self._speech_stopped(change.at_ms)
            if self.policy.model is not None:
                self._pause_check(frame)

    def _current_pause(self) -> Pause | None:
        """The silence the caller is in after speech, if any (none while speaking)."""
        vad = self._input.vad
        item = self._input.speech_item
        if not vad.speaking or item is None or vad.silence_ms == 0:
            return None
        return Pause(item, vad.position_ms - vad.silence_ms, self._input.epoch)

    def _speech_end(self, vad_end_ms: int) -> int:
        """Where the utterance's speech ends: the VAD's end, or the end of its loud part just
        before (webrtcvad hears voice some 100 ms past the sound)."""
        return self._loudness.speech_end(vad_end_ms)

    def _pause_check(self, frame: bytes) -> None:
        """Per VAD frame (smart_turn mode): transcribe at a pause, judge a longer one."""
        vad, item = self._input.vad, self._input.speech_item
        if not vad.speaking or item is None:
            return
        self._loudness.frame(frame, vad.position_ms)
        recognition, epoch = self._recognition, self._input.epoch
        quiet = vad.silence_ms >= ONSET_MS or self._loudness.quiet_ms >= QUIET_ONSET_MS
        if quiet and self._response is None and recognition.can_start():
            speech_end = self._speech_end(vad.position_ms - vad.silence_ms)
            if recognition.covering(item, epoch, speech_end) is None:
                recognition.start(item, epoch, vad.position_ms, self._input.snapshot())
        pause = self._current_pause()
        if (
            pause is not None
            and vad.silence_ms >= self.policy.pause_ms
            and self._turns.judged != pause
        ):
            self._turns.judged = pause
            task = asyncio.create_task(self._judge(pause, self._input.snapshot()))
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    async def _judge(self, pause: Pause, audio: NDArray[np.int16]) -> None:
        """Smart Turn on a pause: a complete turn (and a transcript that does not stop on
        an unfinished word) ends here; else the silence window will."""
        model = self.policy.model
        assert model is not None
        started = time.monotonic()
        try:
            probability = await model.judge(audio)
        except Exception as exc:  # the silence window still ends the turn
            log.error("engine.smart_turn_failed", session=self.id, error=repr(exc))
            return
        verdict_at = time.monotonic()
        if self._current_pause() != pause:
            return
        self._turns.smart_turn_ms = (verdict_at - started) * 1000
        if probability < self.policy.threshold:
            self._turns.model_vetoes += 1
            log.debug("engine.turn_continues", session=self.id, probability=probability)
            return
        try:
            speech_end = self._speech_end(pause.end_ms)
            text, _ = await self._recognition.text(pause.utterance, pause.epoch, speech_end, audio)
        except Exception:  # the turn's own transcription reports it
            text = "-"
        if self._current_pause() != pause:
            return  # the caller spoke again meanwhile
        if self.policy.word_check and unfinished(text, probability):
            self._turns.word_vetoes += 1
            if self._turns.first_word_veto_ms < 0:
                self._turns.first_word_veto_ms = pause.end_ms
            log.debug("engine.turn_continues", session=self.id, unfinished=text)
            return
        log.info(
            "engine.smart_turn_end",
            session=self.id,
            probability=round(probability, 3),
            silence_ms=self._input.vad.silence_ms,
            heard=text,
        )
        self._input.vad.reset()  # the turn is over: new speech is a new turn
        await self._speech_stopped(pause.end_ms, verdict_at)

    async def _speech_started(self, at_ms: int) -> None:
        self._input.speech_item = new_id("item")
        detection = self.settings.turn_detection or {}
        padding = int(detection.get("prefix_padding_ms") or 300)
        # Keep only what the turn needs: the padding before the start of speech.
        self._input.trim(max(0, at_ms - padding))
        self._loudness.reset(self._input.vad.position_ms)
        turns = self._turns
        turns.smart_turn_ms, turns.model_vetoes, turns.word_vetoes = 0.0, 0, 0
        turns.first_word_veto_ms = -1
        await self.send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": at_ms,
                "item_id": self._input.speech_item,
            }
        )
        if detection.get("interrupt_response", True) and self._response is not None:
            await self._cancel_response()

    async def _speech_stopped(self, at_ms: int, verdict_at: float | None = None) -> None:
        """The caller's turn ended at ``at_ms``: by the silence window, or by Smart Turn's
        verdict given at ``verdict_at`` (monotonic)."""
        item = self._input.speech_item or new_id("item")
        self._input.speech_item = None
        speech_end = self._speech_end(at_ms) if self.policy.model is not None else at_ms
        # The buffer is taken before any await: an event handled meanwhile (a clear, new
        # speech) belongs to the next item.
        epoch = self._input.epoch
        audio = self._input.commit()
        await self.send(
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": at_ms, "item_id": item}
        )
        await self._commit(
            item,
            respond=bool((self.settings.turn_detection or {}).get("create_response", True)),
            taken=(audio, epoch),
            end_ms=speech_end,
            verdict_at=verdict_at,
        )

    async def _commit_event(self, event: Json) -> None:
        if self._input.empty:
            await self._error(
                "input_audio_buffer_commit_empty",
                "the input audio buffer is empty",
                event.get("event_id"),
            )
            return
        await self._commit(new_id("item"), respond=False)

    async def _commit(
        self,
        item_id: str,
        respond: bool,
        taken: tuple[NDArray[np.int16], int] | None = None,
        end_ms: int = -1,
        verdict_at: float | None = None,
    ) -> None:
        """Commit the buffer as ``item_id`` (``taken``: the buffer already taken, and its
        epoch); ``end_ms``: where its speech ends, when the VAD found it (a transcription of
        the same buffer already running from there on is then taken)."""
        if taken is None:
            taken = (self._input.commit(), -1)
        audio, epoch = taken
        previous = self.conversation[-1].item_id if self.conversation else None
        await self.send(
            {
                "type": "input_audio_buffer.committed",
                "item_id": item_id,
                "previous_item_id": previous,
            }
        )
        turn = Turn(item_id, "user", "")
        self.conversation.append(turn)
        await self.send(
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
        task = asyncio.create_task(
            self._transcribe(turn, audio, respond, (epoch, end_ms), verdict_at)
        )
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        _retrieve(task)

    async def _transcribe(
        self,
        turn: Turn,
        audio: NDArray[np.int16],
        respond: bool,
        speech: tuple[int, int] = (-1, -1),
        decided: float | None = None,
    ) -> None:
        """``speech``: the buffer's epoch and where its speech ends, when the VAD found it;
        ``decided``: when Smart Turn found the turn over (its reply is measured from there),
        else now."""
        started = time.monotonic() if decided is None else decided
        smart_turn = self.policy.model is not None
        epoch, end_ms = speech
        from_pause, lead_ms = False, 0.0
        try:
            if end_ms >= 0 and smart_turn:
                text, job = await self._recognition.text(turn.item_id, epoch, end_ms, audio)
                from_pause = job.at_pause
                lead_ms = (started - job.started) * 1000
            else:
                text = await self.stt.transcribe(audio, VAD_RATE)
            text = text.strip()
        except Exception as exc:  # the caller hears an apology, the client an event
            await self._transcription_failed(turn, exc, respond)
            return
        turns = self._turns
        turns.failures = 0
        turns.answering = {
            "turn_end": started,
            "stt_ms": (time.monotonic() - started) * 1000,
            "smart_turn_ms": turns.smart_turn_ms if smart_turn else 0.0,
            "smart_turn_end": float(decided is not None),
            # the transcript came from a pass started at a pause (not for the ended turn),
            # which started stt_pass_lead_ms before the end of turn (negative: after it)
            "stt_from_pause_pass": float(from_pause),
            "stt_pass_lead_ms": lead_ms,
            "stt_passes": float(self._recognition.passes.pop(turn.item_id, 0)),
            "model_vetoes": float(turns.model_vetoes),
            "word_vetoes": float(turns.word_vetoes),
            "first_word_veto_ms": float(turns.first_word_veto_ms),
        }
        turn.text = text
        await self.send(
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
        self._turns.failures += 1
        message = str(exc) or repr(exc)
        log.error(
            "engine.transcription_failed",
            session=self.id,
            item_id=turn.item_id,
            failures=self._turns.failures,
            error=repr(exc),
        )
        if self.on_error is not None:
            self.on_error(message)
        await self.send(
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
        if self._turns.failures >= MAX_STT_FAILURES:
            await self._start_response("", (GOODBYE, BrainCall("end_call")))
        else:
            await self._start_response("", (APOLOGY,))

    async def _clear(self, event: Json) -> None:
        self._input.commit()
        await self.send({"type": "input_audio_buffer.cleared"})

    # -- conversation ---------------------------------------------------------------------

    async def _item_create(self, event: Json) -> None:
        item = event["item"]
        kind = item["type"]
        item_id = str(item.get("id") or new_id("item"))
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
        await self.send(
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
        await self.send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _item_truncate(self, event: Json) -> None:
        item_id = str(event["item_id"])
        turn = next((t for t in self.conversation if t.item_id == item_id), None)
        if turn is None:
            await self._error("item_not_found", f"no item {item_id!r}", event.get("event_id"))
            return
        audio_end_ms = int(event["audio_end_ms"])
        turn.text = _truncated(turn.text, audio_end_ms, turn.spoken_ms)
        await self.send(
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
        task = asyncio.create_task(speech_out.respond(self, instructions, script))
        self._response = task
        task.add_done_callback(self._response_finished)

    def _response_finished(self, task: asyncio.Task[None]) -> None:
        if self._response is task:
            self._response = None
        _retrieve(task)

    # -- sending --------------------------------------------------------------------------

    async def send(self, event: Json) -> None:
        """Send a server event written with its GA name, named as the dialect has it."""
        if self.closed:
            return
        event = {"event_id": new_id("event"), **event}
        event["type"] = self.dialect.event(event["type"])
        await self._send_raw(event)

    async def _error(self, code: str, message: str, event_id: Any = None) -> None:
        error: Json = {"type": "invalid_request_error", "code": code, "message": message}
        if event_id is not None:
            error["event_id"] = str(event_id)
        await self.send({"type": "error", "error": error})

    def first_audio(self, tts_started: float) -> None:
        """A reply's first sentence is synthesised: how long the turn took, and where it went."""
        timing, self._turns.answering = self._turns.answering, None
        if timing is None:
            return  # not a reply to a caller turn (a greeting), or not its first sentence
        now = time.monotonic()
        turn = {
            "turn_end_to_audio_ms": round((now - timing["turn_end"]) * 1000, 1),
            "stt_ms": round(timing["stt_ms"], 1),
            "smart_turn_ms": round(timing["smart_turn_ms"], 1),
            "smart_turn_end": timing["smart_turn_end"],
            "stt_from_pause_pass": timing["stt_from_pause_pass"],
            "stt_pass_lead_ms": round(timing["stt_pass_lead_ms"], 1),
            "stt_passes": timing["stt_passes"],
            "model_vetoes": timing["model_vetoes"],
            "word_vetoes": timing["word_vetoes"],
            "first_word_veto_ms": timing["first_word_veto_ms"],
            "tts_first_sentence_ms": round((now - tts_started) * 1000, 1),
        }
        log.info("engine.turn", session=self.id, **turn)
        if self.on_turn is not None:
            self.on_turn(turn)


def _new_vad(detection: Json | None) -> VoiceActivityDetector:
    detection = detection or {}
    threshold = float(detection.get("threshold") or 0.5)
    return VoiceActivityDetector(
        rate=VAD_RATE,
        aggressiveness=min(3, max(0, round(threshold * 4) - 1)),
        min_speech_ms=200,
        hangover_ms=int(detection.get("silence_duration_ms") or 500),
    )


def _retrieve(task: asyncio.Task[None]) -> None:
    """Log what a finished task raised, so no exception of a session goes unretrieved."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("engine.task_failed", task=task.get_name(), error=repr(exc))


def _truncated(text: str, audio_end_ms: int, spoken_ms: int) -> str:
    """The part of ``text`` said in the first ``audio_end_ms`` of ``spoken_ms``."""
    if spoken_ms <= 0 or audio_end_ms >= spoken_ms:
        return text
    words = text.split()
    keep = len(words) * audio_end_ms // spoken_ms
    return " ".join(words[:keep])
