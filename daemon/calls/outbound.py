"""Carries out one outbound notification call on a call leg.

The decisions are :class:`daemon.calls.flow.OutboundFlow`'s; this adapter only does what it
asks and reports what happens: dials through a :class:`~daemon.legs.leg.Dialer`, plays the
pre-synthesised audio into the leg's playout buffer and waits until it was really played out,
listens with VAD (dropping what was heard before), hands the utterance to ``transcribe``
(speech is served by the supervisor in a SIP worker), hangs up. All on one event loop, timed
by the leg's media clock; each action that takes time runs as a task that posts its outcome
as an event. The leg delivers this call's events only (in a SIP worker: :mod:`sip.leg`).

Keys pressed on the leg reach the flow as :class:`~daemon.calls.flow.Digit`. While the callee
speaks, a pause of ``SPECULATE_SILENCE_MS`` starts a transcription of the speech so far (one
at a time, two per utterance, none for long ones): once the pause has lasted
``DECIDE_SILENCE_MS`` with no voice since, the flow gets it as a
:class:`~daemon.calls.flow.PartialTranscript` (a filler and a short breath, "Uh... no", must
not decide on the filler), and at the end of the utterance it stands for the whole one
instead of a second transcription. The flow's early outcome
(:class:`~daemon.calls.flow.Decide`) goes to ``decide`` before the closing plays.

With ``machine_detection`` the callee's audio from the answer on feeds
:class:`media.amd.AnsweringMachineDetector` (``amd``: its :class:`~media.amd.AmdParameters`)
on the loop, frame by frame as it arrives; its decision, and for a machine the end of its
greeting, are in stream time (frames since the answer), whatever the load. With no frames
at all (no RTP), detection, the greeting wait and the listening still end on the leg's
clock. A task that raises ends the call as failed (:class:`~daemon.calls.flow.Failed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from daemon.blackbox import VERSION
from daemon.calls.blackbox_meter import BlackBoxMeter
from daemon.calls.choice import Option
from daemon.calls.flow import (
    Action,
    Answered,
    AwaitGreetingEnd,
    Decide,
    Detect,
    Detected,
    Dial,
    Digit,
    Ended,
    Event,
    Failed,
    Finish,
    GreetingEnded,
    HangUp,
    Listen,
    ListenTimeout,
    OutboundFlow,
    PartialTranscript,
    Play,
    PlayDone,
    Report,
    Ringing,
    SpeechEnded,
    StopListening,
    StopPlayback,
    Transcribe,
    Transcript,
)
from daemon.legs import leg
from daemon.legs.leg import CallLeg, Dialer, LegError
from daemon.legs.media import POLL_SECONDS, LegMedia
from daemon.logs import get_logger
from media.amd import AmdParameters, AnsweringMachineDetector
from media.vad import SpeechStarted, SpeechStopped, VoiceActivityDetector

log = get_logger(__name__)
T = TypeVar("T")

PREROLL_FRAMES = 15  # 300 ms kept from before the detected start of speech
MAX_UTTERANCE_SECONDS = 20.0
PLAY_SLACK_SECONDS = 5.0  # a sound is given up on this long after it should have played out
SPECULATE_SILENCE_MS = 240  # a pause this long while speaking: transcribe what was said so far
# The speech so far is the answer only once its pause lasts this long: Piper's "Uh." or "Um."
# then 0.4 s then "No." pauses 520-540 ms on the VAD, and Whisper hears the lone "Uh" as "yeah".
DECIDE_SILENCE_MS = 560
SPECULATIONS_PER_UTTERANCE = 2
SPECULATE_MAX_SECONDS = 6.0  # longer speech is transcribed once, at its end
# Detection decides "unknown" this long past its total_analysis_ms (and a machine's greeting
# is over this long past voicemail_wait_ms) on the leg's clock even when no frame comes
# (no RTP from the callee: one-way audio, silence suppression).
STREAM_SLACK_SECONDS = 1.0

Transcriber = Callable[[NDArray[np.int16], int, str], Awaitable[str]]
Reporter = Callable[[str], Awaitable[None]]
Decider = Callable[[dict[str, Any]], Awaitable[None]]  # the result, before the closing plays


class _Speculation:
    """A transcription of the first ``frames`` captured frames of an utterance, in flight or
    done (``task`` gives the text, or None if recognition failed)."""

    def __init__(self, frames: int, task: asyncio.Task[str | None]) -> None:
        self.frames = frames
        self.task = task
        self.offered = False  # posted to the flow as a PartialTranscript


class OutboundCall:
    def __init__(
        self,
        dialer: Dialer,
        request: dict[str, Any],
        audio: dict[str, NDArray[np.int16]],
        transcribe: Transcriber,
        report: Reporter,
        *,
        decide: Decider | None = None,
        amd: dict[str, Any] | None = None,
    ) -> None:
        choice = request.get("choice") or {}
        self.flow = OutboundFlow(
            target=request["extension"],
            ring_timeout=float(request["ring_timeout"]),
            options=[
                Option(o["value"], tuple(o.get("synonyms", ())), o.get("dtmf"))
                for o in choice.get("options", ())
            ],
            timeout_seconds=float(choice.get("timeout_seconds", 30)),
            repeat_count=int(choice.get("repeat_count", 2)),
            machine_detection=request.get("machine_detection"),
        )
        self._amd = AmdParameters(**(amd or {})) if self.flow.machine_detection else None
        self._detector: AnsweringMachineDetector | None = None
        self.dialer = dialer
        self.sounds = audio
        # The options' words bias recognition towards the answers we expect.
        self._hint = ", ".join(
            phrase for option in self.flow.options for phrase in (option.value, *option.synonyms)
        )
        self._transcribe = transcribe
        self._report = report
        self._decide = decide
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._leg: CallLeg | None = None
        self._media: LegMedia | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._utterance: NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._plays = itertools.count(1)
        # The play in progress (task, item id) and the PlayDone events of stopped plays.
        self._playing: tuple[asyncio.Task[Any], str] | None = None
        self._play_done: dict[str, PlayDone] = {}  # item id -> the PlayDone it posted
        self._stale: list[Event] = []
        self._listening: set[asyncio.Task[Any]] = set()  # listen, transcribe, speculations
        # This utterance: captured frames up to the last voiced one, its speculations, and
        # the one that covers it whole once it ended.
        self._voiced_frames = 0
        self._speculations: list[_Speculation] = []
        self._covering: _Speculation | None = None
        # For the black box: wall time the INVITE went out, the answer and the first frame
        # of audio out on the leg's clock, and the leg's Ended (its stream statistics).
        self._invite_at: float | None = None
        self._answered_clock: float | None = None
        self._decided_clock: float | None = None  # with detection: the message waits for it
        self._first_audio: float | None = None
        self._ended: leg.Ended | None = None

    @property
    def call(self) -> str | None:
        return self._leg.info.key if self._leg is not None else None

    async def run(self) -> dict[str, Any]:
        """Run the call to its end; the result is the flow's CallResult as a dict."""
        try:
            actions = self.flow.start()
            while True:
                for action in actions:
                    result = await self._do(action)
                    if result is not None:
                        return result
                event = await self._events.get()
                if any(event is stale for stale in self._stale):
                    self._stale = [e for e in self._stale if e is not event]
                    continue
                actions = self.flow.handle(event)
        finally:
            for task in self._tasks:
                task.cancel()
            if self._leg is not None and self.flow.state.value != "done":
                with contextlib.suppress(Exception):
                    await self._leg.hangup()
            if self._leg is not None:
                self._leg.release()

    async def _do(self, action: Action) -> dict[str, Any] | None:
        if isinstance(action, Dial):
            try:
                self._leg = await self.dialer.dial(action.target, action.ring_timeout)
            except (LegError, ValueError) as exc:
                self._post(Ended(0, time.time(), local_cause="dial_failed", reason=str(exc)))
                return None
            self._invite_at = time.time()
            self._spawn(self._follow(self._leg))
        elif isinstance(action, Report):
            await self._report(action.status)
        elif isinstance(action, Play):
            item_id = f"{action.item}-{next(self._plays)}"
            self._playing = (self._spawn(self._play(action.item, item_id)), item_id)
        elif isinstance(action, StopPlayback):
            self._stop_playback()
        elif isinstance(action, Listen | Transcribe | Detect | AwaitGreetingEnd):
            self._start(action)
        elif isinstance(action, StopListening):
            for task in self._listening:
                task.cancel()
            self._listening.clear()
        elif isinstance(action, Decide):
            await self._decided(action)
        elif isinstance(action, HangUp):
            if self._leg is not None:
                with contextlib.suppress(LegError):  # already gone: its Ended is moot now
                    await self._leg.hangup()
        elif isinstance(action, Finish):
            result = asdict(action.result)
            result.update(invite_at=self._invite_at, black_box=self.black_box())
            return result
        return None

    def _start(self, action: Listen | Transcribe | Detect | AwaitGreetingEnd) -> None:
        """Start the task that carries out ``action`` and posts its outcome."""
        if isinstance(action, Listen):
            self._listening.add(self._spawn(self._listen(action.timeout)))
        elif isinstance(action, Transcribe):
            self._listening.add(self._spawn(self._transcribe_utterance()))
        elif isinstance(action, Detect):
            self._spawn(self._detect())
        else:
            self._spawn(self._greeting_end())

    def black_box(self) -> dict[str, Any] | None:
        """The call's black box (:class:`daemon.blackbox.BlackBox`) once it ended; None if
        nothing was dialled."""
        if self._leg is None:
            return None
        media, ended = self._media, self._ended
        # With detection the message waits for the decision (or a machine's greeting): its
        # first audio is timed from there, not from the answer.
        first = self._first_audio
        answered = self._decided_clock if self._decided_clock is not None else self._answered_clock
        outbound = {
            "invite_at": self._invite_at,
            "answer_to_first_audio_ms": (
                round((first - answered) * 1000, 1)
                if first is not None and answered is not None
                else None
            ),
        }
        connect_seconds = ended.connect_seconds if ended is not None else 0.0
        stats = ended.stats if ended is not None else None
        if media is None:  # never answered: no media to speak of
            return {
                "version": VERSION,
                "rtp": None,
                "mos": None,
                "media": None,
                "outbound": outbound,
                "connect_seconds": connect_seconds,
            }
        meter = BlackBoxMeter()
        meter.answered(answered or 0.0)
        counters, playout = media.stats(), media.playout.stats()
        box = meter.black_box(
            stats,
            media.rate,
            connect_seconds,
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
        return {**box, "outbound": outbound}

    def _post(self, event: Event) -> None:
        self._events.put_nowait(event)

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(self._listening.discard)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        """A task that broke would leave the flow waiting for an event it never posts: the
        call fails with its error."""
        if task.cancelled() or task.exception() is None:
            return
        exc = task.exception()
        log.error("outbound.task_failed", call_id=self.call, error=repr(exc), exc_info=exc)
        self._post(Failed(f"internal error: {exc!r}", time.time()))

    def _stop_playback(self) -> None:
        """Cut the sound playing: flushed within a frame, and its PlayDone (even one already
        posted) never reaches the flow."""
        playing, self._playing = self._playing, None
        if playing is None:
            return
        task, item_id = playing
        task.cancel()
        if self._media is not None:
            self._media.playout.flush()
            self._media.playout.forget(item_id)
        done = self._play_done.pop(item_id, None)
        if done is not None:  # posted, not handled yet: it is stale
            self._stale.append(done)

    async def _decided(self, action: Decide) -> None:
        """The outcome before the closing: the planned duration ends with the closing. Not
        when the callee already hung up: the closing will not play, and the result that
        follows has the true duration."""
        media = self._media
        if self._ended is not None or media is None or media.closed:
            return
        rate = media.rate if media is not None else 8000
        answered = self.flow.answered_at
        talked = time.time() - answered if answered is not None else 0.0
        result = action.planned(talked, len(self.sounds["closing"]) / rate)
        log.info(
            "outbound.decided",
            call_id=self.call,
            choice=result.choice_response,
            raw_text=result.choice_raw_text,
        )
        if self._decide is not None:
            await self._decide({**asdict(result), "invite_at": self._invite_at})

    async def _follow(self, call: CallLeg) -> None:
        while True:
            event = await call.receive()
            if isinstance(event, leg.Ringing):
                self._post(Ringing())
            elif isinstance(event, leg.Answered):
                with contextlib.suppress(LegError):  # gone at once: nothing plays, Ended is next
                    self._media = await call.media()
                if self._media is not None:
                    self._media.playout.clock = self._media.clock.now  # first frames out
                    self._answered_clock = self._media.clock.now()
                self._post(Answered(time.time()))
            elif isinstance(event, leg.Dtmf):
                log.info("outbound.dtmf", call_id=self.call, digit=event.digit, method=event.method)
                self._post(Digit(event.digit))
            elif isinstance(event, leg.Ended):
                self._ended = event
                self._post(Ended(event.code, time.time(), event.local_cause, event.reason))
                return

    async def _play(self, item: str, item_id: str) -> None:
        media = self._media
        if media is None:  # the callee hung up as they answered: the call's Ended follows
            return
        samples = self.sounds[item]
        media.playout.push(item_id, samples)
        media.playout.end_item(item_id)
        within = len(samples) / media.rate + PLAY_SLACK_SECONDS
        played = await media.until_played(item_id, len(samples), within)
        if self._first_audio is None:
            self._first_audio = media.playout.first_out(item_id)
        media.playout.forget(item_id)
        if played or not media.closed:  # cut off by the call's end: Ended follows, not PlayDone
            done = self._play_done[item_id] = PlayDone(item)
            self._post(done)

    async def _detect(self) -> None:
        """Feed the callee's audio from the answer on to the detector until it decides (stream
        time: what it says does not depend on how busy the machine is)."""
        media = self._media
        if media is None:  # gone as it answered: the call's Ended follows
            return
        assert self._amd is not None  # the flow detects only with machine_detection set
        detector = self._detector = AnsweringMachineDetector(media.rate, self._amd)
        bound = self._amd.total_analysis_ms / 1000 + STREAM_SLACK_SECONDS
        decision = await _first(media, detector.process, bound)
        if decision is None and media.closed:
            return  # the call's Ended follows
        detected = (
            Detected(str(decision.answered_by), decision.cause, decision.at_ms)
            if decision is not None
            else Detected("unknown", "no_audio", detector.elapsed_ms)
        )
        log.info(
            "outbound.detected",
            call_id=self.call,
            answered_by=detected.answered_by,
            cause=detected.cause,
            at_ms=detected.at_ms,
        )
        self._decided_clock = media.clock.now()
        self._post(detected)

    async def _greeting_end(self) -> None:
        """A machine: follow the same stream until its greeting (or beep) is over."""
        media, detector = self._media, self._detector
        if media is None or detector is None:
            return
        assert self._amd is not None
        bound = self._amd.voicemail_wait_ms / 1000 + STREAM_SLACK_SECONDS
        end = await _first(media, detector.greeting_end, bound)
        if end is None and media.closed:
            return
        ended = (
            GreetingEnded(end.beep, end.at_ms, end.timed_out)
            if end is not None
            else GreetingEnded(False, detector.elapsed_ms, timed_out=True)
        )
        log.info(
            "outbound.greeting_ended",
            call_id=self.call,
            beep=ended.beep,
            at_ms=ended.at_ms,
            timed_out=ended.timed_out,
        )
        self._decided_clock = media.clock.now()
        self._post(ended)

    async def _listen(self, seconds: float) -> None:
        media = self._media
        if media is None:
            return
        media.clear_uplink()  # what was heard before the prompt ended is not the answer
        vad = VoiceActivityDetector(
            media.rate, aggressiveness=2, min_speech_ms=200, hangover_ms=700
        )
        preroll: deque[bytes] = deque(maxlen=PREROLL_FRAMES)
        captured: list[bytes] = []
        speaking = False
        clock = media.clock
        deadline = [clock.now() + seconds]  # the iterator below looks at it too
        frame_seconds = media.frame_bytes / 2 / media.rate
        self._voiced_frames, self._speculations, self._covering = 0, [], None
        async for frame in _frames_until(media, deadline):
            if speaking:
                captured.append(frame)
            else:
                preroll.append(frame)
            for event in vad.process(frame):
                if isinstance(event, SpeechStarted) and not speaking:
                    speaking = True
                    captured = list(preroll)
                    deadline[0] = clock.now() + MAX_UTTERANCE_SECONDS
                elif isinstance(event, SpeechStopped) and speaking:
                    self._end_utterance(captured)
                    return
            if speaking:
                self._paused(captured, vad.silence_ms, len(captured) * frame_seconds)
            if clock.now() > deadline[0]:
                break
        if not media.closed:  # the deadline passed, with or without frames coming in
            self._listen_over(captured if speaking else None)

    def _listen_over(self, captured: list[bytes] | None) -> None:
        """Listening ran out of time: talking for too long (take what was ``captured``), or
        no speech at all."""
        if captured is not None:
            self._end_utterance(captured)
        else:
            self._post(ListenTimeout())

    def _paused(self, captured: list[bytes], silence_ms: int, seconds: float) -> None:
        """After each frame of an utterance: note the last voiced one; at a pause, speculate,
        and once it is long enough, offer what the speculation heard."""
        if silence_ms == 0:
            self._voiced_frames = len(captured)
        elif silence_ms >= SPECULATE_SILENCE_MS and seconds <= SPECULATE_MAX_SECONDS:
            self._speculate(captured)
        if silence_ms >= DECIDE_SILENCE_MS:
            self._offer_partial()

    def _speculate(self, captured: list[bytes]) -> None:
        """At a pause: transcribe the speech so far, unless a speculation is in flight, this
        pause has one, or the utterance had its share."""
        specs = self._speculations
        if len(specs) >= SPECULATIONS_PER_UTTERANCE:
            return
        if specs and (not specs[-1].task.done() or specs[-1].frames >= self._voiced_frames):
            return
        frames = len(captured)
        pcm = np.frombuffer(b"".join(captured), dtype="<i2").copy()
        task = self._spawn(self._speculation(pcm))
        self._listening.add(task)
        specs.append(_Speculation(frames, task))

    def _offer_partial(self) -> None:
        """The pause is long enough to be the answer's end: the flow gets the last
        speculation's text if it is in and no voice came after the speech it holds."""
        if not self._speculations:
            return
        last = self._speculations[-1]
        if last.offered or not last.task.done() or last.task.cancelled():
            return
        text = last.task.result()
        if text is not None and last.frames >= self._voiced_frames:
            last.offered = True
            self._post(PartialTranscript(text))

    async def _speculation(self, pcm: NDArray[np.int16]) -> str | None:
        media = self._media
        assert media is not None
        try:
            return await self._transcribe(pcm, media.rate, self._hint)
        except Exception as exc:  # the transcription at the end of the utterance will tell
            log.warning("outbound.speculation_failed", call_id=self.call, error=str(exc))
            return None

    def _end_utterance(self, captured: list[bytes]) -> None:
        self._utterance = np.frombuffer(b"".join(captured), dtype="<i2").copy()
        covering = [s for s in self._speculations if s.frames >= self._voiced_frames]
        self._covering = covering[-1] if covering else None
        for speculation in self._speculations:
            if speculation is not self._covering:
                speculation.task.cancel()  # voice came after it: of no use any more
        self._post(SpeechEnded())

    async def _transcribe_utterance(self) -> None:
        media = self._media
        assert media is not None
        error = ""
        covering = self._covering
        text = await covering.task if covering is not None else None
        if text is not None:
            log.info("outbound.speculation_used", call_id=self.call)
            self._post(Transcript(text))
            return
        try:
            text = await self._transcribe(self._utterance, media.rate, self._hint)
        except Exception as exc:  # heard nothing, not a crash; the result says why
            log.error("outbound.transcription_failed", call_id=self.call, error=str(exc))
            text, error = "", str(exc) or repr(exc)
        self._post(Transcript(text, error))


async def _first(media: LegMedia, step: Callable[[bytes], T | None], seconds: float) -> T | None:
    """The first non-None ``step(frame)`` over the callee's frames; None when the stream
    ended or ``seconds`` passed on the leg's clock before (no audio came)."""

    async def feed() -> T | None:
        async for frame in media.frames():
            out = step(frame)
            if out is not None:
                return out
        return None

    feeding = asyncio.ensure_future(feed())
    bound = asyncio.ensure_future(media.clock.sleep(seconds))
    try:
        await asyncio.wait((feeding, bound), return_when=asyncio.FIRST_COMPLETED)
    finally:
        feeding.cancel()
        bound.cancel()
    return feeding.result() if feeding.done() and not feeding.cancelled() else None


async def _frames_until(media: LegMedia, deadline: list[float]) -> AsyncIterator[bytes]:
    """The callee's frames, ending when the call does or when none is waiting past
    ``deadline[0]`` on the leg's clock (no RTP must not keep a listener forever)."""
    while True:
        if media.uplink:
            yield media.uplink.popleft()[1]
        elif media.closed or media.clock.now() > deadline[0]:
            return
        else:
            await media.clock.sleep(POLL_SECONDS)
