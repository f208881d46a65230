"""What the inbound conversation machine (:mod:`daemon.calls.conversation`) takes and gives.

Events are what the agent observed on the call leg and the model session; actions are what
the machine asks it to do, in order. All are plain values, compared by content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from config.schema import HttpTool
from daemon.realtime import events as ev
from media.codec import AudioFormat

if TYPE_CHECKING:  # a StrEnum of the client; the machine only names it
    from daemon.realtime.client import FailureKind


class PlayoutView(Protocol):
    """What the machine reads of the playout buffer (:class:`media.playout.PlayoutBuffer`)."""

    @property
    def depth_samples(self) -> int: ...

    def played_ms(self, item_id: str) -> int: ...


@dataclass(frozen=True)
class Turn:
    role: str  # caller | agent
    text: str
    at: float  # seconds since the call was answered


# -- events (what the agent observed) ---------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The call is confirmed and the session is up; ask for the greeting if ``greeting``.
    ``failed_over``: the session is already the embedded engine's (the first one failed)."""

    greeting: bool
    failed_over: bool = False


@dataclass(frozen=True)
class Model:
    event: ev.ModelEvent


@dataclass(frozen=True)
class UplinkSent:
    ms: int  # caller audio the session's input buffer has received


@dataclass(frozen=True)
class Timer:
    """The :attr:`Conversation.deadline` has passed: a barge-in guard, the DTMF gap, or an
    end_call/transfer bound (a REFER with no final answer in 30 s times out so)."""


@dataclass(frozen=True)
class Flushed:
    """The playout carried out the flush (or 100 ms passed)."""


@dataclass(frozen=True)
class Drained:
    """:class:`AwaitPlayout` is over: everything queued was played (or its time ran out)."""


@dataclass(frozen=True)
class Dtmf:
    digit: str


@dataclass(frozen=True)
class ToolDone:
    call_id: str
    output: dict[str, Any]


@dataclass(frozen=True)
class TransferResult:
    code: int  # the final NOTIFY's status code
    reason: str


@dataclass(frozen=True)
class SessionLost:
    kind: FailureKind
    retryable: bool
    error: str


@dataclass(frozen=True)
class SessionReplaced:
    output_format: AudioFormat | None


@dataclass(frozen=True)
class ReplaceFailed:
    kind: FailureKind
    retryable: bool
    error: str


@dataclass(frozen=True)
class CallEnded:
    cause: str


Event = (
    Started
    | Model
    | UplinkSent
    | Timer
    | Flushed
    | Drained
    | Dtmf
    | ToolDone
    | TransferResult
    | SessionLost
    | SessionReplaced
    | ReplaceFailed
    | CallEnded
)

# -- actions (what the agent must do) ---------------------------------------------------


@dataclass(frozen=True)
class Play:
    item: str
    data: bytes  # in the session's output format


@dataclass(frozen=True)
class EndItem:
    item: str


@dataclass(frozen=True)
class Flush:
    """Flush the playout, then report :class:`Flushed` (after any Cancel that follows)."""


@dataclass(frozen=True)
class Cancel:
    """Cancel the response in progress (``response.cancel``)."""


@dataclass(frozen=True)
class Truncate:
    item: str
    ms: int


@dataclass(frozen=True)
class SendText:
    text: str  # a user text item


@dataclass(frozen=True)
class CreateResponse:
    instructions: str = ""


@dataclass(frozen=True)
class FunctionOutput:
    call_id: str
    output: dict[str, Any]


@dataclass(frozen=True)
class RunTool:
    """Run an HTTP tool; report :class:`ToolDone`."""

    call_id: str
    tool: HttpTool
    arguments: dict[str, Any]


@dataclass(frozen=True)
class SendDtmf:
    """Send keypad tones; report :class:`ToolDone` (ok, or the error)."""

    call_id: str
    digits: str


@dataclass(frozen=True)
class AwaitPlayout:
    """Wait until the playout is drained (at most ``timeout`` s), then report :class:`Drained`."""

    timeout: float


@dataclass(frozen=True)
class Transfer:
    """REFER the caller; the final progress is a :class:`TransferResult`, a refusal a ToolDone."""

    call_id: str
    target: str


@dataclass(frozen=True)
class HangUp:
    cause: str  # the call's end cause, once hung up


@dataclass(frozen=True)
class ReplaceSession:
    """Open a new session after ``after`` s, replay ``replay`` as text, swap; report
    :class:`SessionReplaced` or :class:`ReplaceFailed`. ``reason`` failover: the new session
    is the embedded engine's, and so is every one after it."""

    reason: str  # reconnect | rotation | failover
    replay: tuple[Turn, ...]
    after: float = 0.0


@dataclass(frozen=True)
class SetOutputFormat:
    format: AudioFormat


@dataclass(frozen=True)
class RecordTurn:
    turn: Turn


@dataclass(frozen=True)
class ReportFailure:
    kind: FailureKind
    error: str


@dataclass(frozen=True)
class ReportFailover:
    """The model was lost for good: the call goes on on the embedded engine (for the record)."""

    kind: FailureKind
    error: str


@dataclass(frozen=True)
class Bridge:
    """Say the bridge phrase in the local voice, after what is playing, while the embedded
    engine's session opens (the phrase is queued before that session speaks)."""


@dataclass(frozen=True)
class Apologise:
    """Say the apology in the local voice after what is playing, and wait for it."""


@dataclass(frozen=True)
class End:
    cause: str


@dataclass(frozen=True)
class BargedIn:
    """A barge-in was carried out (for the call's black box)."""

    item: str
    stop_ms: float  # the model's speech_started -> the playout flushed
    truncated_ms: int  # what the caller heard of the item
    cancelled: bool  # a response was still streaming and was cancelled


@dataclass(frozen=True)
class SessionNote:
    """A change of model session (for the call's black box)."""

    kind: str  # replaced
    reason: str  # reconnect | rotation | failover


@dataclass(frozen=True)
class Log:
    event: str
    fields: dict[str, Any]
    level: str = "info"


Action = (
    Play
    | EndItem
    | Flush
    | Cancel
    | Truncate
    | SendText
    | CreateResponse
    | FunctionOutput
    | RunTool
    | SendDtmf
    | AwaitPlayout
    | Transfer
    | HangUp
    | ReplaceSession
    | SetOutputFormat
    | RecordTurn
    | ReportFailure
    | ReportFailover
    | Bridge
    | Apologise
    | End
    | BargedIn
    | SessionNote
    | Log
)
