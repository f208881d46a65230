"""Every message between the supervisor and a SIP worker, typed and validated.

A message is a pydantic model whose ``type`` (a class constant) names it in the envelope and
whose fields are the envelope's ``body``; unknown fields are refused (``extra="forbid"``), so
a worker and a supervisor of different versions fail loudly instead of half-understanding
each other. A :class:`Request` names the :class:`Message` that answers it (``reply``).

To a worker: :class:`Ping`, :class:`Shutdown`, :class:`Outbound`, :class:`MakeCall`,
:class:`Hangup`; to a web worker also :class:`WebOffer` and :class:`WebHangup`. To the
supervisor: :class:`Hello`, :class:`Claim`, :class:`Synthesize`, :class:`Transcribe`, and
the events :class:`Ready`, :class:`SipEventMessage`, :class:`OutboundStatus` and the inbound
agent's :class:`InboundStarted`, :class:`TranscriptTurn`, :class:`AgentFailed`,
:class:`AgentFailover`, :class:`InboundDone`.
:data:`REQUESTS` and :data:`EVENTS` map each ``type`` to its class.

:data:`Pcm16` is the one field type for audio: int16 samples, carried as base64 of
little-endian PCM16.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Annotated, Any, ClassVar, Generic, Literal, TypeVar, cast, get_args

import numpy as np
from numpy.typing import NDArray
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    TypeAdapter,
    ValidationError,
)

from daemon.blackbox import RecordingInfo
from sip.events import SipEvent


def pcm16_decode(value: Any) -> NDArray[np.int16]:
    """Samples from base64 of little-endian PCM16 (or samples, as they are)."""
    if isinstance(value, np.ndarray):
        return value.astype(np.int16, copy=False)
    if not isinstance(value, str):
        raise ValueError("PCM16 audio is a base64 string")
    data = base64.b64decode(value, validate=True)
    if len(data) % 2:
        raise ValueError("PCM16 audio has an odd number of bytes")
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def pcm16_encode(samples: NDArray[np.int16]) -> str:
    return base64.b64encode(samples.astype("<i2").tobytes()).decode()


Pcm16 = Annotated[
    NDArray[np.int16], PlainValidator(pcm16_decode), PlainSerializer(pcm16_encode, return_type=str)
]


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    type: ClassVar[str] = ""

    def body(self) -> dict[str, Any]:
        """The envelope's body: the fields as JSON data."""
        return self.model_dump(mode="json")


class Done(Message):
    """The reply of a request that returns nothing."""


ReplyT = TypeVar("ReplyT", bound=Message)


class Request(Message, Generic[ReplyT]):
    reply: ClassVar[type[Message]] = Done


class Event(Message):
    """A message sent without a reply (both directions)."""


# -- to a worker -------------------------------------------------------------------------


class HeldAudio(Message):
    samples: int
    sha256: str  # of the little-endian PCM16


class HeldCall(Message):
    audio: dict[str, HeldAudio]


class PingReply(Message):
    starting: bool = False  # the SIP endpoint is not up yet: nothing else is filled in
    registered: bool = False
    conference_ports: int = 0
    calls: int = 0  # calls the worker holds
    pjsua_calls: int = 0  # pjsua's call slots in use, calls in teardown included
    refused: dict[str, int] = Field(default_factory=dict)  # INVITEs refused, by reason
    tasks: int = 0  # asyncio tasks, for leak checks
    fds: int = 0
    outbound: dict[str, HeldCall] = Field(default_factory=dict)  # calls in progress
    bad_frames: int = 0  # IPC frames from the supervisor the worker could not read
    web_calls: list[str] = Field(default_factory=list)  # a web worker: the keys of its calls


class Ping(Request[PingReply]):
    type = "ping"
    reply = PingReply


class Shutdown(Request[Done]):
    type = "shutdown"


class OutboundReply(Message):
    result: dict[str, Any]  # the fields of daemon.outbound.CallResult


class Outbound(Request[OutboundReply]):
    """A whole notification call, with its audio synthesised before dialling."""

    type = "outbound"
    reply = OutboundReply
    call_id: str
    request: dict[str, Any]  # the POST /call body, as validated by the API
    audio: dict[str, Pcm16]  # message, prompt, closing at the SIP clock rate
    amd: dict[str, Any] = Field(default_factory=dict)  # [amd] settings (AmdSettings fields)


class MakeCallReply(Message):
    call: str


class MakeCall(Request[MakeCallReply]):
    type = "make_call"
    reply = MakeCallReply
    target: str
    ring_timeout: float


class Hangup(Request[Done]):
    type = "hangup"
    call: str


class WebOfferReply(Message):
    """The answer to a browser's offer; on a refusal ``sdp`` is empty and ``detail`` says why.

    (Not ``error``: a reply body with a top-level ``error`` is the IPC failure shape.)"""

    sdp: str = ""
    call: str = ""  # the web worker's id of the call
    status: int = 201  # the HTTP status to answer with: 201, or 400 / 503 with ``detail``
    detail: str = ""


class WebOffer(Request[WebOfferReply]):
    """A browser's SDP offer, for the inbound agent (``agent``) or the bare engine (``engine``)."""

    type = "web_offer"
    reply = WebOfferReply
    sdp: str
    mode: Literal["agent", "engine"]
    session: dict[str, Any] | None = None  # the realtime session asked for (engine mode)
    record_id: str = ""  # the record's id ("in-<hex16>"), agent mode
    caller: str = ""  # "web:<token name>" or "web:local"
    user_agent: str = ""


class WebHangup(Request[Done]):
    type = "web_hangup"
    call: str


# -- to the supervisor -------------------------------------------------------------------


class HelloReply(Message):
    """A worker's settings: sections as JSON data, secrets in clear (over the 0600 socket)."""

    sip: dict[str, Any]
    log_level: str
    log_format: str
    inbound_policy: str | None
    agent: dict[str, Any]
    api: dict[str, Any]
    realtime: dict[str, Any]
    recordings: dict[str, Any] = Field(default_factory=dict)
    web: dict[str, Any] = Field(default_factory=dict)  # the [web] section


class Hello(Request[HelloReply]):
    type = "hello"
    reply = HelloReply
    index: int
    pid: int


class ClaimReply(Message):
    granted: bool


class Claim(Request[ClaimReply]):
    type = "claim"
    reply = ClaimReply
    sip_call_id: str


class SynthesizeReply(Message):
    pcm: Pcm16


class Synthesize(Request[SynthesizeReply]):
    type = "synthesize"
    reply = SynthesizeReply
    text: str
    rate: int


class TranscribeReply(Message):
    text: str


class Transcribe(Request[TranscribeReply]):
    type = "transcribe"
    reply = TranscribeReply
    pcm: Pcm16
    rate: int
    hint: str = ""


class Ready(Event):
    type = "ready"
    contact: str


_SIP_EVENTS: dict[str, type[Any]] = {cls.__name__: cls for cls in get_args(SipEvent)}
_SIP_ADAPTERS = {name: TypeAdapter(cls) for name, cls in _SIP_EVENTS.items()}


def _sip_event(value: Any) -> SipEvent:
    if isinstance(value, tuple(_SIP_EVENTS.values())):
        return cast(SipEvent, value)
    if not isinstance(value, dict):
        raise ValueError("a SIP event is an object")
    fields = dict(value)
    name = fields.pop("type", None)
    cls = _SIP_EVENTS.get(str(name))
    if cls is None:
        raise ValueError(f"unknown SIP event {name!r}")
    unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"{name} has no field {unknown[0]!r}")
    try:
        event: SipEvent = _SIP_ADAPTERS[name].validate_python(fields)
    except ValidationError as exc:
        raise ValueError(f"{name}: {first_error(exc)}") from None
    return event


def _sip_event_body(event: SipEvent) -> dict[str, Any]:
    return {"type": type(event).__name__, **dataclasses.asdict(event)}


class SipEventMessage(Event):
    """One SIP event, tagged with its class name."""

    type = "sip_event"
    event: Annotated[
        SipEvent, PlainValidator(_sip_event), PlainSerializer(_sip_event_body, return_type=dict)
    ]


class OutboundStatus(Event):
    type = "outbound_status"
    call_id: str
    status: str  # ringing | answered


class OutboundDecided(Event):
    """The outcome of an outbound call is known before it ends (the closing is still playing).

    ``result`` holds daemon.outbound.CallResult fields; the final reply only adds what the call's
    end brings (black box, recording)."""

    type = "outbound_decided"
    call_id: str
    result: dict[str, Any]


class InboundStarted(Event):
    type = "inbound_call"
    call: str
    sip_call_id: str
    caller: str
    record_id: str = ""  # the record's id ("in-<hex16>"), made by the worker
    extension: str = ""  # the called user
    direction: Literal["inbound", "web"] = "inbound"  # a SIP call, or a browser's


class TranscriptTurn(Event):
    type = "transcript"
    call: str
    role: str  # caller | agent
    text: str
    at: float  # seconds since the call was answered


class AgentFailed(Event):
    type = "agent_failed"
    call: str
    kind: str  # a daemon.realtime.client.FailureKind value
    error: str
    phase: Literal["connect", "session"] = "session"


class AgentFailover(Event):
    """The model was lost for good and the call went on on the embedded engine."""

    type = "agent_failover"
    call: str
    kind: str  # a daemon.realtime.client.FailureKind value
    error: str
    phase: Literal["connect", "session"]
    at: float = 0.0  # seconds since the call was answered
    to: Literal["local"] = "local"


class InboundDone(Event):
    type = "inbound_done"
    call: str
    cause: str
    black_box: dict[str, Any] | None = None  # daemon.blackbox.BlackBox
    recording: RecordingInfo | None = None
    connect_seconds: float = 0.0


class WebCallEnded(Event):
    """A web worker no longer holds its call ``call`` (agent or engine, however it ended)."""

    type = "web_call_ended"
    call: str


INBOUND_EVENTS: tuple[type[Event], ...] = (
    InboundStarted,
    TranscriptTurn,
    AgentFailed,
    AgentFailover,
    InboundDone,
)

REQUESTS: dict[str, type[Request[Any]]] = {
    cls.type: cls
    for cls in (
        Ping,
        Shutdown,
        Outbound,
        MakeCall,
        Hangup,
        WebOffer,
        WebHangup,
        Hello,
        Claim,
        Synthesize,
        Transcribe,
    )
}
_EVENT_TYPES: tuple[type[Event], ...] = (
    Ready,
    SipEventMessage,
    OutboundStatus,
    OutboundDecided,
    WebCallEnded,
    *INBOUND_EVENTS,
)
EVENTS: dict[str, type[Event]] = {cls.type: cls for cls in _EVENT_TYPES}


def first_error(exc: ValidationError) -> str:
    """The first problem pydantic found, as ``field.path: message``."""
    error = exc.errors()[0]
    where = ".".join(str(p) for p in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
