"""The outbound notification flow as a pure state machine: events in, actions out.

An adapter (SIP, playout, VAD, speech) feeds :class:`OutboundFlow` the events it observes and
carries out the actions it returns; the flow never waits, sleeps or does I/O, so every path
(busy, early hang-up, silence, unmatched answers) is tested without a phone.

    DIALING -> RINGING -> [DETECTING] -> MESSAGE -> [PROMPT -> LISTENING -> TRANSCRIBING]*
         -> CLOSING -> ENDING
    DETECTING -> VOICEMAIL_WAIT -> VOICEMAIL -> ENDING      (a machine, ``voicemail`` mode)
         \\____________\\__________\\___ any state: callee hangs up / SIP failure -> DONE

- The message plays as soon as the call is answered and is not interruptible; with machine
  detection it plays once the detector has decided (human or unknown: as without detection).
  In ``voicemail`` mode a machine gets the message after its greeting (or beep), then the
  call hangs up: no prompt, no closing.
- With a choice: each round plays the prompt, then listens (what was heard before the prompt
  ended is dropped), until end of speech or ``timeout_seconds``; the speech is transcribed and
  matched. No speech or no match: the next round, up to ``repeat_count`` rounds. A key pressed
  during the prompt or the listening answers at once (an option's ``dtmf`` key, or no match
  for any other key); a transcript of the speech so far that matches one option exactly ends
  the listening early.
- Then a short closing line, hang-up, and the result. Once the outcome is known the flow says
  so (:class:`Decide`) before the closing plays, so the result need not wait for it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from daemon.calls.choice import ChoiceMatcher, Option
from daemon.outbound import CallResult


class State(StrEnum):
    DIALING = "dialing"
    RINGING = "ringing"
    DETECTING = "detecting"  # answered, the answering-machine detector listens
    VOICEMAIL_WAIT = "voicemail_wait"  # a machine: waiting for the end of its greeting
    VOICEMAIL = "voicemail"  # the message plays to the machine
    MESSAGE = "message"
    PROMPT = "prompt"
    LISTENING = "listening"
    TRANSCRIBING = "transcribing"
    CLOSING = "closing"
    ENDING = "ending"
    DONE = "done"


# -- actions (what the adapter must do) -------------------------------------------------


@dataclass(frozen=True)
class Dial:
    target: str
    ring_timeout: float


@dataclass(frozen=True)
class Play:
    item: str  # "message" | "prompt" | "closing"


@dataclass(frozen=True)
class Listen:
    """Drop what was heard so far, then capture speech (VAD) for up to ``timeout`` s."""

    timeout: float


@dataclass(frozen=True)
class Transcribe:
    """Transcribe the captured utterance; answer with :class:`Transcript`."""


@dataclass(frozen=True)
class HangUp:
    pass


@dataclass(frozen=True)
class Report:
    status: str  # "ringing" | "answered": a status change for the store


@dataclass(frozen=True)
class Finish:
    result: CallResult


@dataclass(frozen=True)
class Detect:
    """Run the answering-machine detector on the callee's audio; answer with :class:`Detected`."""


@dataclass(frozen=True)
class AwaitGreetingEnd:
    """Wait for the end of the machine's greeting (or its beep); answer with
    :class:`GreetingEnded`."""


@dataclass(frozen=True)
class StopPlayback:
    """Cut what is playing (the prompt) within a frame; no :class:`PlayDone` follows."""


@dataclass(frozen=True)
class StopListening:
    """Stop listening and transcribing; nothing they would have posted follows."""


@dataclass(frozen=True)
class Decide:
    """The outcome is known before the closing plays: report it now. ``result`` has no
    duration yet; :meth:`planned` gives the result with the planned one."""

    result: CallResult

    def planned(self, talked: float, closing_seconds: float) -> CallResult:
        """The result of a call that talked ``talked`` s so far and hangs up after the
        closing (``closing_seconds`` long)."""
        return replace(self.result, duration_seconds=round(max(0.0, talked) + closing_seconds, 3))


Action = (
    Dial
    | Play
    | Listen
    | Transcribe
    | HangUp
    | Report
    | Finish
    | Detect
    | AwaitGreetingEnd
    | StopPlayback
    | StopListening
    | Decide
)


# -- events (what the adapter observed) -------------------------------------------------


@dataclass(frozen=True)
class Ringing:
    pass


@dataclass(frozen=True)
class Answered:
    at: float


@dataclass(frozen=True)
class PlayDone:
    item: str


@dataclass(frozen=True)
class SpeechEnded:
    """The listener heard an utterance end (VAD)."""


@dataclass(frozen=True)
class ListenTimeout:
    pass


@dataclass(frozen=True)
class Transcript:
    text: str
    error: str = ""  # speech recognition failed (the text is then empty): why


@dataclass(frozen=True)
class Ended:
    """The call is over: final SIP code, whether we ended it, and when."""

    code: int
    at: float
    local_cause: str = ""  # "ring_timeout", "no_response", "hangup", "worker_died"...
    reason: str = ""


@dataclass(frozen=True)
class Detected:
    """The answering-machine detector decided, ``at_ms`` of callee audio after the answer."""

    answered_by: str  # "human" | "machine" | "unknown"
    cause: str
    at_ms: int


@dataclass(frozen=True)
class GreetingEnded:
    """A machine's greeting is over (``beep``: it ended with one; ``timed_out``: gave up)."""

    beep: bool
    at_ms: int
    timed_out: bool = False


@dataclass(frozen=True)
class Digit:
    """The callee pressed a key (RFC 4733 or SIP INFO: the flow does not care which)."""

    digit: str


@dataclass(frozen=True)
class PartialTranscript:
    """A transcript of the callee's speech so far, taken at a pause while still listening."""

    text: str


@dataclass(frozen=True)
class Failed:
    """Something the adapter does for the call broke (``error`` says what) at wall time
    ``at``: the call ends."""

    error: str
    at: float


Event = (
    Ringing
    | Answered
    | PlayDone
    | SpeechEnded
    | ListenTimeout
    | Transcript
    | Ended
    | Detected
    | GreetingEnded
    | Digit
    | PartialTranscript
    | Failed
)
KEYED_STATES = frozenset({State.PROMPT, State.LISTENING, State.TRANSCRIBING})  # a key answers


def status_for_unanswered(code: int, local_cause: str) -> str:
    """The contract status of a call that was never answered (DESIGN section 5).

    ``no_response``: the target sent no SIP response at all (nothing listens there), which is
    a failure to reach it, not a callee who let it ring."""
    if local_cause == "no_response":
        return "failed"
    if local_cause == "ring_timeout" or code in (408, 480):
        return "no_answer"
    if code in (486, 600):
        return "busy"
    return "failed"


@dataclass
class OutboundFlow:
    target: str
    ring_timeout: float
    options: list[Option] = field(default_factory=list)
    timeout_seconds: float = 30.0
    repeat_count: int = 2
    machine_detection: str | None = None  # None (off) | "detect" | "voicemail"
    state: State = State.DIALING
    round: int = 0
    message_played: bool = False
    answered_at: float | None = None
    raw_text: str | None = None
    choice: str | None = None
    recognition_error: str | None = None  # the last failed transcription, for the result
    answered_by: str | None = None  # the detector's decision (with machine_detection only)
    machine_detection_ms: int | None = None
    failure: str | None = None  # what broke, when the call ended on a Failed

    def __post_init__(self) -> None:
        self._matcher = ChoiceMatcher(self.options) if self.options else None
        self._keys = {o.dtmf: o.value for o in self.options if o.dtmf is not None}

    def start(self) -> list[Action]:
        return [Dial(self.target, self.ring_timeout)]

    def handle(self, event: Event) -> list[Action]:
        """Advance on ``event``; return the actions to carry out, in order."""
        if self.state is State.DONE:
            return []
        if isinstance(event, Ended):
            return self._ended(event)
        if isinstance(event, Failed):
            return self._failed(event)
        if isinstance(event, Ringing) and self.state is State.DIALING:
            self.state = State.RINGING
            return [Report("ringing")]
        if isinstance(event, Answered) and self.state in (State.DIALING, State.RINGING):
            self.answered_at = event.at
            if self.machine_detection is not None:
                self.state = State.DETECTING
                return [Report("answered"), Detect()]
            self.state = State.MESSAGE
            return [Report("answered"), Play("message")]
        if isinstance(event, Detected | GreetingEnded):
            return self._detection(event)
        if isinstance(event, PlayDone):
            return self._play_done(event.item)
        return self._answering(event)

    def _answering(self, event: Event) -> list[Action]:
        """The callee's answer: keys, speech, transcripts."""
        if isinstance(event, Digit) and self.state in KEYED_STATES:
            return self._key(event.digit)
        if isinstance(event, PartialTranscript) and self.state is State.LISTENING:
            return self._partial(event.text)
        if isinstance(event, SpeechEnded) and self.state is State.LISTENING:
            self.state = State.TRANSCRIBING
            return [Transcribe()]
        if isinstance(event, ListenTimeout) and self.state is State.LISTENING:
            return self._next_round()
        if isinstance(event, Transcript) and self.state is State.TRANSCRIBING:
            if event.error:
                self.recognition_error = event.error
            return self._heard(event.text)
        return []  # an event that means nothing in this state (e.g. speech during the message)

    def _detection(self, event: Detected | GreetingEnded) -> list[Action]:
        if isinstance(event, GreetingEnded):
            if self.state is not State.VOICEMAIL_WAIT:
                return []
            self.state = State.VOICEMAIL
            return [Play("message")]
        if self.state is not State.DETECTING:
            return []
        self.answered_by, self.machine_detection_ms = event.answered_by, event.at_ms
        if event.answered_by == "machine" and self.machine_detection == "voicemail":
            self.state = State.VOICEMAIL_WAIT
            return [AwaitGreetingEnd()]
        self.state = State.MESSAGE
        return [Play("message")]

    def _play_done(self, item: str) -> list[Action]:
        if item == "message" and self.state is State.VOICEMAIL:
            self.message_played = True
            self.state = State.ENDING
            return [HangUp()]
        if item == "message" and self.state is State.MESSAGE:
            self.message_played = True
            if self._matcher is None:
                self.state = State.ENDING
                return [HangUp()]
            return self._next_round()
        if item == "prompt" and self.state is State.PROMPT:
            self.state = State.LISTENING
            return [Listen(self.timeout_seconds)]
        if item == "closing" and self.state is State.CLOSING:
            self.state = State.ENDING
            return [HangUp()]
        return []

    def _next_round(self) -> list[Action]:
        if self.round >= self.repeat_count:
            return self._close()
        self.round += 1
        self.state = State.PROMPT
        return [Play("prompt")]

    def _close(self) -> list[Action]:
        """The outcome is known: report it, then the closing line."""
        self.state = State.CLOSING
        return [Decide(self._result(0.0)), Play("closing")]

    def _heard(self, text: str) -> list[Action]:
        if text.strip():
            self.raw_text = text.strip()
        assert self._matcher is not None
        match = self._matcher.match(text)
        if match is None:
            return self._next_round()
        self.choice = match.value
        return self._close()

    def _key(self, digit: str) -> list[Action]:
        """A key during the prompt or the listening: an option's key answers with that
        option, any other is an unmatched answer; either way at once."""
        if self._matcher is None:
            return []  # no question asked: a key means nothing
        stop: list[Action] = [StopPlayback()] if self.state is State.PROMPT else [StopListening()]
        self.raw_text = f"dtmf:{digit}"
        self.recognition_error = None  # the answer is this key, not an earlier round's speech
        value = self._keys.get(digit)
        if value is None:
            return stop + self._next_round()
        self.choice = value
        return stop + self._close()

    def _partial(self, text: str) -> list[Action]:
        """Speech so far names one option exactly, and no other: the answer is in."""
        assert self._matcher is not None
        match = self._matcher.match(text)
        if match is None or match.confidence < 1.0:
            return []  # maybe more is coming: keep listening
        self.raw_text, self.choice = text.strip(), match.value
        return [StopListening(), *self._close()]

    def _failed(self, event: Failed) -> list[Action]:
        """The call cannot go on: hang up what was dialled and finish as failed."""
        self.state, self.failure = State.DONE, event.error
        if self.answered_at is None:
            return [HangUp(), Finish(CallResult("failed", error=event.error))]
        return [HangUp(), Finish(self._result(max(0.0, event.at - self.answered_at)))]

    def _result(self, duration: float) -> CallResult:
        detected = self.machine_detection is not None
        return CallResult(
            "failed" if self.failure is not None else "completed",
            duration_seconds=duration,
            message_played=self.message_played,
            choice_response=self.choice,
            choice_raw_text=self.raw_text,
            error=self.failure or (self.recognition_error if self.choice is None else None),
            sip_code=200,
            answered_by=(self.answered_by or "unknown") if detected else None,
            machine_detection_ms=self.machine_detection_ms,
        )

    def _ended(self, event: Ended) -> list[Action]:
        self.state = State.DONE
        if self.answered_at is None:
            status = status_for_unanswered(event.code, event.local_cause)
            error = None if status != "failed" else f"SIP {event.code} {event.reason}".strip()
            if event.local_cause == "no_response":
                error = f"no SIP response from {self.target}"
                return [Finish(CallResult(status, error=error))]
            return [Finish(CallResult(status, error=error, sip_code=event.code or None))]
        return [Finish(self._result(max(0.0, event.at - self.answered_at)))]
