"""What the SIP side raises: a flow sees every one as a :class:`~daemon.legs.leg.LegError`."""

from __future__ import annotations

from daemon.legs.leg import LegError


class SipError(LegError):
    """A SIP operation was refused (too many calls, bad target, unknown call...)."""


class NoFreeSlot(SipError):
    """No pjsua call slot is free now; one frees when a call ends and pjsua has torn it down."""


class SlotInTeardown(NoFreeSlot):
    """pjsua has no free call slot yet although this worker holds fewer calls than its limit.

    pjsua reports a hung-up call DISCONNECTED at once but keeps its slot until the INVITE
    transaction ends: the far end's 487 to our CANCEL, or pjsip's timers when it never
    answers (about 30 s behind a proxy whose branch went silent, 32 s with no reply at all).
    """
