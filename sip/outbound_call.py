"""Carries out one outbound notification call inside a SIP worker.

The decisions are :class:`daemon.calls.flow.OutboundFlow`'s; this adapter only does what it
asks and reports what happens: dials through the worker, plays the pre-synthesised audio into
the playout buffer and waits until it was really played out, listens with VAD (dropping what
was heard before), hands the utterance to ``transcribe`` (speech is served by the supervisor),
hangs up. All on the worker's event loop; each action that takes time runs as a task that
posts its outcome as an event.

It acts on its own call's SIP events only: they come from :class:`sip.call_events.CallEvents`,
claimed under the call's key as soon as ``make_call`` returns it (events that came earlier are
kept for it), and the follower checks the key of each one as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from daemon.calls.choice import Option
from daemon.calls.flow import (
    Action,
    Answered,
    Dial,
    Ended,
    Event,
    Finish,
    HangUp,
    Listen,
    ListenTimeout,
    OutboundFlow,
    Play,
    PlayDone,
    Report,
    Ringing,
    SpeechEnded,
    Transcribe,
    Transcript,
)
from daemon.logs import get_logger
from media.vad import SpeechStarted, SpeechStopped, VoiceActivityDetector
from sip.audio_port import CallAudio
from sip.call_events import CallEvents
from sip.endpoint import SipError
from sip.events import CallAnswered, CallEnded, CallRinging, SipEvent

log = get_logger(__name__)

PREROLL_FRAMES = 15  # 300 ms kept from before the detected start of speech
MAX_UTTERANCE_SECONDS = 20.0

Transcriber = Callable[[NDArray[np.int16], int, str], Awaitable[str]]
Reporter = Callable[[str], Awaitable[None]]


class CallControl(Protocol):
    """What the flow asks of the SIP worker (:class:`sip.worker.SipWorker` in a worker)."""

    async def make_call(self, target: str, ring_timeout: float) -> str: ...

    async def hangup(self, call: str) -> None: ...

    async def audio(self, call: str) -> CallAudio: ...


class OutboundCall:
    def __init__(
        self,
        worker: CallControl,
        request: dict[str, Any],
        audio: dict[str, NDArray[np.int16]],
        transcribe: Transcriber,
        report: Reporter,
        *,
        calls: CallEvents,  # the worker's SIP events, by call
    ) -> None:
        choice = request.get("choice") or {}
        self.flow = OutboundFlow(
            target=request["extension"],
            ring_timeout=float(request["ring_timeout"]),
            options=[
                Option(o["value"], tuple(o.get("synonyms", ()))) for o in choice.get("options", ())
            ],
            timeout_seconds=float(choice.get("timeout_seconds", 30)),
            repeat_count=int(choice.get("repeat_count", 2)),
        )
        self.worker = worker
        self._calls = calls
        self.sounds = audio
        # The options' words bias recognition towards the answers we expect.
        self._hint = ", ".join(
            phrase for option in self.flow.options for phrase in (option.value, *option.synonyms)
        )
        self._transcribe = transcribe
        self._report = report
        self._events: asyncio.Queue[Event] = asyncio.Queue()
        self._call: str | None = None
        self._audio: CallAudio | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._utterance: NDArray[np.int16] = np.zeros(0, dtype=np.int16)
        self._plays = itertools.count(1)

    @property
    def call(self) -> str | None:
        return self._call

    async def run(self) -> dict[str, Any]:
        """Run the call to its end; the result is the flow's CallResult as a dict."""
        try:
            actions = self.flow.start()
            while True:
                for action in actions:
                    result = await self._do(action)
                    if result is not None:
                        return result
                actions = self.flow.handle(await self._events.get())
        finally:
            for task in self._tasks:
                task.cancel()
            if self._call is not None and self.flow.state.value != "done":
                with contextlib.suppress(Exception):
                    await self.worker.hangup(self._call)
            if self._call is not None:
                self._calls.release(self._call)

    async def _do(self, action: Action) -> dict[str, Any] | None:
        if isinstance(action, Dial):
            with self._calls.dialing():
                try:
                    self._call = await self.worker.make_call(action.target, action.ring_timeout)
                except (SipError, ValueError) as exc:
                    self._post(Ended(0, time.time(), local_cause="dial_failed", reason=str(exc)))
                    return None
                events = self._calls.claim(self._call)
            self._spawn(self._follow_sip(self._call, events))
        elif isinstance(action, Report):
            await self._report(action.status)
        elif isinstance(action, Play):
            self._spawn(self._play(action.item))
        elif isinstance(action, Listen):
            self._spawn(self._listen(action.timeout))
        elif isinstance(action, Transcribe):
            self._spawn(self._transcribe_utterance())
        elif isinstance(action, HangUp):
            assert self._call is not None
            await self.worker.hangup(self._call)
        elif isinstance(action, Finish):
            return asdict(action.result)
        return None

    def _post(self, event: Event) -> None:
        self._events.put_nowait(event)

    def _spawn(self, coroutine: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _follow_sip(self, call: str, events: asyncio.Queue[SipEvent]) -> None:
        while True:
            event = await events.get()
            if getattr(event, "call", None) != call:
                log.error("outbound.foreign_event", call_id=call, sip_event=repr(event))
                continue
            if isinstance(event, CallRinging):
                self._post(Ringing())
            elif isinstance(event, CallAnswered):
                self._audio = await self.worker.audio(call)
                self._post(Answered(time.time()))
            elif isinstance(event, CallEnded):
                self._post(Ended(event.code, time.time(), event.local_cause, event.reason))
                return

    async def _play(self, item: str) -> None:
        audio = self._audio
        assert audio is not None
        samples = self.sounds[item]
        item_id = f"{item}-{next(self._plays)}"
        audio.playout.push(item_id, samples)
        audio.playout.end_item(item_id)
        # The media thread consumes the playout and must not touch the loop: poll, per frame.
        while audio.playout.played_samples(item_id) < len(samples) and not audio.closed:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        audio.playout.forget(item_id)
        self._post(PlayDone(item))

    async def _listen(self, seconds: float) -> None:
        audio = self._audio
        assert audio is not None
        audio.uplink.clear()  # what was heard before the prompt ended is not the answer
        vad = VoiceActivityDetector(
            audio.rate, aggressiveness=2, min_speech_ms=200, hangover_ms=700
        )
        preroll: deque[bytes] = deque(maxlen=PREROLL_FRAMES)
        captured: list[bytes] = []
        speaking = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        async for frame in audio.frames():
            if speaking:
                captured.append(frame)
            else:
                preroll.append(frame)
            for event in vad.process(frame):
                if isinstance(event, SpeechStarted) and not speaking:
                    speaking = True
                    captured = list(preroll)
                    deadline = loop.time() + MAX_UTTERANCE_SECONDS
                elif isinstance(event, SpeechStopped) and speaking:
                    self._utterance = np.frombuffer(b"".join(captured), dtype="<i2").copy()
                    self._post(SpeechEnded())
                    return
            if loop.time() > deadline:
                if speaking:  # talking for too long: take what we have
                    self._utterance = np.frombuffer(b"".join(captured), dtype="<i2").copy()
                    self._post(SpeechEnded())
                else:
                    self._post(ListenTimeout())
                return

    async def _transcribe_utterance(self) -> None:
        audio = self._audio
        assert audio is not None
        error = ""
        try:
            text = await self._transcribe(self._utterance, audio.rate, self._hint)
        except Exception as exc:  # heard nothing, not a crash; the result says why
            log.error("outbound.transcription_failed", call_id=self._call, error=str(exc))
            text, error = "", str(exc) or repr(exc)
        self._post(Transcript(text, error))
