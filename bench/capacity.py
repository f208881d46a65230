"""How ``bench.calls`` judges a level: start-up and steady-state underruns, clean, the knee.

Pure rules, no I/O: ``bench.policies`` feeds :class:`UnderrunLog` from each call, and
``bench.calls`` applies :func:`is_clean` and :func:`knee` to the levels it measured.
"""

from __future__ import annotations

from typing import Any

# A level is clean when late + missing frames + steady-state underruns stay within this share
# of the frames its calls should have carried.
KNEE_SHARE = 0.005
# Start-up of a call's playout: the first STARTUP_MS after the first echoed audio was queued.
# Underruns in it (the echo's first frames arrive just in time, with nothing queued behind
# them) are counted apart from those after it (steady state). Before the first echoed audio
# the playout buffer counts no underruns at all (nothing is streaming yet).
STARTUP_MS = 500.0
UNDERRUN_TIMES_KEPT = 20


class UnderrunLog:
    """A call's playout underruns, split into start-up and steady state.

    :meth:`sample` is called with the playout buffer's underrun count and the time since the
    first echoed audio was queued (ms), once per uplink frame: the count last sampled within
    ``startup_ms`` is the start-up's; whatever the call's final count adds to it is steady
    state's.
    """

    def __init__(self, startup_ms: float = STARTUP_MS, kept: int = UNDERRUN_TIMES_KEPT) -> None:
        self.startup_ms = startup_ms
        self.startup = 0
        self.total = 0
        self.times_ms: list[int] = []  # when the count rose (first ``kept`` rises)
        self._kept = kept

    def sample(self, since_echo_ms: float, underruns: int) -> None:
        if since_echo_ms <= self.startup_ms:
            self.startup = underruns
        if underruns > self.total and len(self.times_ms) < self._kept:
            self.times_ms.append(round(since_echo_ms))
        self.total = max(self.total, underruns)


def is_clean(level: dict[str, Any]) -> bool:
    """Every call up and completed, every SIPp exit 0, bad frames within ``KNEE_SHARE``."""
    calls = level["concurrent_calls"]
    return bool(
        level["calls_up_in_window"] == calls
        and level["calls_completed"] == calls
        and all(code == 0 for code in level["sipp_exit_codes"])
        and level["bad_frame_share"] <= KNEE_SHARE
    )


def knee(levels: list[dict[str, Any]]) -> int | None:
    """The largest level that is clean with every smaller level clean too (None: not even
    the smallest)."""
    best = None
    for level in sorted(levels, key=lambda r: int(r["concurrent_calls"])):
        if not level["clean"]:
            break
        best = int(level["concurrent_calls"])
    return best
