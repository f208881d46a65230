"""Webhook signing and retry timing (pure)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random

import pytest

from api.webhooks import RETRY_WAITS, parse_retry_after, retry_delay, sign


def _independent_signature(secret: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = b"%s.%d.%s" % (msg_id.encode(), timestamp, body)
    return "v1," + base64.b64encode(hmac.new(secret, signed, hashlib.sha256).digest()).decode()


def test_signature_matches_an_independent_hmac() -> None:
    """Raw and whsec_-prefixed secrets sign id.timestamp.body with HMAC-SHA256."""
    body = b'{"call_id":"out-1-1","status":"completed"}'
    assert sign("s3cret", "msg_1", 1700000000, body) == _independent_signature(
        b"s3cret", "msg_1", 1700000000, body
    )
    key = b"\x01\x02\x03 key bytes"
    whsec = "whsec_" + base64.b64encode(key).decode()
    assert sign(whsec, "msg_2", 5, body) == _independent_signature(key, "msg_2", 5, body)


def test_schedule_and_giving_up() -> None:
    """Waits follow 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h within +-10 %, then stop."""
    rng = random.Random(3)
    waits = [retry_delay(n, rng=rng) for n in range(1, 8)]
    for got, expected in zip(waits, RETRY_WAITS, strict=True):
        assert got is not None
        assert expected * 0.9 <= got <= expected * 1.1
    assert retry_delay(8) is None


def test_retry_after_is_honoured_and_bounded() -> None:
    """Retry-After replaces the schedule's wait, capped at a day, but never revives a spent one."""
    assert retry_delay(1, retry_after=120) == 120
    assert retry_delay(1, retry_after=10**9) == 86400
    assert retry_delay(8, retry_after=1) is None
    assert parse_retry_after("30", now=0) == 30
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470) == pytest.approx(10)
    assert parse_retry_after("soon", now=0) is None
