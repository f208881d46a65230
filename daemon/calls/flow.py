"""The outbound notification flow as a pure state machine: events in, actions out.

An adapter (SIP, playout, VAD, speech) feeds :class:`OutboundFlow` the events it observes and
carries out the actions it returns; the flow never waits, sleeps or does I/O, so every path
(busy, early hang-up, silence, unmatched answers) is tested without a phone.

    DIALING -> RINGING -> MESSAGE -> [PROMPT -> LISTENING -> TRANSCRIBING]* -> CLOSING -> ENDING
         \\____________\\__________\\___ any state: callee hangs up / SIP failure -> DONE

- The message plays as soon as the call is answered and is not interruptible.
- With a choice: each round plays the prompt, then listens (what was heard before the prompt
  ended is dropped), until end of speech or ``timeout_seconds``; the speech is transcribed and
  matched. No speech or no match: the next round, up to ``repeat_count`` rounds.
- Then a short closing line, hang-up, and the result.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from daemon.calls.choice import ChoiceMatcher, Option
from daemon.outbound import CallResult


class State(StrEnum):
    DIALING = "dialing"
    RINGING = "ringing"
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


Action = Dial | Play | Listen | Transcribe | HangUp | Report | Finish


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


Event = Ringing | Answered | PlayDone | SpeechEnded | ListenTimeout | Transcript | Ended


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
    state: State = State.DIALING
    round: int = 0
    message_played: bool = False
    answered_at: float | None = None
    raw_text: str | None = None
    choice: str | None = None
    recognition_error: str | None = None  # the last failed transcription, for the result

    def __post_init__(self) -> None:
        self._matcher = ChoiceMatcher(self.options) if self.options else None

    def start(self) -> list[Action]:
        return [Dial(self.target, self.ring_timeout)]

    def handle(self, event: Event) -> list[Action]:
        """Advance on ``event``; return the actions to carry out, in order."""
        if self.state is State.DONE:
            return []
        if isinstance(event, Ended):
            return self._ended(event)
        if isinstance(event, Ringing) and self.state is State.DIALING:
            self.state = State.RINGING
            return [Report("ringing")]
        if isinstance(event, Answered) and self.state in (State.DIALING, State.RINGING):
            self.answered_at = event.at
            self.state = State.MESSAGE
            return [Report("answered"), Play("message")]
        if isinstance(event, PlayDone):
            return self._play_done(event.item)
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

    def _play_done(self, item: str) -> list[Action]:
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
            self.state = State.CLOSING
            return [Play("closing")]
        self.round += 1
        self.state = State.PROMPT
        return [Play("prompt")]

    def _heard(self, text: str) -> list[Action]:
        if text.strip():
            self.raw_text = text.strip()
        assert self._matcher is not None
        match = self._matcher.match(text)
        if match is None:
            return self._next_round()
        self.choice = match.value
        self.state = State.CLOSING
        return [Play("closing")]

    def _ended(self, event: Ended) -> list[Action]:
        self.state = State.DONE
        if self.answered_at is None:
            status = status_for_unanswered(event.code, event.local_cause)
            error = None if status != "failed" else f"SIP {event.code} {event.reason}".strip()
            if event.local_cause == "no_response":
                error = f"no SIP response from {self.target}"
                return [Finish(CallResult(status, error=error))]
            return [Finish(CallResult(status, error=error, sip_code=event.code or None))]
        return [
            Finish(
                CallResult(
                    "completed",
                    duration_seconds=max(0.0, event.at - self.answered_at),
                    message_played=self.message_played,
                    choice_response=self.choice,
                    choice_raw_text=self.raw_text,
                    error=self.recognition_error if self.choice is None else None,
                    sip_code=200,
                )
            )
        ]
