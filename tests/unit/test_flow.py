"""The outbound flow state machine, event by event, with no phone."""

from __future__ import annotations

import pytest

from daemon.calls.choice import Option
from daemon.calls.flow import (
    Action,
    Answered,
    Dial,
    Ended,
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
    State,
    Transcribe,
    Transcript,
    status_for_unanswered,
)
from daemon.outbound import CallResult

OPTIONS = [
    Option("confirmed", ("yes", "yeah", "confirm")),
    Option("cancelled", ("no", "cancel")),
]


def _choice_flow(repeat_count: int = 2) -> OutboundFlow:
    flow = OutboundFlow("1001", 30, OPTIONS, timeout_seconds=10, repeat_count=repeat_count)
    assert flow.start() == [Dial("1001", 30)]
    assert flow.handle(Ringing()) == [Report("ringing")]
    assert flow.handle(Answered(at=100.0)) == [Report("answered"), Play("message")]
    return flow


def _result(actions: list[Action]) -> CallResult:
    [finish] = [a for a in actions if isinstance(a, Finish)]
    return finish.result


def test_plain_notification() -> None:
    """Answered: the message plays, then hang-up; completed with the talk time."""
    flow = OutboundFlow("1001", 30)
    flow.start()
    flow.handle(Answered(at=10.0))
    assert flow.handle(PlayDone("message")) == [HangUp()]
    result = _result(flow.handle(Ended(200, at=14.5, local_cause="hangup")))
    assert result.status == "completed"
    assert result.message_played is True
    assert result.duration_seconds == pytest.approx(4.5)
    assert result.choice_response is None


def test_choice_answered_first_round() -> None:
    """Prompt, listen, transcribe, match, closing line, hang-up: the choice is reported."""
    flow = _choice_flow()
    assert flow.handle(PlayDone("message")) == [Play("prompt")]
    assert flow.handle(PlayDone("prompt")) == [Listen(10)]
    assert flow.handle(SpeechEnded()) == [Transcribe()]
    assert flow.handle(Transcript("Yeah, sure.")) == [Play("closing")]
    assert flow.handle(PlayDone("closing")) == [HangUp()]
    result = _result(flow.handle(Ended(200, at=120.0, local_cause="hangup")))
    assert (result.choice_response, result.choice_raw_text) == ("confirmed", "Yeah, sure.")
    assert flow.state is State.DONE


def test_silence_repeats_the_prompt_repeat_count_times() -> None:
    """No speech: the prompt plays exactly repeat_count times, then completed with null."""
    flow = _choice_flow(repeat_count=3)
    actions = flow.handle(PlayDone("message"))
    prompts = 0
    while actions == [Play("prompt")]:
        prompts += 1
        assert flow.handle(PlayDone("prompt")) == [Listen(10)]
        actions = flow.handle(ListenTimeout())
    assert prompts == 3
    assert actions == [Play("closing")]
    flow.handle(PlayDone("closing"))
    result = _result(flow.handle(Ended(200, at=150.0)))
    assert result.choice_response is None
    assert result.choice_raw_text is None


def test_unmatched_answer_repeats_then_null_with_raw_text() -> None:
    """Mumbles are transcribed but not matched: next round, then null with what was said."""
    flow = _choice_flow(repeat_count=2)
    flow.handle(PlayDone("message"))
    for words in ("hmm I know", "what?"):
        flow.handle(PlayDone("prompt"))
        flow.handle(SpeechEnded())
        actions = flow.handle(Transcript(words))
    assert actions == [Play("closing")]
    flow.handle(PlayDone("closing"))
    result = _result(flow.handle(Ended(200, at=130.0)))
    assert (result.choice_response, result.choice_raw_text) == (None, "what?")


def test_failed_recognition_is_the_results_error() -> None:
    """Speech recognition that fails in every round ends completed, unmatched, with the
    failure as the result's error; an answer matched in a later round clears it."""
    failing = "supervisor: transcribe: speech recognition failed: RuntimeError: no primitive"
    for answers, error in (
        ([Transcript("", failing), Transcript("", failing)], failing),
        ([Transcript("", failing), Transcript("yes")], None),
    ):
        flow = _choice_flow(repeat_count=2)
        flow.handle(PlayDone("message"))
        for answer in answers:
            flow.handle(PlayDone("prompt"))
            flow.handle(SpeechEnded())
            actions = flow.handle(answer)
        assert actions == [Play("closing")]
        flow.handle(PlayDone("closing"))
        result = _result(flow.handle(Ended(200, at=130.0)))
        assert (result.status, result.error) == ("completed", error)
        assert result.choice_response == (None if error else "confirmed")


def test_speech_during_the_message_is_ignored() -> None:
    """A "hello?" at pick-up does not count: there is no listening before the prompt ends."""
    flow = _choice_flow()
    assert flow.handle(SpeechEnded()) == []
    assert flow.handle(Transcript("hello? yes")) == []
    assert flow.state is State.MESSAGE
    assert flow.handle(PlayDone("message")) == [Play("prompt")]


def test_hang_up_during_the_message() -> None:
    """The callee hangs up mid-message: completed, message_played false."""
    flow = _choice_flow()
    result = _result(flow.handle(Ended(200, at=102.0, reason="Normal")))
    assert result.status == "completed"
    assert result.message_played is False
    assert result.duration_seconds == pytest.approx(2.0)
    assert flow.handle(PlayDone("message")) == []  # nothing after the end


@pytest.mark.parametrize(
    ("code", "cause", "status"),
    [
        (486, "", "busy"),
        (600, "", "busy"),
        (487, "ring_timeout", "no_answer"),
        (408, "", "no_answer"),
        (480, "", "no_answer"),
        (603, "", "failed"),
        (404, "", "failed"),
        (503, "", "failed"),
        (0, "worker_died", "failed"),
        (487, "no_response", "failed"),
    ],
)
def test_unanswered_calls_map_sip_codes(code: int, cause: str, status: str) -> None:
    """Busy, no answer and failures follow the SIP final code (DESIGN section 5)."""
    assert status_for_unanswered(code, cause) == status
    flow = OutboundFlow("1001", 30)
    flow.start()
    result = _result(flow.handle(Ended(code, at=5.0, local_cause=cause, reason="X")))
    assert result.status == status
    assert result.message_played is False
    assert (result.error is not None) == (status == "failed")


def test_target_that_never_responded_failed_without_a_sip_code() -> None:
    """A dial nobody responded to (not even 100 Trying) fails and says so, with no SIP code."""
    flow = OutboundFlow("sip:x@127.0.0.1:1", 5)
    flow.start()
    ended = Ended(487, at=5.0, local_cause="no_response", reason="Request Terminated")
    result = _result(flow.handle(ended))
    assert (result.status, result.sip_code) == ("failed", None)
    assert result.error == "no SIP response from sip:x@127.0.0.1:1"
