"""An inbound call answered by a realtime model: the agent on a call leg.

The conversation (barge-in, tools, DTMF, reconnects) is the pure machine of
:mod:`daemon.calls.conversation`; the agent feeds it what the leg and the model session do,
carries out its actions, and keeps one timer on its deadline (on the media clock).

Answer; once the caller's ACK confirms the call, connect the model session (bounded by
``connect_timeout_seconds``): a caller that never ACKs costs no session. If the model cannot
be reached, say the apology in the local voice, or (``on_connect_failure = "reject"``,
connecting before answering) refuse the call with 503. With a ``fallback`` endpoint (the
embedded engine, ``[agent] fallback = "local"``) the call fails over instead: the caller
hears the bridge phrase in the local voice while the engine's session opens (before the
answer, with ``reject``: nothing to hear), and the engine greets; the apology (or 503) only if
that fails too. Mid-call failovers are the conversation's (:class:`ce.Bridge`). Uplink: the
caller's 20 ms frames, encoded to the session's input format (mu-law passthrough, or PCM at
24 kHz), go out in batches of ``uplink_batch_ms``. Downlink: audio deltas are decoded into the
playout buffer, in whatever format the session reports. With ``echo_guard`` the caller's
frames also feed an :class:`~media.echo.EchoDetector`, which judges them against what the
playout handed out when the conversation asks (:class:`ce.JudgeEcho`). While something was
played within the echo's delay range, each batch is judged too (its last
:data:`~daemon.calls.conversation.ECHO_RECHECK_MS`): one the detector finds echo only goes
to the model as silence, so that neither its VAD nor its transcription takes the agent's own
voice for the caller's; anything else goes as it came (``agent.echo_muted`` counts them).

A caller hang-up closes the model session at once; nothing outlives the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from config.schema import AgentSettings, ConnectFailure, Fallback, RealtimeSettings
from daemon.calls import conversation_events as ce
from daemon.calls.agent_config import for_call
from daemon.calls.blackbox_meter import BlackBoxMeter, VoiceMeter
from daemon.calls.conversation import ECHO_RECHECK_MS, Conversation, Stage
from daemon.calls.session import CallSession
from daemon.calls.tools import HttpTools, outcome
from daemon.legs.leg import Answered, CallLeg, Dtmf, Ended, LegError, TransferProgress
from daemon.legs.media import LegMedia
from daemon.logs import get_logger
from daemon.realtime import events as ev
from daemon.realtime.client import Endpoint, RealtimeError
from media.codec import AudioFormat, Decoder, Encoder
from media.echo import EchoDetector
from media.vad import VAD_RATES

log = get_logger(__name__)


class PhraseCache:
    """Fixed phrases in the local voice (the bridge phrase), synthesised once per text and
    rate in this process: when a cloud model fails, every call fails over at once, and the
    supervisor's one speech executor also makes the engine's replies. Calls asking while
    the first synthesis is under way share it; a failed one is not kept."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._done: OrderedDict[tuple[str, int], NDArray[np.int16]] = OrderedDict()
        self._pending: dict[tuple[str, int], asyncio.Future[NDArray[np.int16]]] = {}

    async def get(
        self,
        text: str,
        rate: int,
        synthesize: Callable[[str, int], Awaitable[NDArray[np.int16]]],
    ) -> NDArray[np.int16]:
        key = (text, rate)
        done = self._done.get(key)
        if done is not None:
            self._done.move_to_end(key)
            return done
        pending = self._pending.get(key)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = asyncio.ensure_future(synthesize(text, rate))
            self._pending[key] = pending
            pending.add_done_callback(lambda future: self._settled(key, future))
        return await asyncio.shield(pending)  # a call that ends leaves it to the others

    def _settled(self, key: tuple[str, int], future: asyncio.Future[NDArray[np.int16]]) -> None:
        if self._pending.get(key) is future:
            del self._pending[key]
        if future.cancelled() or future.exception() is not None:
            return
        self._done[key] = future.result()
        while len(self._done) > self._size:
            self._done.popitem(last=False)


PHRASES = PhraseCache()  # the worker's

MEDIA_END_GRACE = 2.0  # the media ends with the call: its Ended (the cause) follows at once
# Longest wait for the ACK after our 200 OK: pjsip ends the call after 64 x T1 = 32 s of
# unanswered 200 OK retransmissions (then the call's Ended says so first).
ACK_WAIT_SECONDS = 40.0
FLUSH_WAIT = 0.1  # the media clock carries a flush out within a frame
LAST_FRAMES = 0.2  # after the playout drained, the last frames leave the media stack
Later = Coroutine[Any, Any, None]  # waits, then feeds what it saw
Result = ce.Event | Later | None  # of an action: an event to feed now, or a wait


class AgentServices(Protocol):
    """What the agent needs from its process: local speech and reports to the supervisor."""

    async def synthesize(self, text: str, rate: int) -> NDArray[np.int16]: ...

    async def report(self, kind: str, body: dict[str, Any]) -> None: ...


class InboundAgent:
    def __init__(
        self,
        leg: CallLeg,
        agent: AgentSettings,
        endpoint: Endpoint,
        limits: RealtimeSettings,
        services: AgentServices,
        *,
        fallback: Endpoint | None = None,
        phrases: PhraseCache | None = None,
    ) -> None:
        self.leg = leg
        self.key = leg.info.key
        self.services = services
        self.agent, route = for_call(agent, leg.info)
        if fallback is None:  # nowhere to fail over to, whatever [agent] says
            self.agent = self.agent.model_copy(update={"fallback": Fallback.NONE})
        self.conversation = Conversation(self.agent, limits)
        self.session = CallSession(
            endpoint, self.agent, self.key, route, leg.info.kind, fallback=fallback
        )
        self.media: LegMedia | None = None
        self.ended = asyncio.Event()
        self.end_cause = ""
        self._tasks: set[asyncio.Task[Any]] = set()
        self._decoder: Decoder | None = None
        self._timer: tuple[float, asyncio.Task[Any]] | None = None
        self._hung_up = False  # a HangUp was carried out: the call is ending already
        self._http = HttpTools(self.key)
        self.meter = BlackBoxMeter()  # the call's black box, fed on the loop
        self._ended_event: Ended | None = None  # the leg's Ended, with the stream statistics
        self._failover: str | None = None  # why the call failed over ("kind: error"), if it did
        self._bridging: asyncio.Task[None] | None = None  # the bridge phrase being queued
        # The bridge phrase queued and not flushed: (samples queued ahead of it, its samples).
        self._bridge_queued: tuple[int, int] | None = None
        self._phrases = phrases if phrases is not None else PHRASES
        self._echo: EchoDetector | None = None  # the caller's frames, for the echo guard

    # -- the call, start to end -----------------------------------------------------------

    async def run(self) -> None:
        before_answer = self.agent.on_connect_failure is ConnectFailure.REJECT
        if not before_answer and not await self._answer_and_confirm():
            return
        try:
            input_format, output_format = await self.session.open()
        except RealtimeError as exc:
            formats = await self._connect_fallback(exc, answered=not before_answer)
            if formats is None:
                return
            input_format, output_format = formats
        if self.session.connect_ms is not None:
            self.meter.connected(self.session.connect_ms)
        if before_answer and not await self._answer_and_confirm():
            await self.session.close()
            return
        try:
            media = self.media = self.media if self.media is not None else await self.leg.media()
        except LegError as exc:  # the caller hung up while the model was connecting
            log.info("agent.caller_gone", call_id=self.key, error=str(exc))
            await self.session.close()
            return
        media.playout.clock = media.clock.now  # first frames out, on the clock of the turns
        if self.meter.answered_at is None:
            self.meter.answered(media.clock.now())
        self._decoder = Decoder(output_format, media.rate)
        try:
            started = ce.Started(bool(self.agent.greeting), failed_over=self._failover is not None)
            await self._feed(started)
            self._spawn(self._uplink(media, Encoder(media.rate, input_format)))
            self._spawn(self._downlink())
            self._spawn(self._watch_call())
            await self.ended.wait()
        finally:
            await self._finish(media)

    async def _answer_and_confirm(self) -> bool:
        """Answer, then wait for the caller's ACK; False if the call ended first."""
        try:
            await self.leg.answer()
            async with asyncio.timeout(ACK_WAIT_SECONDS):
                event = await self.leg.receive()
                while not isinstance(event, Answered | Ended):
                    event = await self.leg.receive()
        except LegError as exc:  # the caller gave up before the answer
            log.info("agent.caller_gone", call_id=self.key, error=str(exc))
            return False
        except TimeoutError:
            self.end_cause = "no ACK from the caller"
            with contextlib.suppress(LegError):
                await self.leg.hangup()
            return False
        if isinstance(event, Ended):
            self._ended_event = event
            self.end_cause = end_cause(event)
            log.info("agent.not_confirmed", call_id=self.key, cause=self.end_cause)
        return isinstance(event, Answered)

    async def _connect_fallback(
        self, exc: RealtimeError, answered: bool
    ) -> tuple[AudioFormat, AudioFormat] | None:
        """The first session could not be opened: open it on the fallback (the bridge phrase
        said meanwhile if the call is answered); its formats, or None once the call was
        refused or apologised to (no fallback, or it failed too)."""
        if not self.session.can_fail_over:
            await self._cannot_connect(exc)
            return None
        log.warning(
            "agent.failover",
            call_id=self.key,
            kind=exc.kind,
            error=str(exc),
            phase="connect",
            to="local",
        )
        if answered:
            try:
                media = self.media = await self.leg.media()
            except LegError as gone:
                log.info("agent.caller_gone", call_id=self.key, error=str(gone))
                return None
            media.playout.clock = media.clock.now
            self.meter.answered(media.clock.now())
            self._bridging = self._spawn(self._bridge(media))
        try:
            formats = await self.session.fail_over()
        except RealtimeError as local:
            await self._bridged()
            await self._cannot_connect(local, after=exc)
            return None
        await self._bridged()
        await self._report_failover(exc.kind, str(exc), "connect")  # once it worked
        return formats

    async def _cannot_connect(self, exc: RealtimeError, after: RealtimeError | None = None) -> None:
        """Refuse the call (503, not answered yet), or say the apology and hang up. ``after``:
        the model's failure that the embedded engine's (``exc``) followed, a failover that
        failed: both are kept in the black box, and the one failure reported names both."""
        error = str(exc)
        if after is not None:
            self.meter.failed(after.kind, "connect")
            error = f"{error} (on the embedded engine, after {after.kind}: {after})"
        await self._report_failure(exc.kind, error, "connect")
        try:
            if self.agent.on_connect_failure is ConnectFailure.REJECT and self.media is None:
                await self.leg.reject(503)
                return
            if self.media is None:
                self.media = await self.leg.media()
                self.meter.answered(self.media.clock.now())
            await self._apologise(self.media)
            await self.leg.hangup()
            await self._until_ended()
        except LegError as gone:
            log.info("agent.caller_gone", call_id=self.key, error=str(gone))

    async def _until_ended(self) -> None:
        """Wait (a little) for the leg's Ended, which carries the call's stream statistics."""
        with contextlib.suppress(TimeoutError, LegError):
            async with asyncio.timeout(MEDIA_END_GRACE):
                while self._ended_event is None:
                    event = await self.leg.receive()
                    if isinstance(event, Ended):
                        self._ended_event = event

    def black_box(self) -> dict[str, Any] | None:
        """The call's black box (:class:`daemon.blackbox.BlackBox`) once :meth:`run` has
        returned; None for a call that never had media (refused, or gone before it)."""
        media = self.media
        if media is None:
            return None
        ended = self._ended_event
        stats = ended.stats if ended is not None else None
        counters = media.stats()
        playout = media.playout.stats()
        box = self.meter.black_box(
            stats,
            media.rate,
            ended.connect_seconds if ended is not None else 0.0,
            media.playout.first_out,
            {
                "uplink_frames": counters.uplink_frames,
                "uplink_dropped": counters.uplink_dropped,
                "callback_errors": counters.callback_errors,
                "playout_underruns": counters.playout_underruns,
                "overrun_samples": playout.overrun_samples,
                "flushes": playout.flushes,
            },
        )
        return dict(box)

    async def _finish(self, media: LegMedia) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.session.close()
        await self._http.aclose()
        self.session.log_latency(media.playout)
        if not media.closed and not self._hung_up:  # ended here on an error: end the call
            with contextlib.suppress(LegError):
                await self.leg.hangup()
        await self._until_ended()
        log.info("agent.call_ended", call_id=self.key, cause=self.end_cause)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None:
            self._end(f"error: {exc}")
            log.error("agent.task_failed", call_id=self.key, error=repr(exc))

    def _end(self, cause: str) -> None:
        if not self.ended.is_set():
            self.end_cause = cause
            self.ended.set()

    # -- the conversation: events in, actions out ------------------------------------------

    async def _feed(self, event: ce.Event, arrived: float = 0.0) -> None:
        """Hand ``event`` to the conversation and carry out its actions, in order; what they
        report is fed at once, or by a task started as soon as its action returns it."""
        media = self.media
        assert media is not None
        pending = [event]
        while pending:
            actions = self.conversation.handle(pending.pop(0), media.clock.now(), media.playout)
            for action in actions:
                result = await self._do(action, media, arrived)
                if isinstance(result, Coroutine):
                    self._spawn(result)  # tasks start in order: a Flushed before a Drained
                elif result is not None:
                    pending.append(result)
        self._rearm(media)

    def _rearm(self, media: LegMedia) -> None:
        """Keep the one timer on the conversation's deadline."""
        deadline, timer = self.conversation.deadline, self._timer
        if timer is not None:
            if timer[0] == deadline:
                return
            timer[1].cancel()
        self._timer = None
        if deadline is not None:
            self._timer = (deadline, self._spawn(self._wake(media, deadline)))

    async def _wake(self, media: LegMedia, deadline: float) -> None:
        await media.clock.sleep(deadline - media.clock.now())
        self._timer = None
        await self._feed(ce.Timer())

    async def _do(self, action: ce.Action, media: LegMedia, arrived: float) -> Result:
        message = self.session.message(action)
        if message is not None:
            await self.session.send(message)
        elif isinstance(action, ce.Play):
            assert self._decoder is not None
            media.playout.push(action.item, self._decoder.decode(action.data), arrived)
            self.meter.item_started(action.item, media.clock.now())
        elif isinstance(action, ce.EndItem):
            media.playout.end_item(action.item)
        elif isinstance(action, ce.JudgeEcho):
            return ce.EchoJudged(self._echo_detector(media).judge(media.playout, action.ms))
        elif isinstance(action, ce.Flush):
            media.playout.flush()
            self._bridge_queued = None  # flushed with the rest, if it was queued
            return self._after(media, lambda: media.until_flushed(FLUSH_WAIT), ce.Flushed())
        elif isinstance(action, ce.AwaitPlayout):
            timeout = action.timeout
            return self._after(
                media, lambda: media.until_drained(timeout), ce.Drained(), LAST_FRAMES
            )
        elif isinstance(action, ce.SetOutputFormat):
            if self._decoder is None or self._decoder.source != action.format:
                self._decoder = Decoder(action.format, media.rate)
        else:
            return await self._do_call(action, media)
        return None

    async def _do_call(self, action: ce.Action, media: LegMedia) -> Result:
        if isinstance(action, ce.RunTool):
            tool, arguments = action.tool, action.arguments
            return self._tool(action.call_id, tool.name, lambda: self._http.run(tool, arguments))
        if isinstance(action, ce.SendDtmf):
            digits = action.digits
            return self._tool(action.call_id, "send_dtmf", lambda: self._send_dtmf(digits))
        if isinstance(action, ce.Transfer):  # its outcome is the NOTIFY's, unless refused
            result = await outcome(self.key, "transfer_call", self._transfer(action.target))
            return ce.ToolDone(action.call_id, result) if "error" in result else None
        if isinstance(action, ce.HangUp):
            self._hung_up = True
            with contextlib.suppress(LegError):
                await self.leg.hangup()
            self._end(action.cause)
        elif isinstance(action, ce.ReplaceSession | ce.Bridge | ce.ReportFailover):
            return await self._do_session(action, media)
        elif isinstance(action, ce.RecordTurn):  # role, text, at
            await self.services.report("transcript", {"call": self.key, **asdict(action.turn)})
        elif isinstance(action, ce.ReportFailure):
            await self._report_failure(action.kind, action.error, "session")
        elif isinstance(action, ce.Apologise):
            await self._apologise(media)
        elif isinstance(action, ce.End):
            self._end(action.cause)
        elif isinstance(action, ce.BargedIn | ce.SessionNote):
            self.meter.note(action, media.clock.now())
        elif isinstance(action, ce.Log):
            getattr(log, action.level)(action.event, call_id=self.key, **action.fields)
        return None

    async def _do_session(
        self, action: ce.ReplaceSession | ce.Bridge | ce.ReportFailover, media: LegMedia
    ) -> Result:
        """A new model session, and a failover's bridge phrase and report."""
        if isinstance(action, ce.Bridge):
            self._bridging = self._spawn(self._bridge(media))
        elif isinstance(action, ce.ReportFailover):
            await self._report_failover(action.kind, action.error, "session")
        else:
            if action.after:
                await media.clock.sleep(action.after)
            prepared = await self.session.prepare(action.replay, action.reason == "failover")
            if isinstance(prepared, ce.ReplaceFailed):
                return prepared
            try:  # the bridge phrase is queued before the new session can hear or speak
                await self._bridged()
            except BaseException:
                await prepared.session.close()
                raise
            return await self.session.swap(prepared)
        return None

    async def _after(
        self,
        media: LegMedia,
        wait: Callable[[], Awaitable[bool]],
        event: ce.Event,
        pause: float = 0.0,
    ) -> None:
        """Feed ``event`` once ``wait()`` is over (made here: a task cancelled before it
        started leaves no coroutine unawaited)."""
        await wait()
        if pause:
            await media.clock.sleep(pause)
        await self._feed(event)

    async def _tool(
        self, call_id: str, name: str, run: Callable[[], Awaitable[dict[str, Any]]]
    ) -> None:
        await self._feed(ce.ToolDone(call_id, await outcome(self.key, name, run())))

    async def _transfer(self, target: str) -> dict[str, Any]:
        await self.leg.transfer(target)
        return {"ok": True}

    async def _send_dtmf(self, digits: str) -> dict[str, Any]:
        await self.leg.send_dtmf(digits)
        return {"ok": True, "sent": digits}

    async def _report_failure(self, kind: str, error: str, phase: str) -> None:
        """``phase``: connect (the first session could not be opened) or session. After a
        failover the error names the model's failure before it too."""
        self.meter.failed(kind, phase)
        if self._failover is not None:
            error = f"{error} (on the embedded engine, after {self._failover})"
        body = {"call": self.key, "kind": kind, "error": error, "phase": phase}
        await self.services.report("agent_failed", body)

    async def _report_failover(self, kind: str, error: str, phase: str) -> None:
        """The model was lost (``phase`` connect or session) and the call went on on the
        embedded engine (reported once its session is up). For the black box and the record;
        at connect time it counts as at the answer (0 s)."""
        self._failover = f"{kind}: {error}"
        media = self.media
        now = media.clock.now() if media is not None and phase == "session" else None
        at = self.meter.failed_over(kind, error, phase, now)
        body = {"call": self.key, "kind": kind, "error": error, "phase": phase, "at": at}
        await self.services.report("agent_failover", body | {"to": "local"})

    async def _bridge(self, media: LegMedia) -> None:
        """The bridge phrase in the local voice, queued after what is playing."""
        if media.closed:
            return
        started = time.monotonic()
        try:
            speech = await self._phrases.get(
                self.agent.bridge_phrase, media.rate, self.services.synthesize
            )
        except Exception as exc:
            log.warning("agent.bridge_failed", call_id=self.key, error=repr(exc))
            return
        ahead = media.playout.depth_samples  # what is playing goes first (a cut response)
        media.playout.push("bridge", speech)
        media.playout.end_item("bridge")
        self._bridge_queued = (ahead, len(speech))
        synthesis_ms = round((time.monotonic() - started) * 1000, 1)
        log.info("agent.bridge_queued", call_id=self.key, synthesis_ms=synthesis_ms)

    async def _bridged(self) -> None:
        """Wait until the bridge phrase under way (if any) is queued."""
        bridging, self._bridging = self._bridging, None
        if bridging is not None:
            await bridging  # bounded by the synthesis request; it raises nothing

    def _echo_detector(self, media: LegMedia) -> EchoDetector:
        if self._echo is None:
            self._echo = EchoDetector(media.rate)
        return self._echo

    @staticmethod
    def _only_echo(echo: EchoDetector, media: LegMedia, stamp: float) -> bool:
        """Is the batch that ends at ``stamp`` only the agent's voice coming back? Judged
        only while something was played within the echo's delay range."""
        reach = (echo.parameters.max_delay_ms + ECHO_RECHECK_MS) / 1000
        if media.playout.sound_at < stamp - reach:
            return False
        return echo.judge(media.playout, ECHO_RECHECK_MS).echo

    async def _uplink(self, media: LegMedia, encoder: Encoder) -> None:
        batch_ms = self.agent.uplink_batch_ms
        echo = self._echo_detector(media) if self.agent.echo_guard else None
        batch: list[NDArray[np.int16]] = []
        stamps: list[float] = []
        muted = 0  # batches sent as silence: only the agent's echo
        voice = None
        if media.rate in VAD_RATES:  # the caller's ends of speech, for the turn latencies
            voice = VoiceMeter(media.rate, self.meter.caller_stopped)
        try:
            async for stamp, frame in media.stamped_frames():
                if voice is not None:
                    voice.feed(stamp, frame)
                if echo is not None:
                    echo.heard(stamp, frame)
                batch.append(np.frombuffer(frame, dtype="<i2"))
                stamps.append(stamp)
                if len(batch) < batch_ms // 20:
                    continue
                pcm = np.concatenate(batch)
                if echo is not None and self._only_echo(echo, media, stamp):
                    pcm[:] = 0  # the session's silence once encoded
                    muted += 1
                data = encoder.encode(pcm)
                batch.clear()
                if await self.session.append(data, stamps, media.clock):  # else being replaced
                    await self._feed(ce.UplinkSent(batch_ms))
                stamps.clear()
        finally:  # the call's end may cancel it
            if echo is not None:
                log.info("agent.echo_muted", call_id=self.key, batches=muted, judged=echo.judged)
        # The leg's Ended that closed the media says how the call ended: give it the word.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.ended.wait(), MEDIA_END_GRACE)
        await self._feed(ce.CallEnded(end_cause(None)))

    async def _downlink(self) -> None:
        while self.conversation.stage is not Stage.DONE:
            try:
                event = await self.session.receive()
            except RealtimeError as exc:
                await self._feed(ce.SessionLost(exc.kind, exc.retryable, str(exc)))
                continue
            if isinstance(event, ev.SpeechStopped) and self.media is not None:
                self.meter.model_stopped(self.media.clock.now())
            await self._feed(ce.Model(event), time.monotonic())

    async def _apologise(self, media: LegMedia) -> None:
        """The apology in the local voice, after what is playing; the caller is then hung up."""
        if media.closed:
            return
        try:
            speech = await self.services.synthesize(self.agent.apology, media.rate)
        except Exception as exc:
            log.warning("agent.apology_failed", call_id=self.key, error=repr(exc))
            return
        queued, self._bridge_queued = self._bridge_queued, None
        if queued is not None:  # a failover that failed: the bridge phrase is heard out
            ahead, samples = queued
            within = (ahead + samples) / media.rate + 1.0
            await media.until_played("bridge", samples, within)
        media.playout.flush()
        media.playout.push("apology", speech)
        media.playout.end_item("apology")
        await media.until_played("apology", len(speech), len(speech) / media.rate + 2.0)
        await media.clock.sleep(0.1)  # the last frame leaves the media stack

    async def _watch_call(self) -> None:
        while True:
            event = await self.leg.receive()
            if isinstance(event, Ended):
                self._ended_event = event
                await self._feed(ce.CallEnded(end_cause(event)))
                return
            if isinstance(event, Dtmf):
                await self._feed(ce.Dtmf(event.digit))
            elif isinstance(event, TransferProgress) and event.final:
                await self._feed(ce.TransferResult(event.code, event.reason))


def end_cause(event: Ended | None) -> str:
    """How a call that we did not hang up ended, from its Ended (None: unknown)."""
    if event is None or event.code < 300:  # the caller's BYE (200 Normal call clearing)
        return "caller hung up"
    if event.code == 408 and not event.answered:  # our 200 OK was never ACKed (timer H)
        return f"no ACK from the caller: 408 {event.reason}"
    return f"SIP {event.code} {event.reason}"
