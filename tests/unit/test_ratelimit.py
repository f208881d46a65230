"""The token buckets behind the per-client rate limit, on an explicit clock."""

from __future__ import annotations

import pytest

from daemon.ratelimit import RateLimiter, TokenBucket


def test_a_bucket_gives_its_burst_then_one_token_per_interval() -> None:
    """A full bucket of 3 at 1 token/s serves 3 at once, then the 4th waits exactly 1 s."""
    bucket = TokenBucket.full(3, 1.0, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(1.0)
    assert bucket.take(100.5) == pytest.approx(0.5)
    assert bucket.take(101.0) == 0.0


def test_a_bucket_never_holds_more_than_its_capacity() -> None:
    """An hour idle refills a bucket of 2 to 2 tokens, not 3,600."""
    bucket = TokenBucket.full(2, 1.0, now=0.0)
    bucket.take(0.0)
    bucket.take(0.0)
    assert [bucket.take(3600.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take(3600.0) > 0


def test_a_clock_stepping_back_adds_no_tokens() -> None:
    """A reading earlier than the last one leaves the bucket as it was."""
    bucket = TokenBucket.full(1, 1.0, now=50.0)
    assert bucket.take(50.0) == 0.0
    assert bucket.take(10.0) == pytest.approx(1.0)


def test_a_bucket_needs_room_and_a_rate() -> None:
    """Capacity below 1 or a rate of 0 is refused."""
    with pytest.raises(ValueError, match="capacity"):
        TokenBucket.full(0.5, 1.0, now=0.0)
    with pytest.raises(ValueError, match="rate"):
        TokenBucket.full(1, 0.0, now=0.0)


def test_the_limiter_counts_each_key_on_its_own() -> None:
    """With 6 a minute, a 7th request of one key waits 10 s; another key is unaffected."""
    limiter = RateLimiter(6)
    assert [limiter.check("crm", 0.0) for _ in range(6)] == [0] * 6
    assert limiter.check("crm", 0.0) == 10
    assert limiter.check("billing", 0.0) == 0
    assert limiter.check("crm", 10.0) == 0
    assert limiter.check("crm", 10.0) == 10


def test_the_wait_is_rounded_up_to_whole_seconds() -> None:
    """A wait of 0.2 s is announced as 1 s (Retry-After counts whole seconds)."""
    limiter = RateLimiter(60)
    for _ in range(60):
        limiter.check("a", 0.0)
    assert limiter.check("a", 0.8) == 1


def test_the_limiter_stays_bounded_under_many_keys() -> None:
    """10,000 addresses leave at most max_keys buckets, forgetting refilled ones first."""
    limiter = RateLimiter(60, max_keys=100)
    limiter.check("busy", 0.0)  # one token short of full for a second
    for n in range(10_000):
        limiter.check(f"10.0.{n // 256}.{n % 256}", 0.5)
    assert len(limiter) == 100
    for _ in range(59):
        limiter.check("steady", 1000.0)
    assert limiter.check("steady", 1000.0) == 0
    assert limiter.check("steady", 1000.0) == 1
