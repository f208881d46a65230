"""Call legs: what a call flow holds of a call (:mod:`daemon.legs.leg`), its media, and an
in-memory network of them for tests (:mod:`daemon.legs.memory`).

A browser call's leg is :mod:`daemon.legs.webrtc`; it is not imported here, as it loads
aiortc, which only the web worker needs."""

from daemon.legs.leg import (
    Answered,
    CallInfo,
    CallLeg,
    Dialer,
    Dtmf,
    Ended,
    LegError,
    LegEvent,
    MediaStats,
    Ringing,
    TransferProgress,
)
from daemon.legs.media import Clock, LegMedia, MonotonicClock

__all__ = [
    "Answered",
    "CallInfo",
    "CallLeg",
    "Clock",
    "Dialer",
    "Dtmf",
    "Ended",
    "LegError",
    "LegEvent",
    "LegMedia",
    "MediaStats",
    "MonotonicClock",
    "Ringing",
    "TransferProgress",
]
