"""Rate limits: token buckets on an explicit clock, no I/O, no threads.

A bucket holds up to ``capacity`` tokens and gains ``rate`` tokens a second; a request takes
one. :class:`KeyedBuckets` keeps one bucket per key (a client address, a token's name) and
forgets buckets that have refilled, then the least recently used, so a scan from many
addresses cannot grow it without bound. Used for the API's ``POST /call`` limit
(:class:`RateLimiter`, on the supervisor's loop) and the SIP workers' per-source INVITE
limit (``sip.admission``, on the SIP thread); callers pass ``time.monotonic()``.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass


@dataclass
class TokenBucket:
    capacity: float
    rate: float  # tokens per second
    tokens: float
    updated: float  # the clock reading ``tokens`` was computed at

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        if capacity < 1 or rate <= 0:
            raise ValueError("a bucket needs capacity >= 1 and rate > 0")
        return cls(capacity, rate, capacity, now)

    def refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.updated)  # a clock that steps back adds nothing
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was there, else the seconds until one will be."""
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate

    def is_full(self, now: float) -> bool:
        self.refill(now)
        return self.tokens >= self.capacity


class KeyedBuckets:
    """One bucket per key, ``rate`` tokens a second in bursts of ``burst``; at most
    ``max_keys`` buckets are kept."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        TokenBucket.full(burst, rate, 0.0)  # the same checks as every bucket's
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: str, now: float) -> float:
        """0.0 when the request of ``key`` may go ahead, else the seconds until it may."""
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = TokenBucket.full(self.burst, self.rate, now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.max_keys:
            return
        # A refilled bucket is the same as none: forget those first, then the oldest ones.
        for key in [k for k, b in self._buckets.items() if b.is_full(now)]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)


class RateLimiter:
    """``per_minute`` requests a minute per key, in bursts of up to ``per_minute``; waits in
    whole seconds (as ``Retry-After`` gives them)."""

    def __init__(self, per_minute: int, max_keys: int = 10_000) -> None:
        if per_minute < 1 or max_keys < 1:
            raise ValueError("per_minute and max_keys must be at least 1")
        self.per_minute = per_minute
        self._buckets = KeyedBuckets(per_minute / 60, per_minute, max_keys)

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: str, now: float) -> int:
        """0 when the request of ``key`` may go ahead, else the whole seconds to wait (>= 1)."""
        wait = self._buckets.check(key, now)
        return 0 if wait == 0 else max(1, math.ceil(wait))
