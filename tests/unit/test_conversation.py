"""The inbound conversation machine, event by event, with no call and no model."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from config.schema import AgentSettings, RealtimeSettings
from daemon.calls import conversation as cv
from daemon.calls import conversation_events as ce
from daemon.realtime import events as ev
from daemon.realtime.client import FailureKind
from media.codec import PCM24K


@dataclass
class View:
    """The playout as the machine sees it: queued samples and milliseconds played per item."""

    depth_samples: int = 0
    played: dict[str, int] = field(default_factory=dict)

    def played_ms(self, item_id: str) -> int:
        return self.played.get(item_id, 0)


class Call:
    """One conversation with a settable clock and playout view."""

    def __init__(self, limits: RealtimeSettings | None = None, **agent: Any) -> None:
        agent.setdefault("greeting", "")
        agent.setdefault("echo_guard", False)  # judged in test_conversation_echo
        self.conv = cv.Conversation(AgentSettings(**agent), limits or RealtimeSettings())
        self.view = View()
        self.now = 0.0
        assert self.feed(ce.Started(greeting=bool(agent["greeting"])), at=0.0) == (
            [ce.CreateResponse(agent["greeting"])] if agent["greeting"] else []
        )

    def stage(self) -> cv.Stage:
        return self.conv.stage

    def floor(self) -> cv.Floor:
        return self.conv.floor

    def feed(self, event: ce.Event, at: float | None = None) -> list[ce.Action]:
        if at is not None:
            self.now = at
        return self.conv.handle(event, self.now, self.view)

    def model(self, event: ev.ModelEvent, at: float | None = None) -> list[ce.Action]:
        return self.feed(ce.Model(event), at)

    def speak(self, response: str = "r1", item: str = "i1", queued: int = 8000) -> None:
        """The model starts a response and its first audio delta is queued for the caller."""
        assert self.model(ev.ResponseCreated(response)) == []
        assert self.model(ev.AudioDelta(response, item, 0, b"\xff" * 160)) == [
            ce.Play(item, b"\xff" * 160)
        ]
        self.view.depth_samples = queued

    def sent(self, ms: int) -> None:
        assert self.feed(ce.UplinkSent(ms)) == []

    def speech(self, start_ms: int, at: float | None = None) -> list[ce.Action]:
        return self.model(ev.SpeechStarted(start_ms, "u1"), at)

    def tool(self, name: str, arguments: str = "{}", call_id: str = "c1") -> list[ce.Action]:
        return self.model(ev.FunctionCall(call_id, name, arguments, "f1"))


def _tool_log(name: str, arguments: str = "{}") -> ce.Log:
    return ce.Log("agent.tool", {"tool": name, "arguments": arguments})


def test_short_speech_waits_for_the_guard_then_flushes_cancels_and_truncates() -> None:
    """Speech under barge_in_min_ms sets a deadline and flushes nothing; speech that stops
    before it does nothing; speech still going at it flushes, cancels, then truncates at the
    milliseconds the view says were played."""
    call = Call()
    call.speak()
    call.sent(1000)
    assert call.speech(950, at=10.0) == []  # 50 ms heard of 200
    assert call.conv.deadline == pytest.approx(10.15)
    assert call.floor() is cv.Floor.GUARDING
    assert call.model(ev.SpeechStopped(1100, "u1")) == []
    assert call.conv.deadline is None
    assert call.floor() is cv.Floor.AGENT
    assert call.feed(ce.Timer(), at=10.15) == []

    assert call.speech(1000, at=11.0) == []
    assert call.conv.deadline == pytest.approx(11.2)
    call.sent(200)
    assert call.feed(ce.Timer(), at=11.2) == [ce.Flush(), ce.Cancel()]
    assert call.floor() is cv.Floor.FLUSHING
    call.view.played["i1"] = 730
    actions = call.feed(ce.Flushed(), at=11.25)
    assert actions[0] == ce.Truncate("i1", 730)
    assert actions[1] == ce.Log(
        "agent.barge_in", {"item": "i1", "played_ms": 730, "cancelled": True, "stop_ms": 250.0}
    )
    assert call.floor() is cv.Floor.SILENT
    assert call.conv.deadline is None


def test_late_audio_of_a_cut_response_is_not_played() -> None:
    """Deltas of the item and response a barge-in cut, arriving after the cancel went out,
    are dropped; a new response plays."""
    call = Call()
    call.speak()
    call.sent(1000)
    assert call.speech(500, at=10.0) == [ce.Flush(), ce.Cancel()]
    assert call.model(ev.AudioDelta("r1", "i1", 1, b"\xff" * 160)) == []
    assert call.model(ev.AudioDelta("r1", "i2", 0, b"\xff" * 160)) == []
    assert call.model(ev.ResponseCreated("r2")) == []
    assert call.model(ev.AudioDelta("r2", "i3", 0, b"\xff" * 160)) == [ce.Play("i3", b"\xff" * 160)]


def test_the_greeting_has_its_own_guard() -> None:
    """Over the greeting a 300 ms noise cuts nothing and 1.3 s of speech cuts it; over a later
    response 250 ms of speech is enough (barge_in_min_ms)."""
    call = Call(greeting="Hello.")
    call.speak("greet", "i1")
    call.sent(1000)
    assert call.speech(1000, at=1.0) == []
    assert call.conv.deadline == pytest.approx(1.8)  # greeting_guard_ms = 800
    call.sent(300)
    assert call.model(ev.SpeechStopped(1300, "u1")) == []
    assert call.feed(ce.Timer(), at=1.8) == []

    assert call.speech(1300, at=2.0) == []
    call.sent(1300)
    assert call.feed(ce.Timer(), at=2.8) == [ce.Flush(), ce.Cancel()]
    call.feed(ce.Flushed(), at=2.82)

    call.speak("r2", "i2")
    call.sent(100)
    assert call.speech(2350, at=4.0) == [ce.Flush(), ce.Cancel()]  # 250 ms heard of 200


def test_no_barge_in_when_nothing_is_said() -> None:
    """Caller speech with nothing pushed, or once the item played out and no response is
    active, interrupts nothing and sets no deadline."""
    call = Call()
    call.sent(2000)
    assert call.speech(100) == []
    assert call.conv.deadline is None
    call.speak()
    assert call.model(ev.ResponseDone("r1", "completed")) == []
    call.view.depth_samples = 0
    assert call.speech(100) == []
    assert call.conv.deadline is None
    assert call.floor() is cv.Floor.AGENT


def test_no_cancel_once_the_response_is_done() -> None:
    """A response already done but still queued for the caller is flushed, not cancelled."""
    call = Call()
    call.speak()
    assert call.model(ev.ResponseDone("r1", "completed")) == []
    call.sent(1000)
    assert call.speech(500) == [ce.Flush()]
    call.view.played["i1"] = 300
    assert call.feed(ce.Flushed())[0] == ce.Truncate("i1", 300)


def test_dtmf_digits_are_batched_and_hash_sends_at_once() -> None:
    """Digits 1.5 s apart or less go to the model together after the gap, `#` sends them at
    once, and no response is asked for while one is active."""
    call = Call()
    assert call.feed(ce.Dtmf("1"), at=0.0) == []
    assert call.feed(ce.Dtmf("2"), at=1.0) == []
    assert call.conv.deadline == pytest.approx(2.5)
    assert call.feed(ce.Timer(), at=2.5) == [
        ce.Log("agent.dtmf", {"digits": "12"}),
        ce.SendText("[The caller pressed the keys: 12]"),
        ce.CreateResponse(),
    ]
    assert call.conv.deadline is None
    assert call.model(ev.ResponseCreated("r1")) == []
    assert call.feed(ce.Dtmf("3"), at=3.0) == []
    assert call.feed(ce.Dtmf("#"), at=3.2) == [
        ce.Log("agent.dtmf", {"digits": "3#"}),
        ce.SendText("[The caller pressed the keys: 3#]"),
    ]
    assert call.conv.deadline is None


def test_end_call_hangs_up_after_the_goodbye_is_played() -> None:
    """end_call answers ok at once, waits for its response to finish, then for the playout to
    drain (within 30 s of the call), then hangs up with cause end_call."""
    call = Call()
    call.speak()
    assert call.tool("end_call") == [
        _tool_log("end_call"),
        ce.FunctionOutput("c1", {"ok": True}),
    ]
    assert call.stage() is cv.Stage.CLOSING
    assert call.feed(ce.Drained()) == []  # no AwaitPlayout was asked for yet
    assert call.model(ev.ResponseDone("r1", "completed"), at=4.0) == [ce.AwaitPlayout(26.0)]
    assert call.feed(ce.Drained(), at=6.0) == [ce.HangUp("end_call")]
    assert call.stage() is cv.Stage.DONE
    assert call.feed(ce.CallEnded("caller hung up")) == []


def test_end_call_waits_for_a_response_that_starts_while_the_goodbye_drains() -> None:
    """A response created while the goodbye's playout drains is waited for too: the drain
    that follows it is ignored, and its own done asks for the playout with the time left."""
    call = Call()
    call.speak()
    call.tool("end_call")
    assert call.model(ev.ResponseDone("r1", "completed"), at=4.0) == [ce.AwaitPlayout(26.0)]
    assert call.model(ev.ResponseCreated("r2"), at=5.0) == []
    assert call.feed(ce.Drained(), at=6.0) == []  # r2 is still being said
    assert call.stage() is cv.Stage.CLOSING
    assert call.conv.deadline == pytest.approx(30.0)
    assert call.model(ev.ResponseDone("r2", "completed"), at=10.0) == [ce.AwaitPlayout(20.0)]
    assert call.feed(ce.Drained(), at=12.0) == [ce.HangUp("end_call")]


def test_end_call_whose_response_never_finishes_goes_on_after_30_s() -> None:
    """A goodbye response that never reports done stops the wait after 30 s."""
    call = Call()
    call.speak()
    call.tool("end_call")
    assert call.conv.deadline == pytest.approx(30.0)
    assert call.feed(ce.Timer(), at=30.0) == [ce.AwaitPlayout(0.0)]
    assert call.feed(ce.Drained()) == [ce.HangUp("end_call")]


def _transferring(**agent: Any) -> Call:
    call = Call(transfer_target="2000", transfer_extensions=["2001"], **agent)
    arguments = '{"extension": "2001"}'
    assert call.tool("transfer_call", arguments) == [
        _tool_log("transfer_call", arguments),
        ce.AwaitPlayout(30.0),
    ]
    assert call.stage() is cv.Stage.TRANSFERRING
    assert call.feed(ce.Drained(), at=2.0) == [ce.Transfer("c1", "2001")]
    assert call.conv.deadline == pytest.approx(32.0)
    return call


def test_transfer_refers_after_the_announcement_and_hangs_up_on_2xx() -> None:
    """transfer_call waits for the announcement to drain, REFERs, and a 2xx hangs up with
    cause transferred."""
    call = _transferring()
    assert call.feed(ce.TransferResult(200, "OK")) == [
        ce.Log("agent.transferred", {"target": "2001"}),
        ce.HangUp("transferred"),
    ]
    assert call.stage() is cv.Stage.DONE


@pytest.mark.parametrize(
    ("event", "error"),
    [
        (ce.TransferResult(486, "Busy Here"), "the transfer to 2001 failed: 486 Busy Here"),
        (ce.Timer(), "the transfer to 2001 got no answer"),
        (ce.ToolDone("c1", {"error": "call gone"}), "call gone"),
    ],
)
def test_a_failed_transfer_is_an_error_for_the_model(event: ce.Event, error: str) -> None:
    """A failure NOTIFY, no answer within 30 s, or a refused REFER goes back to the model as
    the tool's error with a new response, and the call stays up."""
    call = _transferring()
    assert call.feed(event, at=32.0) == [
        ce.FunctionOutput("c1", {"error": error}),
        ce.CreateResponse(),
    ]
    assert call.stage() is cv.Stage.ACTIVE
    assert call.conv.deadline is None


def test_a_disallowed_extension_is_not_transferred() -> None:
    """An extension outside transfer_target/transfer_extensions is an error; no REFER."""
    call = Call(transfer_target="2000", transfer_extensions=["2001"])
    arguments = '{"extension": "9999"}'
    assert call.tool("transfer_call", arguments) == [
        _tool_log("transfer_call", arguments),
        ce.FunctionOutput("c1", {"error": "cannot transfer to '9999'; allowed: ['2000', '2001']"}),
        ce.CreateResponse(),
    ]
    assert call.stage() is cv.Stage.ACTIVE


def test_tools_check_their_arguments_and_results_come_back() -> None:
    """Arguments that are no JSON object, bad digits and unknown tools are errors for the
    model; send_dtmf and HTTP tools report their result through ToolDone."""
    call = Call(
        tools=[{"name": "lookup", "description": "d", "url": "http://127.0.0.1:9/x"}],
    )
    assert call.tool("lookup", "[1]")[1:] == [
        ce.FunctionOutput("c1", {"error": "the arguments are not a JSON object"}),
        ce.CreateResponse(),
    ]
    assert call.tool("send_dtmf", '{"digits": "12x"}')[1:] == [
        ce.FunctionOutput("c1", {"error": "digits must be 0-9, *, # or A-D"}),
        ce.CreateResponse(),
    ]
    assert call.tool("send_dtmf", '{"digits": "12#"}')[1:] == [ce.SendDtmf("c1", "12#")]
    [run] = call.tool("lookup", '{"q": 1}', "c2")[1:]
    assert isinstance(run, ce.RunTool)
    assert (run.call_id, run.tool.name, run.arguments) == ("c2", "lookup", {"q": 1})
    assert call.feed(ce.ToolDone("c2", {"answer": 42})) == [
        ce.FunctionOutput("c2", {"answer": 42}),
        ce.CreateResponse(),
    ]
    assert call.tool("nope")[1:] == [
        ce.FunctionOutput("c1", {"error": "unknown tool 'nope'"}),
        ce.CreateResponse(),
    ]


def test_tool_results_after_the_call_ended_are_dropped() -> None:
    """A tool result arriving after the caller hung up sends nothing."""
    call = Call(tools=[{"name": "lookup", "description": "d", "url": "http://127.0.0.1:9/x"}])
    call.tool("lookup")
    assert call.feed(ce.CallEnded("caller hung up")) == [ce.End("caller hung up")]
    assert call.feed(ce.ToolDone("c1", {"answer": 42})) == []
    assert call.stage() is cv.Stage.DONE


def test_sessions_rotate_after_a_response_past_the_limit_replaying_30_turns() -> None:
    """The first ResponseDone past max_session_minutes replaces the session, replaying the
    last 30 transcript turns; a ResponseDone before the limit does not."""
    call = Call(RealtimeSettings(max_session_minutes=1))
    for n in range(40):
        kind = ev.CallerTranscript if n % 2 else ev.AgentTranscript
        [record] = call.model(kind(f"t{n}", f"turn {n}"), at=n)
        assert isinstance(record, ce.RecordTurn)
        assert record.turn == ce.Turn("caller" if n % 2 else "agent", f"turn {n}", float(n))
    assert call.model(ev.ResponseDone("r1", "completed"), at=59.0) == []
    [replace] = call.model(ev.ResponseDone("r2", "completed"), at=61.0)
    assert replace == ce.ReplaceSession("rotation", tuple(call.conv.transcript[-30:]))
    assert replace.replay[0].text == "turn 10"
    assert call.stage() is cv.Stage.REPLACING
    assert call.feed(ce.SessionReplaced(None), at=62.0) == [
        ce.Log("agent.session_replaced", {"reason": "rotation", "replayed": 30}),
        ce.SessionNote("replaced", "rotation"),
    ]
    assert call.stage() is cv.Stage.ACTIVE
    assert call.model(ev.ResponseDone("r3", "completed"), at=100.0) == []


def test_reconnects_up_to_max_reconnects_then_apologises_and_ends() -> None:
    """A retryable loss opens a new session, a failed attempt retries after a pause, and once
    max_reconnects are used the failure is reported, the apology said and the call ended."""
    call = Call(RealtimeSettings(max_reconnects=2))
    [log, replace] = call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"))
    assert log == ce.Log("agent.reconnecting", {"error": "1006", "attempt": 1}, "warning")
    assert replace == ce.ReplaceSession("reconnect", ())
    [log, replace] = call.feed(ce.ReplaceFailed(FailureKind.CONNECT, True, "refused"))
    assert log == ce.Log("agent.reconnecting", {"error": "refused", "attempt": 2}, "warning")
    assert replace == ce.ReplaceSession("reconnect", (), after=0.5)
    assert call.feed(ce.ReplaceFailed(FailureKind.CONNECT, True, "refused again")) == [
        ce.Log("agent.session_lost", {"kind": "connect", "error": "refused again"}, "error"),
        ce.ReportFailure(FailureKind.CONNECT, "refused again"),
        ce.Apologise(),
        ce.End("model connect: refused again"),
    ]
    assert call.stage() is cv.Stage.DONE


def test_a_rate_limit_ends_the_call_politely_at_once() -> None:
    """A loss that is not retryable (rate limit) reconnects nothing."""
    call = Call()
    actions = call.feed(
        ce.SessionLost(FailureKind.RATE_LIMIT, False, "rate_limit_exceeded: slow down")
    )
    assert actions[1:] == [
        ce.ReportFailure(FailureKind.RATE_LIMIT, "rate_limit_exceeded: slow down"),
        ce.Apologise(),
        ce.End("model rate_limit: rate_limit_exceeded: slow down"),
    ]


def test_a_replaced_session_counts_the_guard_from_zero() -> None:
    """After a reconnect the caller audio is counted in the new session's timeline, the old
    item is no longer cut, and the new output format is applied."""
    call = Call()
    call.speak()
    call.sent(5000)
    call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1011"))
    assert call.feed(ce.SessionReplaced(PCM24K))[0] == ce.SetOutputFormat(PCM24K)
    assert call.floor() is cv.Floor.SILENT
    call.speak("r9", "i9")
    call.sent(150)
    assert call.speech(100, at=5.0) == []  # 50 ms heard, not 5050
    assert call.conv.deadline == pytest.approx(5.15)


def test_end_call_waiting_for_its_response_survives_a_reconnect() -> None:
    """A session lost while the goodbye streams: once replaced, the wait goes on to the
    playout (the old response will never finish) and the call still hangs up."""
    call = Call()
    call.speak()
    call.tool("end_call")
    call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"), at=3.0)
    actions = call.feed(ce.SessionReplaced(None), at=4.0)
    assert actions[-1] == ce.AwaitPlayout(26.0)
    assert call.stage() is cv.Stage.CLOSING
    assert call.feed(ce.Drained()) == [ce.HangUp("end_call")]


def test_every_move_is_in_the_tables() -> None:
    """The transition tables name every state, and DONE leads nowhere."""
    assert set(cv.FLOOR_MOVES) == set(cv.Floor)
    assert set(cv.STAGE_MOVES) == set(cv.Stage)
    assert cv.STAGE_MOVES[cv.Stage.DONE] == frozenset()


def test_a_wait_that_ends_during_a_reconnect_is_carried_out() -> None:
    """The goodbye drains while a new session opens: the call still hangs up; a REFER refused
    meanwhile hands the call back to the conversation once the session is back."""
    call = Call()
    assert call.tool("end_call")[-1] == ce.AwaitPlayout(30.0)
    call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"))
    assert call.feed(ce.Drained()) == [ce.HangUp("end_call")]

    call = _transferring()
    call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"))
    assert call.feed(ce.TransferResult(486, "Busy Here")) == [
        ce.FunctionOutput("c1", {"error": "the transfer to 2001 failed: 486 Busy Here"}),
        ce.CreateResponse(),
    ]
    assert call.stage() is cv.Stage.REPLACING
    call.feed(ce.SessionReplaced(None))
    assert call.stage() is cv.Stage.ACTIVE


def test_a_barge_in_reports_its_stop_and_truncation() -> None:
    """A barge-in carried out reports, as a typed action after the truncate, the item cut,
    the time from the model's speech_started to the flush, what was heard and the cancel."""
    call = Call()
    call.speak()
    call.sent(1000)
    assert call.speech(700, at=20.0) == [ce.Flush(), ce.Cancel()]  # 300 ms heard of 200
    call.view.played["i1"] = 1460
    actions = call.feed(ce.Flushed(), at=20.035)
    assert ce.BargedIn("i1", 35.0, 1460, True) in actions, actions
    assert actions[0] == ce.Truncate("i1", 1460)
    call.speak("r2", "i2")
    assert call.model(ev.ResponseDone("r2", "completed")) == []
    call.sent(1000)
    assert call.speech(1700, at=30.0) == [ce.Flush()]  # nothing streams: no cancel
    [barged] = [a for a in call.feed(ce.Flushed(), at=30.02) if isinstance(a, ce.BargedIn)]
    assert barged == ce.BargedIn("i2", 20.0, 0, False)


def test_a_replacement_reports_its_reason() -> None:
    """A session replaced after a loss reports a typed note with reason reconnect (a rotation
    says rotation); a loss that cannot be retried reports none."""
    call = Call()
    call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"), at=3.0)
    actions = call.feed(ce.SessionReplaced(None), at=4.0)
    assert ce.SessionNote("replaced", "reconnect") in actions, actions
    ending = call.feed(ce.SessionLost(FailureKind.RATE_LIMIT, False, "slow down"), at=5.0)
    assert not [a for a in ending if isinstance(a, ce.SessionNote)], ending


CLOUD = {"backend": "url", "url": "ws://127.0.0.1:9/v1/realtime"}


def test_a_loss_beyond_max_reconnects_fails_over_to_the_engine_with_the_transcript() -> None:
    """With fallback local, the loss that would end the call says the bridge phrase and
    replaces the session onto the embedded engine with the transcript replayed (no apology,
    no end); once replaced the failover is reported, the engine is asked to speak, and the
    call goes on."""
    call = Call(RealtimeSettings(max_reconnects=1), fallback="local", **CLOUD)
    call.model(ev.AgentTranscript("t1", "Hello, how can I help?"), at=1.0)
    call.model(ev.CallerTranscript("t2", "Move my appointment."), at=3.0)
    [_, reconnect] = call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"), at=4.0)
    assert reconnect == ce.ReplaceSession("reconnect", tuple(call.conv.transcript))
    actions = call.feed(ce.ReplaceFailed(FailureKind.CONNECT, True, "refused"), at=4.5)
    assert actions == [
        ce.Log(
            "agent.failover",
            {"kind": "connect", "error": "refused", "phase": "session", "to": "local"},
            "warning",
        ),
        ce.Bridge(),
        ce.ReplaceSession("failover", tuple(call.conv.transcript)),
    ]
    assert [t.text for t in actions[-1].replay] == [  # type: ignore[union-attr]
        "Hello, how can I help?",
        "Move my appointment.",
    ]
    assert call.stage() is cv.Stage.REPLACING
    replaced = call.feed(ce.SessionReplaced(None), at=5.0)
    assert replaced == [
        ce.Log("agent.session_replaced", {"reason": "failover", "replayed": 2}),
        ce.ReportFailover(FailureKind.CONNECT, "refused"),
        ce.SessionNote("replaced", "failover"),
        ce.CreateResponse(),
    ]
    assert call.stage() is cv.Stage.ACTIVE
    call.speak("r5", "i5")  # the engine speaks and can be interrupted as any session
    call.sent(1000)
    assert call.speech(700, at=6.0) == [ce.Flush(), ce.Cancel()]


def test_a_loss_that_cannot_be_retried_fails_over_at_once() -> None:
    """A rate limit (not retryable) with fallback local fails over without a reconnect."""
    call = Call(fallback="local", **CLOUD)
    actions = call.feed(ce.SessionLost(FailureKind.RATE_LIMIT, False, "slow down"))
    assert actions[1:] == [ce.Bridge(), ce.ReplaceSession("failover", ())]


def test_losses_on_the_engine_follow_the_normal_rules_with_no_second_failover() -> None:
    """Once failed over (mid-call, or at connect: ``Started(failed_over=True)``), a loss that
    cannot be recovered apologises and ends the call as without a fallback."""
    ending = [
        ce.Log("agent.session_lost", {"kind": "closed", "error": "1000"}, "error"),
        ce.ReportFailure(FailureKind.CLOSED, "1000"),
        ce.Apologise(),
        ce.End("model closed: 1000"),
    ]
    call = Call(RealtimeSettings(max_reconnects=0), fallback="local", **CLOUD)
    call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"))
    call.feed(ce.SessionReplaced(None))
    assert call.feed(ce.SessionLost(FailureKind.CLOSED, False, "1000")) == ending
    assert call.stage() is cv.Stage.DONE

    conv = cv.Conversation(
        AgentSettings(greeting="", fallback="local", **CLOUD), RealtimeSettings(max_reconnects=0)
    )
    conv.handle(ce.Started(greeting=False, failed_over=True), 0.0, View())
    assert conv.handle(ce.SessionLost(FailureKind.CLOSED, False, "1000"), 1.0, View()) == ending


def test_a_failed_failover_apologises_and_ends() -> None:
    """The engine's session cannot be opened either (reconnects used up): the apology path,
    with no failover reported, and the one failure reported naming both."""
    call = Call(RealtimeSettings(max_reconnects=0), fallback="local", **CLOUD)
    failing_over = call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"))
    actions = call.feed(ce.ReplaceFailed(FailureKind.CONNECT, True, "engine refused"))
    assert actions[1:] == [
        ce.ReportFailure(
            FailureKind.CONNECT, "engine refused (on the embedded engine, after closed: 1006)"
        ),
        ce.Apologise(),
        ce.End("model connect: engine refused"),
    ]
    assert not [a for a in failing_over + actions if isinstance(a, ce.ReportFailover)]


def test_after_a_mid_call_failover_the_engine_gets_reconnects_of_its_own() -> None:
    """The failover is reached with the reconnects used up; the engine's session starts with
    its own (max_reconnects again): a retryable drop of it reconnects, to the engine, and the
    one after that apologises (no second failover)."""
    call = Call(RealtimeSettings(max_reconnects=1), fallback="local", **CLOUD)
    call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"))
    call.feed(ce.SessionReplaced(None))
    failover = call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"))
    assert failover[-1] == ce.ReplaceSession("failover", ())
    call.feed(ce.SessionReplaced(None))
    actions = call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006 again"))
    assert actions == [
        ce.Log("agent.reconnecting", {"error": "1006 again", "attempt": 1}, "warning"),
        ce.ReplaceSession("reconnect", ()),
    ]
    call.feed(ce.SessionReplaced(None))
    ending = call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006 once more"))
    assert [type(a) for a in ending] == [ce.Log, ce.ReportFailure, ce.Apologise, ce.End]


def test_a_failover_whose_first_open_is_retried_is_reported_once_up() -> None:
    """The engine's first open fails (retryable): it is reconnected to, and the failover is
    reported once that session is up, with the model's loss it was for."""
    call = Call(RealtimeSettings(max_reconnects=1), fallback="local", **CLOUD)
    call.feed(ce.SessionLost(FailureKind.RATE_LIMIT, False, "slow down"))
    retry = call.feed(ce.ReplaceFailed(FailureKind.CONNECT, True, "engine busy"))
    assert retry[-1] == ce.ReplaceSession("reconnect", (), cv.RECONNECT_PAUSE)
    replaced = call.feed(ce.SessionReplaced(None))
    assert ce.ReportFailover(FailureKind.RATE_LIMIT, "slow down") in replaced, replaced
    assert replaced[-1] == ce.CreateResponse()


def test_a_loss_while_the_call_is_finishing_fails_over_without_the_bridge() -> None:
    """The model is lost while an end_call's goodbye plays, or once a transfer's REFER is
    sent: no bridge phrase and no failover on the record (the failure only), and no response
    asked; the call finishes as it would have (hung up once drained, or the REFER's 2xx)."""
    closing = Call(RealtimeSettings(max_reconnects=0), fallback="local", **CLOUD)
    closing.speak()
    closing.tool("end_call")
    closing.model(ev.ResponseDone("r1", "completed"))
    lost = closing.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"), at=2.0)
    assert lost[1:] == [
        ce.ReportFailure(FailureKind.CLOSED, "1006"),
        ce.ReplaceSession("failover", ()),
    ]
    replaced = closing.feed(ce.SessionReplaced(None), at=3.0)
    assert not [a for a in replaced if isinstance(a, ce.ReportFailover | ce.CreateResponse)]
    assert closing.feed(ce.Drained()) == [ce.HangUp("end_call")]

    transferring = _transferring(fallback="local", **CLOUD)
    lost = transferring.feed(ce.SessionLost(FailureKind.CLOSED, False, "1000"))
    assert not [a for a in lost if isinstance(a, ce.Bridge | ce.Apologise)], lost
    replaced = transferring.feed(ce.SessionReplaced(None))
    assert not [a for a in replaced if isinstance(a, ce.ReportFailover | ce.CreateResponse)]
    assert transferring.feed(ce.TransferResult(200, "OK"))[-1] == ce.HangUp("transferred")


@pytest.mark.parametrize(
    "agent", [{"fallback": "none", **CLOUD}, {"fallback": "local", "backend": "local"}]
)
def test_without_a_cloud_to_fail_over_from_a_loss_still_apologises(agent: dict[str, Any]) -> None:
    """fallback none, or a backend that is the engine already: the apology and the end."""
    call = Call(RealtimeSettings(max_reconnects=0), **agent)
    actions = call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"))
    assert [type(a) for a in actions] == [ce.Log, ce.ReportFailure, ce.Apologise, ce.End]


def test_a_response_cut_by_the_loss_does_not_hold_the_floor() -> None:
    """The model is lost while its response streams: after the failover the floor is silent,
    no response is pending, and an end_call in progress still waits for its playout."""
    call = Call(RealtimeSettings(max_reconnects=0), fallback="local", **CLOUD)
    call.speak()
    assert call.floor() is cv.Floor.AGENT
    call.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"))
    call.feed(ce.SessionReplaced(None))
    assert call.floor() is cv.Floor.SILENT
    assert call.speech(100) == []  # nothing of the lost session's to cut
    closing = Call(RealtimeSettings(max_reconnects=0), fallback="local", **CLOUD)
    closing.speak()
    closing.tool("end_call")
    closing.feed(ce.SessionLost(FailureKind.CLOSED, True, "1006"), at=2.0)
    actions = closing.feed(ce.SessionReplaced(None), at=3.0)
    assert actions[-1] == ce.AwaitPlayout(27.0)  # no response asked: the goodbye ends it
    assert closing.feed(ce.Drained()) == [ce.HangUp("end_call")]
