"""What a SIP worker reports: plain, serialisable records (they cross the IPC later)."""

from __future__ import annotations

from dataclasses import dataclass, field

from daemon.legs.leg import MediaStats

__all__ = [
    "CallAnswered",
    "CallEnded",
    "CallRinging",
    "DtmfReceived",
    "IncomingCall",
    "MediaStats",
    "RegistrationChanged",
    "SipEvent",
    "TransferProgress",
]


@dataclass(frozen=True)
class RegistrationChanged:
    registered: bool
    code: int  # last SIP status of a REGISTER (0: none yet or transport failure)
    reason: str
    retry_in: float | None = None  # seconds to the next attempt after a failure
    error: str = ""  # why not registered (e.g. "401 Unauthorized: authentication failed...")


@dataclass(frozen=True)
class IncomingCall:
    call: str  # this worker's id for the call
    sip_call_id: str
    remote_uri: str
    display_name: str
    from_user: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CallRinging:
    call: str
    code: int  # 180 or 183


@dataclass(frozen=True)
class CallAnswered:
    call: str


@dataclass(frozen=True)
class CallEnded:
    call: str
    code: int  # final SIP status (200 for an answered call that ended normally)
    reason: str
    local_cause: str = ""  # "ring_timeout", "hangup", "shutdown" when we ended it
    answered: bool = False
    stats: MediaStats | None = None
    connect_seconds: float = 0.0  # pjsua's connectDuration at the disconnect


@dataclass(frozen=True)
class DtmfReceived:
    call: str
    digit: str
    method: str  # "rfc4733" or "info"


@dataclass(frozen=True)
class TransferProgress:
    call: str
    code: int  # status of the transfer target's call, as NOTIFYed (100, 180, 200, 4xx...)
    reason: str
    final: bool


SipEvent = (
    RegistrationChanged
    | IncomingCall
    | CallRinging
    | CallAnswered
    | CallEnded
    | DtmfReceived
    | TransferProgress
)
