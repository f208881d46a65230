"""The SIP layer's pure parts: retry backoff, dial targets, caller info parsing."""

from __future__ import annotations

import random

import pytest

from sip.registration import Backoff
from sip.target import request_uri
from sip.uri import display_name, headers, registrar_host, user_of
from tests.integration.conftest import worker_settings


def test_backoff_grows_to_the_cap_with_jitter_and_never_stops() -> None:
    """Delays double from 1 s to the cap, stay within +-20 %, and keep coming."""
    backoff = Backoff(initial=1.0, cap=10.0, jitter=0.2)
    rng = random.Random(1)
    delays = [backoff.next_delay(rng) for _ in range(1000)]
    assert 0.8 <= delays[0] <= 1.2
    assert 1.6 <= delays[1] <= 2.4
    assert all(8.0 <= d <= 12.0 for d in delays[4:])
    assert len(set(delays[4:20])) > 10  # jittered, not synchronised across workers
    backoff.reset()
    assert backoff.next_delay(rng) <= 1.2


@pytest.mark.parametrize(
    ("target", "uri"),
    [
        ("1001", "sip:1001@pbx.example"),
        ("+15551234", "sip:+15551234@pbx.example"),
        ("tel:+4930123", "sip:+4930123@pbx.example"),
        ("sip:alice@other.example:5070", "sip:alice@other.example:5070"),
        ("  1002 ", "sip:1002@pbx.example"),
    ],
)
def test_dial_targets(target: str, uri: str) -> None:
    """Extensions and numbers get the configured domain; SIP URIs pass through."""
    assert request_uri(target, "pbx.example") == uri


@pytest.mark.parametrize("target", ["", "10 01", "sip:", "<script>", "1001@evil"])
def test_bad_dial_targets_are_refused(target: str) -> None:
    """Anything else is a clear error, never a request to a surprising URI."""
    with pytest.raises(ValueError, match=r"neither an extension|has no host"):
        request_uri(target, "pbx.example")


def test_caller_info_parsing() -> None:
    """Display name, user and header fields come out of the INVITE as sent."""
    assert display_name('"Front Desk" <sip:1001@pbx>') == "Front Desk"
    assert display_name("Bob <sip:1002@pbx>") == "Bob"
    assert display_name("<sip:1003@pbx>") == ""
    assert user_of('"X" <sip:1001@pbx;transport=udp>') == "1001"
    message = "INVITE sip:1000@pbx SIP/2.0\r\nFrom: a\r\nX-Case: 42\r\nVia: 1\r\nVia: 2\r\n\r\nv=0"
    assert headers(message) == {"from": "a", "x-case": "42", "via": "1"}


def test_domain_defaults_to_the_registrar_host() -> None:
    """With no sip.domain the registrar's host is used (port and parameters dropped)."""
    settings = worker_settings(None, registrar="sip:pbx.example:5060;transport=udp")
    assert registrar_host(settings) == "pbx.example"
    assert registrar_host(worker_settings(None, registrar="sip:[::1]:5160")) == "[::1]"
    assert registrar_host(worker_settings(None, registrar="sip:ext@10.0.0.5")) == "10.0.0.5"
    assert registrar_host(worker_settings(None)) == ""
