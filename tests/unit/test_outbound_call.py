"""Outbound calls in one worker follow their own call's events only, whatever the order."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from numpy.typing import NDArray

from daemon.calls.outbound import OutboundCall
from daemon.legs.memory import MediaClock, MemoryNetwork, PhoneEvent
from sip.call_events import CallEvents
from sip.events import CallEnded, CallRinging

RATE = 8000


async def _no_transcription(pcm: NDArray[np.int16], rate: int, hint: str) -> str:
    raise AssertionError("a call without a choice transcribes nothing")


def _call(network: MemoryNetwork, extension: str, reports: list[str]) -> OutboundCall:
    async def report(status: str) -> None:
        reports.append(status)

    message = np.full(RATE // 5, 1000, dtype=np.int16)  # 200 ms
    request: dict[str, Any] = {"extension": extension, "ring_timeout": 30}
    return OutboundCall(network, request, {"message": message}, _no_transcription, report)


async def test_two_concurrent_dials_act_only_on_their_own_events() -> None:
    """Two calls at once, their events interleaved (both ring; one is answered while the
    other still rings, then turns busy): the answered call completes, the busy one is busy,
    and neither acts on the other's events."""
    async with MediaClock(speed=None) as clock:
        network = MemoryNetwork(clock, rate=RATE)
        busy = network.phone("1001", on_incoming="busy", answer_after=1.0)
        callee = network.phone("1002", answer_after=0.2)
        reports_a: list[str] = []
        reports_b: list[str] = []
        async with asyncio.timeout(10):
            result_a, result_b = await asyncio.gather(
                _call(network, "1001", reports_a).run(), _call(network, "1002", reports_b).run()
            )

    assert (result_a["status"], result_a["sip_code"], reports_a) == ("busy", 486, ["ringing"]), (
        result_a,
        reports_a,
    )
    assert result_b["status"] == "completed", result_b
    assert result_b["message_played"] is True
    assert reports_b == ["ringing", "answered"]
    assert busy.heard().size == 0  # a never took b's answer for its own: no media, no hang-up
    assert busy.events == []
    assert callee.events == [PhoneEvent("hung_up")]


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
