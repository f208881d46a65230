"""Registration retry policy: capped, jittered exponential backoff that never gives up.

Pure: the SIP thread asks :meth:`Backoff.next_delay` after each failed REGISTER and calls
:meth:`Backoff.reset` after a success.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass
class Backoff:
    initial: float = 1.0
    cap: float = 10.0
    factor: float = 2.0
    jitter: float = 0.2  # +- this fraction of the delay
    failures: int = 0

    def next_delay(self, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt; grows until ``cap``, never stops."""
        base = min(self.cap, self.initial * self.factor ** min(self.failures, 32))
        self.failures += 1
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.1, base * (1 + spread))

    def reset(self) -> None:
        self.failures = 0
