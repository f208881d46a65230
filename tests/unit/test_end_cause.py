"""The recorded end cause of an inbound call we did not hang up, from its leg's Ended."""

from __future__ import annotations

from daemon.calls.inbound import end_cause
from daemon.legs.leg import Ended


def test_a_bye_from_the_caller_is_a_hang_up() -> None:
    """200 Normal call clearing (the caller's BYE), or no event at all, is "caller hung up"."""
    assert end_cause(Ended(200, "Normal call clearing", answered=True)) == ("caller hung up")
    assert end_cause(None) == "caller hung up"


def test_an_unacknowledged_answer_is_no_ack() -> None:
    """A 408 on a call never confirmed means our 200 OK was never ACKed."""
    event = Ended(408, "Request Timeout", answered=False)
    assert end_cause(event) == "no ACK from the caller: 408 Request Timeout"


def test_other_sip_failures_name_code_and_reason() -> None:
    """Any other final failure is recorded with its code and reason."""
    assert end_cause(Ended(408, "Request Timeout", answered=True)) == ("SIP 408 Request Timeout")
    assert end_cause(Ended(503, "Service Unavailable")) == ("SIP 503 Service Unavailable")
