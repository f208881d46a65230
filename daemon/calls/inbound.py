"""An inbound call answered by a realtime model: the bridge, barge-in, tools and DTMF.

Runs in the SIP worker that holds the call, on its event loop:

1. Answer, and once the caller's ACK confirms the call, connect and configure the model
   session (bounded by ``connect_timeout_seconds``): a caller that never ACKs (a scanner, a
   broken peer) costs no model session. If the model cannot be reached, say the apology
   with the local voice. With ``on_connect_failure = "reject"`` the session is connected
   before answering instead, so that the call can still be refused with 503.
2. Uplink: the caller's 20 ms frames are encoded to the session's input format (mu-law
   passthrough at 8 kHz, or PCM resampled to 24 kHz) and sent in batches of
   ``uplink_batch_ms`` as ``input_audio_buffer.append``.
3. Downlink: audio deltas are decoded to the call's rate into the playout buffer, tagged with
   their item, in whatever format the session reports.
4. Barge-in: on ``speech_started``, once the caller has spoken for ``barge_in_min_ms`` (or
   ``greeting_guard_ms`` over the greeting), the playout is flushed within one frame, the
   active response is cancelled, and the item is truncated at the milliseconds the caller
   really heard (counted by the playout buffer, not by the clock).
5. Tools: ``end_call`` hangs up once the goodbye has been played out; ``transfer_call``
   REFERs the caller to a configured extension once the announcement has been played, and
   tells the model how it went; ``send_dtmf`` sends keypad tones; HTTP tools from config
   POST their arguments and hand the JSON answer back. A failing tool is an error for the
   model, never for the call. Caller DTMF reaches the model as a user text item.

A caller hang-up closes the model session at once; nothing outlives the call.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from config.schema import AgentSettings, ConnectFailure, RealtimeSettings
from daemon.calls.agent_config import (
    END_CALL,
    SEND_DTMF,
    for_call,
    session_config,
    transfer_targets,
)
from daemon.calls.tools import HttpTools
from daemon.logs import get_logger
from daemon.realtime import events as ev
from daemon.realtime.client import Endpoint, RealtimeError, RealtimeSession
from media.codec import PCMU, AudioFormat, Decoder, Encoder
from sip.audio_port import CallAudio
from sip.errors import SipError
from sip.events import (
    CallAnswered,
    CallEnded,
    DtmfReceived,
    IncomingCall,
    SipEvent,
    TransferProgress,
)
from sip.worker import SipWorker

log = get_logger(__name__)

Synthesize = Callable[[str, int], Awaitable[NDArray[np.int16]]]
Report = Callable[[str, dict[str, Any]], Awaitable[None]]

DTMF_GAP_SECONDS = 1.5  # digits typed closer than this go to the model together
END_CALL_MAX_WAIT = 30.0  # longest goodbye played out before end_call hangs up anyway
TRANSFER_SECONDS = 30.0  # longest wait for the transfer target to answer
MEDIA_END_GRACE = 2.0  # the media ends with the call: its CallEnded (the cause) follows at once
REPLAY_TURNS = 30  # transcript turns replayed into a new session
# Longest wait for the ACK after our 200 OK: pjsip ends the call after 64 x T1 = 32 s of
# unanswered 200 OK retransmissions (then the call's CallEnded says so first).
ACK_WAIT_SECONDS = 40.0


@dataclass
class Turn:
    role: str  # caller | agent
    text: str
    at: float  # seconds since the call was answered


@dataclass
class InboundCall:
    """What the worker process gives an inbound agent: the call and its surroundings."""

    worker: SipWorker
    call: IncomingCall
    sip_events: asyncio.Queue[SipEvent]  # this call's events (DTMF, end)
    synthesize: Synthesize  # local TTS at a rate (served by the supervisor)
    report: Report  # events for the supervisor (transcript turns, the outcome)
    transcript: list[Turn] = field(default_factory=list)


class InboundAgent:
    def __init__(
        self,
        ctx: InboundCall,
        agent: AgentSettings,
        endpoint: Endpoint,
        limits: RealtimeSettings | None = None,
    ) -> None:
        self.ctx = ctx
        self.limits = limits or RealtimeSettings()
        self.agent, self.route = for_call(agent, ctx.call)
        self.endpoint = endpoint
        self.key = ctx.call.call
        self.session = RealtimeSession(endpoint, session_config(self.agent))
        self.audio: CallAudio | None = None
        self.answered_at = 0.0
        self.ended = asyncio.Event()
        self.end_cause = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._decoder: Decoder | None = None
        self._output_format: AudioFormat = PCMU
        self._sent_ms = 0  # caller audio sent, in the model's input-buffer timeline
        self._response: str | None = None  # response in progress
        self._greeting: str | None = None  # response id of the greeting
        self._greeting_asked = False
        self._item_response: dict[str, str] = {}  # audio item -> its response
        self._playing: str | None = None  # the item last pushed to the playout buffer
        self._speech_start: int | None = None  # audio_start_ms of the caller's current speech
        self._barge_timer: asyncio.TimerHandle | None = None
        self._digits = ""
        self._digit_timer: asyncio.TimerHandle | None = None
        self._hanging_up: str | None = None  # our own hang-up's cause, once we start one
        self._transfer: asyncio.Future[TransferProgress] | None = None
        self._reconnects = 0
        self._event_at = 0.0  # arrival of the model event being handled
        self._speech_event_at = 0.0  # arrival of the last speech_started
        self._uplink_latency: deque[float] = deque(maxlen=20000)
        self._session_started = time.monotonic()
        self._http = HttpTools(self.key)

    # -- the call, start to end -----------------------------------------------------------

    async def run(self) -> None:
        ctx = self.ctx
        before_answer = self.agent.on_connect_failure is ConnectFailure.REJECT
        if not before_answer and not await self._answer_and_confirm():
            return
        started = time.monotonic()
        try:
            reported = await self.session.open(self.agent.connect_timeout_seconds)
        except RealtimeError as exc:
            await self._cannot_connect(exc, answered=not before_answer)
            return
        log.info(
            "agent.session_ready",
            call_id=self.key,
            url=self.endpoint.safe_url,
            dialect=self.endpoint.dialect.name,
            input_format=str(reported.input_format),
            output_format=str(reported.output_format),
            connect_ms=round((time.monotonic() - started) * 1000),
            route=self.route,
        )
        if before_answer and not await self._answer_and_confirm():
            await self.session.close()
            return
        try:
            self.audio = await ctx.worker.audio(self.key)
        except SipError as exc:  # the caller hung up while the model was connecting
            log.info("agent.caller_gone", call_id=self.key, error=str(exc))
            await self.session.close()
            return
        self.answered_at = time.monotonic()
        assert reported.input_format is not None
        assert reported.output_format is not None
        self._output_format = reported.output_format
        encoder = Encoder(self.audio.rate, reported.input_format)
        self._decoder = Decoder(reported.output_format, self.audio.rate)
        try:
            if self.agent.greeting:
                self._greeting_asked = True
                await self.session.send(self.endpoint.dialect.respond(self.agent.greeting))
            self._spawn(self._uplink(self.audio, encoder))
            self._spawn(self._downlink())
            self._spawn(self._watch_call())
            await self.ended.wait()
        finally:
            await self._finish()

    async def _answer_and_confirm(self) -> bool:
        """Answer, then wait for the caller's ACK; False if the call ended first."""
        ctx = self.ctx
        try:
            await ctx.worker.answer(self.key)
        except SipError as exc:  # the caller gave up before the answer
            log.info("agent.caller_gone", call_id=self.key, error=str(exc))
            return False
        try:
            async with asyncio.timeout(ACK_WAIT_SECONDS):
                while True:
                    event = await ctx.sip_events.get()
                    if isinstance(event, CallAnswered):
                        return True
                    if isinstance(event, CallEnded):
                        self.end_cause = end_cause(event)
                        log.info("agent.not_confirmed", call_id=self.key, cause=self.end_cause)
                        return False
        except TimeoutError:
            self.end_cause = "no ACK from the caller"
            with contextlib.suppress(SipError):
                await ctx.worker.hangup(self.key)
            return False

    async def _cannot_connect(self, exc: RealtimeError, answered: bool = False) -> None:
        ctx = self.ctx
        log.error(
            "agent.connect_failed",
            call_id=self.key,
            url=self.endpoint.safe_url,
            kind=exc.kind,
            error=str(exc),
            fallback=self.agent.on_connect_failure.value,
            sip_code=503 if self.agent.on_connect_failure is ConnectFailure.REJECT else None,
        )
        await ctx.report("agent_failed", {"call": self.key, "kind": exc.kind, "error": str(exc)})
        if self.agent.on_connect_failure is ConnectFailure.REJECT:
            with contextlib.suppress(SipError):
                await ctx.worker.reject(self.key, 503)
            return
        try:
            if not answered:
                await ctx.worker.answer(self.key)
            audio = await ctx.worker.audio(self.key)
            speech = await ctx.synthesize(self.agent.apology, audio.rate)
            audio.playout.push("apology", speech)
            audio.playout.end_item("apology")
            await self._until_played(audio, "apology", len(speech))
            await ctx.worker.hangup(self.key)
        except SipError as exc2:
            log.info("agent.caller_gone", call_id=self.key, error=str(exc2))

    async def _until_played(self, audio: CallAudio, item: str, samples: int) -> None:
        deadline = time.monotonic() + samples / audio.rate + 2.0
        while audio.playout.played_samples(item) < samples and time.monotonic() < deadline:
            if audio.closed:
                return
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the last frame leaves pjmedia's jitter of one tick

    async def _finish(self) -> None:
        for timer in (self._barge_timer, self._digit_timer):
            if timer is not None:
                timer.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.session.close()
        await self._http.aclose()
        self._log_latency()
        if self._hanging_up is None and self.audio is not None and not self.audio.closed:
            with contextlib.suppress(SipError):
                await self.ctx.worker.hangup(self.key)
        log.info("agent.call_ended", call_id=self.key, cause=self.end_cause)

    def _log_latency(self) -> None:
        """The call's daemon-added latency each way (ms), for metrics and the bench."""
        audio = self.audio
        if audio is None:
            return
        stats = audio.playout.stats()
        log.info(
            "agent.latency",
            call_id=self.key,
            uplink_p50_ms=_percentile_ms(self._uplink_latency, 50),
            uplink_p99_ms=_percentile_ms(self._uplink_latency, 99),
            downlink_p50_ms=_percentile_ms(audio.playout.latencies, 50),
            downlink_p99_ms=_percentile_ms(audio.playout.latencies, 99),
            uplink_frames=len(self._uplink_latency),
            underruns=stats.underruns,
        )

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._end(f"error: {exc}")
            if not isinstance(exc, RealtimeError):
                log.error("agent.task_failed", call_id=self.key, error=repr(exc))

    def _end(self, cause: str) -> None:
        if not self.ended.is_set():
            self.end_cause = cause
            self.ended.set()

    def _elapsed(self) -> float:
        return round(time.monotonic() - self.answered_at, 3)

    # -- caller -> model ------------------------------------------------------------------

    async def _uplink(self, audio: CallAudio, encoder: Encoder) -> None:
        dialect = self.endpoint.dialect
        frames_per_batch = self.agent.uplink_batch_ms // 20
        batch: list[NDArray[np.int16]] = []
        stamps: list[float] = []
        async for stamp, frame in audio.stamped_frames():
            batch.append(np.frombuffer(frame, dtype="<i2"))
            stamps.append(stamp)
            if len(batch) < frames_per_batch:
                continue
            pcm = np.concatenate(batch)
            batch.clear()
            data = encoder.encode(pcm)
            try:
                await self.session.send(dialect.append(base64.b64encode(data).decode()))
            except RealtimeError:
                stamps.clear()
                continue  # the session is being replaced (by _downlink): this audio is lost
            sent = time.monotonic()
            self._uplink_latency.extend(sent - s for s in stamps)
            stamps.clear()
            self._sent_ms += self.agent.uplink_batch_ms
        # The SIP event that closed the media says how the call ended: give it the word.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), MEDIA_END_GRACE)
        self._noticed_end()

    # -- model -> caller ------------------------------------------------------------------

    async def _downlink(self) -> None:
        while True:
            try:
                event = await self.session.receive()
                self._event_at = time.monotonic()
                if isinstance(event, ev.ServerError) and event.type == "server_error":
                    raise RealtimeError("closed", f"server_error: {event.message}", 1011)
                if isinstance(event, ev.ServerError) and "rate_limit" in event.code:
                    raise RealtimeError("rate_limit", f"{event.code}: {event.message}")
            except RealtimeError as exc:
                if not await self._session_lost(exc):
                    return
                continue
            await self._on_model_event(event)
            if (
                isinstance(event, ev.ResponseDone)
                and time.monotonic() - self._session_started > self.limits.max_session_minutes * 60
            ):
                await self._replace_session("rotation")

    async def _session_lost(self, exc: RealtimeError) -> bool:
        """Reconnect if the loss is one that passes and reconnects are left; else end the
        call politely. True when a new session is up."""
        while exc.retryable and self._reconnects < self.limits.max_reconnects:
            self._reconnects += 1
            log.warning(
                "agent.reconnecting", call_id=self.key, error=str(exc), attempt=self._reconnects
            )
            try:
                await self._replace_session("reconnect")
                return True
            except RealtimeError as again:
                exc = again
                await asyncio.sleep(0.5)
        log.error("agent.session_lost", call_id=self.key, kind=exc.kind, error=str(exc))
        await self.ctx.report(
            "agent_failed", {"call": self.key, "kind": exc.kind, "error": str(exc)}
        )
        await self._apologise()
        self._end(f"model {exc.kind}: {exc}")
        return False

    async def _replace_session(self, reason: str) -> None:
        """A new session with the conversation so far replayed as text; then swap."""
        new = RealtimeSession(self.endpoint, session_config(self.agent))
        reported = await new.open(self.agent.connect_timeout_seconds)
        dialect = self.endpoint.dialect
        try:
            for turn in self.ctx.transcript[-REPLAY_TURNS:]:
                item = dialect.user_text if turn.role == "caller" else dialect.assistant_text
                await new.send(item(turn.text))
        except RealtimeError:
            await new.close()
            raise
        old, self.session = self.session, new
        await old.close()
        self._session_started = time.monotonic()
        self._sent_ms = 0  # the new session's input buffer starts now
        self._response = None
        self._speech_start = None
        self._playing = None  # items of the old session cannot be truncated in the new one
        if reported.output_format is not None and reported.output_format != self._output_format:
            assert self.audio is not None
            self._output_format = reported.output_format
            self._decoder = Decoder(reported.output_format, self.audio.rate)
        log.info(
            "agent.session_replaced",
            call_id=self.key,
            reason=reason,
            replayed=min(len(self.ctx.transcript), REPLAY_TURNS),
        )

    async def _apologise(self) -> None:
        """The apology in the local voice, after what is playing; the caller is then hung up."""
        audio = self.audio
        if audio is None or audio.closed:
            return
        try:
            speech = await self.ctx.synthesize(self.agent.apology, audio.rate)
        except Exception as exc:
            log.warning("agent.apology_failed", call_id=self.key, error=repr(exc))
            return
        audio.playout.flush()
        audio.playout.push("apology", speech)
        audio.playout.end_item("apology")
        await self._until_played(audio, "apology", len(speech))

    async def _on_model_event(self, event: ev.ModelEvent) -> None:
        if self._on_audio_event(event):
            return
        if isinstance(event, ev.SpeechStarted):
            self._speech_start = event.audio_start_ms
            self._speech_event_at = self._event_at
            self._consider_barge_in()
        elif isinstance(event, ev.SpeechStopped):
            self._speech_start = None
            if self._barge_timer is not None:
                self._barge_timer.cancel()
                self._barge_timer = None
        elif isinstance(event, ev.AgentTranscript | ev.CallerTranscript):
            await self._turn("agent" if isinstance(event, ev.AgentTranscript) else "caller", event)
        elif isinstance(event, ev.FunctionCall):
            self._spawn(self._tool(event))
        elif isinstance(event, ev.ServerError):
            log.warning(
                "agent.server_error",
                call_id=self.key,
                type=event.type,
                code=event.code,
                message=event.message,
            )

    def _on_audio_event(self, event: ev.ModelEvent) -> bool:
        """Audio, responses and format changes; False for any other event."""
        audio = self.audio
        assert audio is not None
        if isinstance(event, ev.AudioDelta):
            assert self._decoder is not None
            self._item_response[event.item_id] = event.response_id
            self._playing = event.item_id
            audio.playout.push(event.item_id, self._decoder.decode(event.audio), self._event_at)
        elif isinstance(event, ev.AudioDone):
            audio.playout.end_item(event.item_id)
        elif isinstance(event, ev.ResponseCreated):
            self._response = event.response_id
            if self._greeting_asked and self._greeting is None:
                self._greeting = event.response_id
        elif isinstance(event, ev.ResponseDone):
            if self._response == event.response_id:
                self._response = None
            if event.status == "failed":
                log.warning("agent.response_failed", call_id=self.key, error=event.error)
        elif isinstance(event, ev.SessionReported):
            reported = event.output_format
            if not event.created and reported is not None and reported != self._output_format:
                self._output_format = reported
                self._decoder = Decoder(reported, audio.rate)
        else:
            return False
        return True

    async def _turn(self, role: str, event: ev.AgentTranscript | ev.CallerTranscript) -> None:
        if not event.text.strip():
            return
        turn = Turn(role, event.text.strip(), self._elapsed())
        self.ctx.transcript.append(turn)
        await self.ctx.report(
            "transcript", {"call": self.key, "role": role, "text": turn.text, "at": turn.at}
        )

    # -- barge-in -------------------------------------------------------------------------

    def _consider_barge_in(self) -> None:
        """Interrupt once the caller has spoken long enough; a timer if not yet."""
        audio = self.audio
        start = self._speech_start
        if audio is None or start is None or self._playing is None:
            return
        if audio.playout.depth_samples == 0 and self._response is None:
            return  # nothing is being said to the caller
        playing_greeting = self._item_response.get(self._playing) == self._greeting
        guard = self.agent.greeting_guard_ms if playing_greeting else self.agent.barge_in_min_ms
        heard = self._sent_ms - start
        if heard >= guard:
            self._spawn(self._barge_in())
            return
        if self._barge_timer is None:
            self._barge_timer = asyncio.get_running_loop().call_later(
                (guard - heard) / 1000, self._barge_timer_fired
            )

    def _barge_timer_fired(self) -> None:
        self._barge_timer = None
        self._consider_barge_in()

    async def _barge_in(self) -> None:
        audio, item = self.audio, self._playing
        if audio is None or item is None:
            return
        self._playing = None
        self._speech_start = None
        audio.playout.flush()
        response, self._response = self._response, None
        dialect = self.endpoint.dialect
        if response is not None:
            await self.session.send(dialect.cancel())
        deadline = time.monotonic() + 0.1
        # The media clock thread carries the flush out within a frame; it can only be polled.
        while audio.playout.flush_pending and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.002)
        stop_ms = (time.monotonic() - self._speech_event_at) * 1000
        played_ms = audio.playout.played_ms(item)
        await self.session.send(dialect.truncate(item, played_ms))
        log.info(
            "agent.barge_in",
            call_id=self.key,
            item=item,
            played_ms=played_ms,
            cancelled=response is not None,
            stop_ms=round(stop_ms, 1),
        )

    # -- tools and the call ---------------------------------------------------------------

    async def _tool(self, call: ev.FunctionCall) -> None:
        """Run a tool the model called; its result (or error) goes back to the model."""
        dialect = self.endpoint.dialect
        log.info("agent.tool", call_id=self.key, tool=call.name, arguments=call.arguments)
        try:
            arguments = json.loads(call.arguments or "{}")
            if not isinstance(arguments, dict):
                raise ValueError("not an object")
        except ValueError:
            output: dict[str, Any] = {"error": "the arguments are not a JSON object"}
        else:
            if call.name == END_CALL.name:
                await self.session.send(dialect.function_output(call.call_id, '{"ok": true}'))
                await self._end_call()
                return
            try:
                output = await self._run_tool(call.name, arguments)
            except Exception as exc:  # a failing tool is the model's problem, not the call's
                log.warning("agent.tool_failed", call_id=self.key, tool=call.name, error=str(exc))
                output = {"error": str(exc) or type(exc).__name__}
        if self.ended.is_set():
            return
        await self.session.send(dialect.function_output(call.call_id, json.dumps(output)))
        await self.session.send(dialect.respond())

    async def _run_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        if name == SEND_DTMF.name:
            digits = str(arguments.get("digits", ""))
            if not digits or any(d not in "0123456789*#ABCD" for d in digits):
                return {"error": "digits must be 0-9, *, # or A-D"}
            await self.ctx.worker.send_dtmf(self.key, digits)
            return {"ok": True, "sent": digits}
        if name == "transfer_call" and transfer_targets(self.agent):
            return await self._transfer_call(str(arguments.get("extension") or ""))
        for tool in self.agent.tools:
            if tool.name == name:
                return await self._http.run(tool, arguments)
        return {"error": f"unknown tool {name!r}"}

    async def _transfer_call(self, extension: str) -> dict[str, Any]:
        allowed = [t for t in (self.agent.transfer_target, *self.agent.transfer_extensions) if t]
        target = extension or allowed[0]
        if target not in allowed:
            return {"error": f"cannot transfer to {target!r}; allowed: {allowed}"}
        await self._until_said()  # "I am transferring you" is heard before the REFER
        self._transfer = asyncio.get_running_loop().create_future()
        await self.ctx.worker.transfer(self.key, target)
        try:
            async with asyncio.timeout(TRANSFER_SECONDS):
                progress = await self._transfer
        except TimeoutError:
            return {"error": f"the transfer to {target} got no answer"}
        finally:
            self._transfer = None
        if not 200 <= progress.code < 300:
            return {"error": f"the transfer to {target} failed: {progress.code} {progress.reason}"}
        log.info("agent.transferred", call_id=self.key, target=target)
        await self._hang_up("transferred")
        return {"ok": True}

    async def _until_said(self) -> None:
        """Wait until everything the model said so far has been played to the caller."""
        audio = self.audio
        assert audio is not None
        deadline = time.monotonic() + END_CALL_MAX_WAIT
        # The speech may still be streaming in: wait for its response to finish, then for
        # the playout buffer to run dry (the media thread drains it: it can only be polled).
        while (self._response is not None or audio.playout.depth_samples) and (  # noqa: ASYNC110
            time.monotonic() < deadline and not audio.closed
        ):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the last frames leave pjmedia

    async def _end_call(self) -> None:
        """Hang up once everything queued for the caller (the goodbye) has been played."""
        await self._until_said()
        await self._hang_up("end_call")

    async def _hang_up(self, cause: str) -> None:
        """End the call from our side. The media and the SIP events may report the end
        before the hang-up returns; they then take ``cause`` too, not "caller hung up"."""
        self._hanging_up = cause
        with contextlib.suppress(SipError):
            await self.ctx.worker.hangup(self.key)
        self._end(cause)

    def _noticed_end(self, event: CallEnded | None = None) -> None:
        """The media or the SIP events say the call is over: unless we hung up, the caller did,
        or the SIP failure ``event`` reports did."""
        self._end(self._hanging_up or end_cause(event))

    async def _watch_call(self) -> None:
        while True:
            event = await self.ctx.sip_events.get()
            if isinstance(event, CallEnded):
                self._noticed_end(event)
                return
            if isinstance(event, DtmfReceived):
                self._dtmf(event.digit)
            elif isinstance(event, TransferProgress) and event.final:
                self._transfer_progress(event)

    def _transfer_progress(self, event: TransferProgress) -> None:
        if self._transfer is not None and not self._transfer.done():
            self._transfer.set_result(event)

    def _dtmf(self, digit: str) -> None:
        self._digits += digit
        if self._digit_timer is not None:
            self._digit_timer.cancel()
            self._digit_timer = None
        if digit == "#":
            self._spawn(self._send_digits())
        else:
            self._digit_timer = asyncio.get_running_loop().call_later(
                DTMF_GAP_SECONDS, lambda: self._spawn(self._send_digits())
            )

    async def _send_digits(self) -> None:
        digits, self._digits = self._digits, ""
        self._digit_timer = None
        if not digits:
            return
        dialect = self.endpoint.dialect
        log.info("agent.dtmf", call_id=self.key, digits=digits)
        await self.session.send(dialect.user_text(f"[The caller pressed the keys: {digits}]"))
        if self._response is None:
            await self.session.send(dialect.respond())


def end_cause(event: CallEnded | None) -> str:
    """How a call that we did not hang up ended, from its CallEnded (None: unknown)."""
    if event is None or event.code < 300:  # the caller's BYE (200 Normal call clearing)
        return "caller hung up"
    if event.code == 408 and not event.answered:  # our 200 OK was never ACKed (timer H)
        return f"no ACK from the caller: 408 {event.reason}"
    return f"SIP {event.code} {event.reason}"


def _percentile_ms(seconds: Iterable[float], q: float) -> float | None:
    values = list(seconds)
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None
