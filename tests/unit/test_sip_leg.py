"""A SIP call as a call leg: its own SIP events as leg events, and LegError for refusals."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from daemon.legs.leg import Answered, CallInfo, Dtmf, Ended, LegError, Ringing, TransferProgress
from sip import events as sip
from sip.call_events import CallEvents
from sip.leg import SipLeg
from sip.worker import SipWorker
from tests.integration.conftest import worker_settings


def _leg(events: asyncio.Queue[sip.SipEvent], calls: CallEvents) -> SipLeg:
    worker = SipWorker(worker_settings(None))  # never started
    return SipLeg(worker, CallInfo(key="w0-1", inbound=True), events, calls)


async def test_own_events_become_leg_events_and_others_are_dropped() -> None:
    """The leg yields its call's ringing, answer, DTMF, transfer progress and end in order,
    logs and skips an event of another call, and keeps answering Ended once the call ended."""
    calls = CallEvents()
    events = calls.claim("w0-1")
    leg = _leg(events, calls)
    stats = sip.MediaStats(50, 0, 1.5, 50, 50, 0, 0, 0)
    for event in (
        sip.CallRinging("w0-1", 180),
        sip.CallAnswered("w0-2"),  # another call's: a routing bug upstream
        sip.CallAnswered("w0-1"),
        sip.DtmfReceived("w0-1", "5", "rfc4733"),
        sip.TransferProgress("w0-1", 200, "OK", final=True),
        sip.CallEnded("w0-1", 200, "Normal call clearing", "hangup", True, stats),
    ):
        events.put_nowait(event)
    with capture_logs() as logs:
        async with asyncio.timeout(5):
            got = [await leg.receive() for _ in range(5)]
            again = await leg.receive()
    assert got == [
        Ringing(180),
        Answered(),
        Dtmf("5", "rfc4733"),
        TransferProgress(200, "OK", final=True),
        Ended(200, "Normal call clearing", "hangup", True, stats),
    ]
    assert again == got[-1]
    assert [entry["event"] for entry in logs] == ["leg.foreign_event"]
    leg.release()
    calls.route(sip.CallEnded("w0-1", 200, "OK"))
    assert events.empty()  # released: nothing is routed to the flow any more


async def test_an_incoming_call_during_a_dial_reaches_no_leg() -> None:
    """An IncomingCall routed while a dial is in progress is queued for no one: the inbound
    leg that claims the call first receives its Ended, the dial only its own ringing, and
    nothing is logged as an error."""
    calls = CallEvents()
    with capture_logs() as logs, calls.dialing():
        calls.route(sip.IncomingCall("w0-2", "abc@pbx", "sip:1001@pbx", "Ann", "1001"))
        calls.route(sip.CallRinging("w0-1", 180))
        dialled, inbound = calls.claim("w0-1"), calls.claim("w0-2")
    calls.route(sip.CallEnded("w0-2", 200, "Normal call clearing"))
    worker = SipWorker(worker_settings(None))  # never started
    leg = SipLeg(worker, CallInfo(key="w0-2", inbound=True), inbound, calls)
    with capture_logs() as received:
        async with asyncio.timeout(5):
            first = await leg.receive()
    assert first == Ended(200, "Normal call clearing")
    assert (dialled.qsize(), dialled.get_nowait()) == (1, sip.CallRinging("w0-1", 180))
    errors = [e for e in logs + received if e["log_level"] == "error"]
    assert errors == [], errors


async def test_commands_on_a_stopped_worker_raise_leg_errors() -> None:
    """Answering, rejecting, DTMF, transfer and media of a leg whose worker is not running
    are refused with a LegError; hang-up is silent."""
    calls = CallEvents()
    leg = _leg(calls.claim("w0-1"), calls)
    for command in (
        leg.answer(),
        leg.reject(486),
        leg.send_dtmf("1"),
        leg.transfer("2000"),
        leg.media(),
    ):
        with pytest.raises(LegError):
            await command
    await leg.hangup()
