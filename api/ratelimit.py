"""Per-client request rate limits: token buckets on an explicit clock, no I/O.

A bucket holds up to ``capacity`` tokens and gains ``rate`` tokens a second; a request takes
one. :class:`RateLimiter` keeps one bucket per client key (a token's name or a client
address) and forgets buckets that have refilled, so a scan from many addresses cannot grow it
without bound. Both run on the supervisor's loop only; callers pass ``time.monotonic()``.
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


class RateLimiter:
    """``per_minute`` requests a minute per key, in bursts of up to ``per_minute``."""

    def __init__(self, per_minute: int, max_keys: int = 10_000) -> None:
        if per_minute < 1 or max_keys < 1:
            raise ValueError("per_minute and max_keys must be at least 1")
        self.per_minute = per_minute
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()  # least recently used first

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, key: str, now: float) -> int:
        """0 when the request of ``key`` may go ahead, else the whole seconds to wait (>= 1)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = TokenBucket.full(self.per_minute, self.per_minute / 60, now)
            self._buckets[key] = bucket
        else:
            self._buckets.move_to_end(key)
        wait = bucket.take(now)
        return 0 if wait == 0 else max(1, math.ceil(wait))

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.max_keys:
            return
        # A refilled bucket is the same as none: forget those first, then the oldest ones.
        for key in [k for k, b in self._buckets.items() if b.is_full(now)]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_keys:
            self._buckets.popitem(last=False)
