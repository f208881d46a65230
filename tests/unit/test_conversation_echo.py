"""The conversation machine's echo guard: verdicts in, barge-ins (or none) out."""

from __future__ import annotations

import pytest

from daemon.calls import conversation as cv
from daemon.calls import conversation_events as ce
from daemon.realtime import events as ev
from daemon.realtime.client import FailureKind
from media.echo import EchoVerdict
from tests.unit.test_conversation import Call


def _verdict(echo: bool, reason: str = "") -> ce.EchoJudged:
    reason = reason or ("echo" if echo else "speech")
    erle = 30.0 if echo else 1.0
    return ce.EchoJudged(EchoVerdict(echo, reason, 100.0, 0.99, erle, erle, -34.0, -24.0, 300))


def test_speech_past_the_guard_is_judged_before_it_barges_in() -> None:
    """With echo_guard, speech past the guard asks for a judgement of what was heard; the
    caller's voice then flushes and cancels as without the guard."""
    call = Call(echo_guard=True)
    call.speak()
    call.sent(1000)
    assert call.speech(700, at=10.0) == [ce.JudgeEcho(300)]
    assert call.floor() is cv.Floor.AGENT
    assert call.feed(_verdict(False), at=10.0) == [ce.Flush(), ce.Cancel()]
    assert call.floor() is cv.Floor.FLUSHING
    call.view.played["i1"] = 500
    actions = call.feed(ce.Flushed(), at=10.02)
    assert ce.BargedIn("i1", 20.0, 500, True) in actions, actions


def test_echo_is_ignored_logged_once_and_judged_again_on_each_batch() -> None:
    """The agent's own voice coming back cuts nothing: it is logged once, each uplink batch
    is judged again over the last guard's worth, and speech_stopped ends the watch."""
    call = Call(echo_guard=True)
    call.speak()
    call.sent(1000)
    assert call.speech(950, at=10.0) == []  # under the guard
    call.feed(ce.UplinkSent(200))
    assert call.feed(ce.Timer(), at=10.15) == [ce.JudgeEcho(250)]
    [log] = call.feed(_verdict(True))
    assert isinstance(log, ce.Log)
    assert log.event == "agent.echo_ignored"
    assert log.fields["delay_ms"] == 100.0
    assert log.fields["erle_db"] == 30.0
    assert call.floor() is cv.Floor.ECHO
    assert call.conv.deadline is None
    for _ in range(3):
        assert call.feed(ce.UplinkSent(40)) == [ce.JudgeEcho(160)]
        assert call.feed(_verdict(True)) == []  # logged once per speech_started
    assert call.model(ev.SpeechStopped(1400, "u1")) == []
    assert call.floor() is cv.Floor.AGENT
    assert call.feed(ce.UplinkSent(40)) == []  # nothing judged once the speech stopped
    assert call.speech(1000, at=12.0) == [ce.JudgeEcho(360)]
    assert [a.event for a in call.feed(_verdict(True)) if isinstance(a, ce.Log)] == [
        "agent.echo_ignored"
    ]


def test_the_caller_speaking_over_the_echo_barges_in_after_the_guard() -> None:
    """Once ignored as echo, the caller's voice judged over the guard's worth of audio
    (barge_in_min_ms, 200 ms: five 40 ms batches one after the other) flushes and cancels;
    stop_ms counts from the first of them. Four such batches, the most a glitch of the line
    can fill while it stays in the re-judged window, then echo again cut nothing and start the
    count over; so does a silent batch."""
    call = Call(echo_guard=True)
    call.speak()
    call.sent(1000)
    call.speech(700, at=10.0)
    call.feed(_verdict(True))
    at = 10.4
    for _ in range(4):  # a glitch: in the window for ECHO_RECHECK_MS
        assert call.feed(ce.UplinkSent(40), at=at) == [ce.JudgeEcho(160)]
        assert call.feed(_verdict(False), at=at) == []
        at += 0.04
    call.feed(ce.UplinkSent(40), at=at)
    assert call.feed(_verdict(True), at=at) == []  # echo again: the count starts over
    for _ in range(3):
        call.feed(ce.UplinkSent(40), at=at)
        assert call.feed(_verdict(False), at=at) == []
        at += 0.04
    call.feed(ce.UplinkSent(40), at=at)
    assert call.feed(_verdict(False, "silent"), at=at) == []  # a pause: over again
    at += 0.04
    start = at
    for _ in range(4):
        call.feed(ce.UplinkSent(40), at=at)
        assert call.feed(_verdict(False), at=at) == []
        at += 0.04
    assert call.feed(ce.UplinkSent(40), at=at) == [ce.JudgeEcho(160)]
    assert call.feed(_verdict(False), at=at) == [ce.Flush(), ce.Cancel()]
    call.view.played["i1"] = 900
    actions = call.feed(ce.Flushed(), at=at + 0.02)
    [barged] = [a for a in actions if isinstance(a, ce.BargedIn)]
    assert barged.stop_ms == pytest.approx((at + 0.02 - start) * 1000)
    [log] = [a for a in actions if isinstance(a, ce.Log) and a.event == "agent.barge_in"]
    assert log.fields["echo_voice_ms"] == 200
    assert call.floor() is cv.Floor.SILENT


def test_over_the_greeting_echo_the_voice_must_last_the_greeting_guard() -> None:
    """Over the greeting's echo the caller's voice must be judged for greeting_guard_ms
    (800 ms, twenty batches) before it cuts."""
    call = Call(echo_guard=True, greeting="Hello.")
    call.speak("greet", "i1")
    call.sent(1000)
    call.speech(1000, at=1.0)
    call.feed(ce.UplinkSent(800))
    call.feed(ce.Timer(), at=1.8)
    call.feed(_verdict(True))
    for _ in range(19):
        call.feed(ce.UplinkSent(40))
        assert call.feed(_verdict(False)) == []
    call.feed(ce.UplinkSent(40))
    assert call.feed(_verdict(False)) == [ce.Flush(), ce.Cancel()]


def test_the_greeting_echo_is_judged_over_its_guard() -> None:
    """Over the greeting the judgement waits for greeting_guard_ms; while it is echo each
    batch re-judges the last 160 ms only (the cost does not grow with the guard)."""
    call = Call(echo_guard=True, greeting="Hello.")
    call.speak("greet", "i1")
    call.sent(1000)
    assert call.speech(1000, at=1.0) == []
    call.feed(ce.UplinkSent(800))
    assert call.feed(ce.Timer(), at=1.8) == [ce.JudgeEcho(800)]
    call.feed(_verdict(True))
    assert call.feed(ce.UplinkSent(40)) == [ce.JudgeEcho(160)]


def test_a_verdict_after_the_speech_stopped_or_a_flush_does_nothing() -> None:
    """A verdict that comes when there is nothing left to decide (speech over, or a barge-in
    under way) changes nothing."""
    call = Call(echo_guard=True)
    call.speak()
    call.sent(1000)
    call.speech(700, at=10.0)
    call.model(ev.SpeechStopped(1000, "u1"))
    assert call.feed(_verdict(False)) == []
    assert call.floor() is cv.Floor.AGENT
    call.speech(700, at=11.0)
    assert call.feed(_verdict(False)) == [ce.Flush(), ce.Cancel()]
    assert call.feed(_verdict(False)) == []
    assert call.floor() is cv.Floor.FLUSHING


def test_a_replaced_session_leaves_the_echo_watch() -> None:
    """A session replaced while echo is watched returns the floor to SILENT, and its new
    uplink is not judged."""
    call = Call(echo_guard=True)
    call.speak()
    call.sent(1000)
    call.speech(700, at=10.0)
    call.feed(_verdict(True))
    assert call.floor() is cv.Floor.ECHO
    call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"))
    call.feed(ce.SessionReplaced(None))
    assert call.floor() is cv.Floor.SILENT
    assert call.feed(ce.UplinkSent(40)) == []


def test_a_pause_in_the_echo_is_nothing_new_nor_is_silence_first() -> None:
    """While echo is watched a silent batch (the agent paused) cuts nothing; at the first
    judgement a silent window (nothing above the line's noise while the agent plays) is
    watched as echo, and the caller's voice after it still barges in."""
    call = Call(echo_guard=True)
    call.speak()
    call.sent(1000)
    call.speech(700, at=10.0)
    call.feed(_verdict(True))
    call.feed(ce.UplinkSent(40))
    assert call.feed(_verdict(False, "silent")) == []
    assert call.floor() is cv.Floor.ECHO
    call.model(ev.SpeechStopped(1040, "u1"))
    assert call.speech(740, at=11.0) == [ce.JudgeEcho(300)]
    assert [a.event for a in call.feed(_verdict(False, "silent")) if isinstance(a, ce.Log)] == [
        "agent.echo_ignored"
    ]
    assert call.floor() is cv.Floor.ECHO
    for _ in range(4):
        call.feed(ce.UplinkSent(40))
        assert call.feed(_verdict(False)) == []
    call.feed(ce.UplinkSent(40))
    assert call.feed(_verdict(False)) == [ce.Flush(), ce.Cancel()]
