"""Outbound calls in one worker follow their own call's SIP events only, whatever the order."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import numpy as np
from numpy.typing import NDArray

from sip.audio_port import CallAudio
from sip.call_events import CallEvents
from sip.events import CallAnswered, CallEnded, CallRinging, SipEvent
from sip.outbound_call import OutboundCall

RATE = 8000


class MemoryWorker:
    """The worker interface an outbound call uses, in memory: a dial returns its key only when
    the test lets it (as a slow reply from the SIP thread would), events go through the same
    :class:`CallEvents` the worker process routes with, and a media clock drains each
    answered call's playout buffer."""

    def __init__(self, calls: CallEvents) -> None:
        self.calls = calls
        self._keys = itertools.count(1)
        self.placed: dict[str, str] = {}  # target -> call key
        self._replies: dict[str, asyncio.Event] = {}
        self._placed = asyncio.Condition()
        self.audio_asked: list[str] = []
        self.hangups: list[str] = []
        self._audio: dict[str, CallAudio] = {}
        self._clocks: list[asyncio.Task[None]] = []

    async def make_call(self, target: str, ring_timeout: float) -> str:
        key = f"m{next(self._keys)}"
        reply = self._replies.setdefault(target, asyncio.Event())
        async with self._placed:
            self.placed[target] = key
            self._placed.notify_all()
        await reply.wait()
        return key

    async def key_of(self, target: str) -> str:
        """The key of the call placed to ``target`` (its dial still waiting for the reply)."""
        async with asyncio.timeout(5), self._placed:
            await self._placed.wait_for(lambda: target in self.placed)
        return self.placed[target]

    def reply(self, target: str) -> None:
        self._replies[target].set()

    def emit(self, event: SipEvent) -> None:
        self.calls.route(event)

    async def audio(self, call: str) -> CallAudio:
        self.audio_asked.append(call)
        audio = self._audio.setdefault(call, CallAudio(RATE))
        self._clocks.append(asyncio.ensure_future(self._clock(audio)))
        return audio

    async def _clock(self, audio: CallAudio) -> None:
        while not audio.closed:
            audio.playout.pull()
            await asyncio.sleep(0.001)

    async def hangup(self, call: str) -> None:
        self.hangups.append(call)
        if call in self._audio:
            self._audio[call].closed = True
        ended = CallEnded(call, 200, "Normal call clearing", "hangup", answered=True)
        asyncio.get_running_loop().call_soon(self.emit, ended)  # reported later, as pjsua does

    def close(self) -> None:
        for clock in self._clocks:
            clock.cancel()


async def _no_transcription(pcm: NDArray[np.int16], rate: int, hint: str) -> str:
    raise AssertionError("a call without a choice transcribes nothing")


def _call(worker: MemoryWorker, calls: CallEvents, extension: str, reports: list[str]) -> Any:
    async def report(status: str) -> None:
        reports.append(status)

    message = np.full(RATE // 5, 1000, dtype=np.int16)  # 200 ms
    request = {"extension": extension, "ring_timeout": 30}
    return OutboundCall(
        worker, request, {"message": message}, _no_transcription, report, calls=calls
    )


async def test_two_concurrent_dials_act_only_on_their_own_events() -> None:
    """While two dials wait for their keys, both calls' events arrive interleaved; the answered
    call completes, the busy one is busy, and neither acts on the other's events."""
    calls = CallEvents()
    worker = MemoryWorker(calls)
    reports_a: list[str] = []
    reports_b: list[str] = []
    run_a = asyncio.ensure_future(_call(worker, calls, "1001", reports_a).run())
    run_b = asyncio.ensure_future(_call(worker, calls, "1002", reports_b).run())
    try:
        key_a, key_b = await worker.key_of("1001"), await worker.key_of("1002")
        # Neither dial has returned yet: these reach the worker before either call knows its key.
        worker.emit(CallRinging(key_b, 180))
        worker.emit(CallRinging(key_a, 180))
        worker.emit(CallAnswered(key_b))
        worker.reply("1002")
        async with asyncio.timeout(10):
            result_b = await run_b  # b plays its message and hangs up; a is still dialling
        worker.emit(CallEnded(key_a, 486, "Busy Here"))
        worker.reply("1001")
        async with asyncio.timeout(10):
            result_a = await run_a
    finally:
        run_a.cancel()
        run_b.cancel()
        worker.close()

    assert (result_a["status"], result_a["sip_code"], reports_a) == ("busy", 486, ["ringing"]), (
        result_a,
        reports_a,
    )
    assert result_b["status"] == "completed", result_b
    assert result_b["message_played"] is True
    assert reports_b == ["ringing", "answered"]
    assert worker.audio_asked == [key_b]  # a never took b's answer for its own
    assert worker.hangups == [key_b]


async def test_events_of_unclaimed_calls_are_kept_only_while_a_dial_runs() -> None:
    """An event for a call nobody owns is dropped unless a dial is in progress to claim it."""
    calls = CallEvents()
    calls.route(CallRinging("w0-1", 180))
    assert calls.claim("w0-1").empty()
    with calls.dialing():
        calls.route(CallRinging("w0-2", 180))
        calls.route(CallRinging("w0-3", 180))
        queue = calls.claim("w0-2")
    assert queue.get_nowait() == CallRinging("w0-2", 180)
    assert calls.claim("w0-3").empty()  # nobody claimed it during the dial: dropped
    calls.route(CallEnded("w0-2", 200, "OK"))
    assert queue.get_nowait() == CallEnded("w0-2", 200, "OK")
    calls.release("w0-2")
    calls.route(CallEnded("w0-2", 200, "OK"))
    assert queue.empty()
