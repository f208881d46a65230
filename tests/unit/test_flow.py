"""The outbound flow state machine, event by event, with no phone."""

from __future__ import annotations

import pytest

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
    State,
    StopListening,
    StopPlayback,
    Transcribe,
    Transcript,
    status_for_unanswered,
)
from daemon.outbound import CallResult

OPTIONS = [
    Option("confirmed", ("yes", "yeah", "confirm"), dtmf="1"),
    Option("cancelled", ("no", "cancel"), dtmf="2"),
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
    [decide, closing] = flow.handle(Transcript("Yeah, sure."))
    assert isinstance(decide, Decide)
    assert closing == Play("closing")
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
    assert actions[1:] == [Play("closing")]
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
    assert actions[1:] == [Play("closing")]
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
        assert actions[1:] == [Play("closing")]
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


def _listening(flow: OutboundFlow) -> OutboundFlow:
    assert flow.handle(PlayDone("message")) == [Play("prompt")]
    assert flow.handle(PlayDone("prompt")) == [Listen(10)]
    return flow


def _decided(actions: list[Action]) -> CallResult:
    [decide] = [a for a in actions if isinstance(a, Decide)]
    return decide.result


def test_a_key_during_the_prompt_answers_at_once() -> None:
    """An option's key pressed during the prompt cuts the prompt, decides that option with
    raw text "dtmf:KEY", then plays the closing; the prompt's end means nothing after."""
    flow = _choice_flow()
    assert flow.handle(PlayDone("message")) == [Play("prompt")]
    actions = flow.handle(Digit("2"))
    assert [type(a) for a in actions] == [StopPlayback, Decide, Play]
    assert actions[-1] == Play("closing")
    decided = _decided(actions)
    assert (decided.choice_response, decided.choice_raw_text) == ("cancelled", "dtmf:2")
    assert (decided.status, decided.message_played, decided.sip_code) == ("completed", True, 200)
    assert flow.handle(PlayDone("prompt")) == []
    assert flow.handle(Digit("1")) == []  # the first key of the round acts
    assert flow.handle(PlayDone("closing")) == [HangUp()]
    result = _result(flow.handle(Ended(200, at=110.0)))
    assert (result.choice_response, result.choice_raw_text) == ("cancelled", "dtmf:2")


@pytest.mark.parametrize("state", [State.LISTENING, State.TRANSCRIBING])
def test_a_key_while_listening_or_transcribing_answers_at_once(state: State) -> None:
    """A key while listening, or while the speech is being transcribed, stops both and
    decides; the transcript that comes late is ignored."""
    flow = _listening(_choice_flow())
    if state is State.TRANSCRIBING:
        assert flow.handle(SpeechEnded()) == [Transcribe()]
    assert flow.state is state
    actions = flow.handle(Digit("1"))
    assert [type(a) for a in actions] == [StopListening, Decide, Play]
    assert _decided(actions).choice_response == "confirmed"
    assert flow.handle(Transcript("no")) == []
    assert flow.handle(SpeechEnded()) == []
    flow.handle(PlayDone("closing"))
    result = _result(flow.handle(Ended(200, at=110.0)))
    assert (result.choice_response, result.choice_raw_text) == ("confirmed", "dtmf:1")


def test_a_key_during_the_message_is_ignored() -> None:
    """Keys pressed while the message plays (or without a choice) mean nothing."""
    flow = _choice_flow()
    assert flow.handle(Digit("1")) == []
    assert flow.state is State.MESSAGE
    plain = OutboundFlow("1001", 30)
    plain.start()
    plain.handle(Answered(at=1.0))
    assert plain.handle(Digit("1")) == []
    assert plain.handle(PlayDone("message")) == [HangUp()]


def test_an_unknown_key_is_an_unmatched_answer() -> None:
    """A key no option names counts as no match: the prompt again, and after the last round
    the closing with a null choice and the key as raw text."""
    flow = _listening(_choice_flow(repeat_count=2))
    assert flow.handle(Digit("9")) == [StopListening(), Play("prompt")]
    actions = flow.handle(Digit("#"))
    assert [type(a) for a in actions] == [StopPlayback, Decide, Play]
    decided = _decided(actions)
    assert (decided.choice_response, decided.choice_raw_text) == (None, "dtmf:#")
    flow.handle(PlayDone("closing"))
    result = _result(flow.handle(Ended(200, at=110.0)))
    assert (result.choice_response, result.choice_raw_text) == (None, "dtmf:#")


def test_an_exact_partial_transcript_ends_the_listening() -> None:
    """Speech so far that names one option exactly ends the listening and decides."""
    flow = _listening(_choice_flow())
    actions = flow.handle(PartialTranscript(" Yes. "))
    assert [type(a) for a in actions] == [StopListening, Decide, Play]
    decided = _decided(actions)
    assert (decided.choice_response, decided.choice_raw_text) == ("confirmed", "Yes.")
    assert flow.handle(SpeechEnded()) == []


@pytest.mark.parametrize("text", ["yess", "yes or no", "hmm", "not yes"])
def test_a_fuzzy_or_ambiguous_partial_keeps_listening(text: str) -> None:
    """A partial that matches only fuzzily, names two options, or none, changes nothing."""
    flow = _listening(_choice_flow())
    assert flow.handle(PartialTranscript(text)) == []
    assert flow.state is State.LISTENING
    assert flow.handle(SpeechEnded()) == [Transcribe()]


def test_decide_comes_before_the_closing_with_the_planned_duration() -> None:
    """The decided result precedes the closing and lasts until the closing's planned end;
    the final result is the same outcome with the real duration."""
    flow = _listening(_choice_flow())
    flow.handle(SpeechEnded())
    actions = flow.handle(Transcript("yes"))
    assert isinstance(actions[0], Decide)
    assert actions[1] == Play("closing")
    planned = actions[0].planned(talked=7.5, closing_seconds=1.29)
    assert planned.duration_seconds == pytest.approx(8.79)
    assert planned.choice_response == "confirmed"
    flow.handle(PlayDone("closing"))
    final = _result(flow.handle(Ended(200, at=108.9)))
    assert final.duration_seconds == pytest.approx(8.9)
    assert (final.choice_response, final.choice_raw_text) == ("confirmed", "yes")
    assert final.answered_by is None  # no machine detection asked for


def test_no_decide_without_a_closing() -> None:
    """A plain notification ends without an early decision (nothing plays after the message)."""
    flow = OutboundFlow("1001", 30)
    flow.start()
    flow.handle(Answered(at=1.0))
    assert flow.handle(PlayDone("message")) == [HangUp()]


def _detecting(mode: str) -> OutboundFlow:
    flow = OutboundFlow(
        "1001", 30, OPTIONS, timeout_seconds=10, repeat_count=1, machine_detection=mode
    )
    flow.start()
    assert flow.handle(Answered(at=100.0)) == [Report("answered"), Detect()]
    assert flow.state is State.DETECTING
    return flow


@pytest.mark.parametrize(
    ("mode", "answered_by"),
    [("detect", "human"), ("detect", "unknown"), ("detect", "machine"), ("voicemail", "human")],
)
def test_detection_then_the_usual_flow(mode: str, answered_by: str) -> None:
    """Speech or a key during detection means nothing; after the decision (not a machine in
    voicemail mode) the message and the choice follow as without detection, and the result
    carries who answered and when it was known."""
    flow = _detecting(mode)
    assert flow.handle(Digit("1")) == []
    assert flow.handle(SpeechEnded()) == []
    assert flow.handle(Detected(answered_by, "test", 1840)) == [Play("message")]
    _listening(flow)
    flow.handle(SpeechEnded())
    flow.handle(Transcript("yes"))
    flow.handle(PlayDone("closing"))
    result = _result(flow.handle(Ended(200, at=110.0)))
    assert (result.answered_by, result.machine_detection_ms) == (answered_by, 1840)
    assert result.choice_response == "confirmed"


def test_voicemail_plays_the_message_after_the_greeting_and_hangs_up() -> None:
    """A machine in voicemail mode: wait for the greeting's end, play the message once, hang
    up; no prompt, no closing, message played, no choice."""
    flow = _detecting("voicemail")
    assert flow.handle(Detected("machine", "long_greeting", 1500)) == [AwaitGreetingEnd()]
    assert flow.state is State.VOICEMAIL_WAIT
    assert flow.handle(PlayDone("message")) == []  # nothing plays yet
    assert flow.handle(GreetingEnded(beep=True, at_ms=6200)) == [Play("message")]
    assert flow.handle(Digit("1")) == []
    assert flow.handle(PlayDone("message")) == [HangUp()]
    result = _result(flow.handle(Ended(200, at=112.0, local_cause="hangup")))
    assert (result.status, result.message_played) == ("completed", True)
    assert (result.answered_by, result.machine_detection_ms) == ("machine", 1500)
    assert (result.choice_response, result.choice_raw_text) == (None, None)


def test_hang_up_while_detecting() -> None:
    """The callee hangs up before the detector decided: completed, message not played,
    answered by unknown; a call never answered has no answered_by at all."""
    flow = _detecting("detect")
    result = _result(flow.handle(Ended(200, at=101.0)))
    assert (result.status, result.message_played) == ("completed", False)
    assert (result.answered_by, result.machine_detection_ms) == ("unknown", None)
    busy = OutboundFlow("1001", 30, machine_detection="detect")
    busy.start()
    assert _result(busy.handle(Ended(486, at=3.0))).answered_by is None


def test_a_failure_hangs_up_and_finishes_failed() -> None:
    """A Failed while listening hangs up and finishes at once as failed with its error and
    the talk time, and nothing after it counts."""
    flow = _choice_flow()
    flow.handle(PlayDone("message"))
    flow.handle(PlayDone("prompt"))
    actions = flow.handle(Failed("internal error: KeyError('x')", at=103.0))
    assert actions[0] == HangUp(), actions
    result = _result(actions)
    assert (result.status, result.error) == ("failed", "internal error: KeyError('x')")
    assert result.duration_seconds == pytest.approx(3.0)
    assert flow.handle(Ended(200, at=104.0, local_cause="hangup")) == []


def test_an_unknown_key_on_the_last_round_clears_an_earlier_recognition_error() -> None:
    """A failed transcription in round 1, then an unknown key in the last round: unmatched
    with raw text dtmf:9 and no error (the error was not the last answer's)."""
    flow = _choice_flow(repeat_count=2)
    flow.handle(PlayDone("message"))
    flow.handle(PlayDone("prompt"))
    flow.handle(SpeechEnded())
    assert flow.handle(Transcript("", "speech recognition failed")) == [Play("prompt")]
    flow.handle(PlayDone("prompt"))
    flow.handle(Digit("9"))
    result = _result(flow.handle(Ended(200, at=130.0)))
    assert (result.choice_raw_text, result.error) == ("dtmf:9", None), result
