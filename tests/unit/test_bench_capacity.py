"""The rules bench/calls.py judges a level by: start-up vs steady underruns, clean, knee."""

from __future__ import annotations

from typing import Any

from bench.capacity import STARTUP_MS, UnderrunLog, is_clean, knee


def _level(calls: int, clean: bool) -> dict[str, Any]:
    return {"concurrent_calls": calls, "clean": clean}


def test_knee_is_the_largest_clean_level() -> None:
    """The knee is the largest level that is clean with every smaller level clean too."""
    levels = [_level(4, True), _level(8, True), _level(16, True), _level(48, True)]
    levels += [_level(64, False)]
    assert knee(levels) == 48, f"knee {knee(levels)} for clean 4-48 and unclean 64"


def test_knee_stops_at_the_first_unclean_level() -> None:
    """A clean level above an unclean one does not raise the knee; none clean gives None."""
    assert knee([_level(32, True), _level(4, True), _level(8, False), _level(16, True)]) == 4
    assert knee([_level(4, False), _level(8, True)]) is None


def _measured(**changes: Any) -> dict[str, Any]:
    level: dict[str, Any] = {
        "concurrent_calls": 8,
        "calls_up_in_window": 8,
        "calls_completed": 8,
        "sipp_exit_codes": [0, 0],
        "bad_frame_share": 0.0,
    }
    return {**level, **changes}


def test_a_level_is_clean_only_with_every_call_whole() -> None:
    """Clean needs every call up and completed, every SIPp exit 0 and few bad frames."""
    assert is_clean(_measured())
    assert is_clean(_measured(bad_frame_share=0.005))
    assert not is_clean(_measured(bad_frame_share=0.0051))
    assert not is_clean(_measured(calls_up_in_window=7))
    assert not is_clean(_measured(calls_completed=7))
    assert not is_clean(_measured(sipp_exit_codes=[0, 1]))


def test_underruns_in_the_start_up_are_counted_apart() -> None:
    """Underruns up to STARTUP_MS after the first echo are start-up, later ones steady state."""
    log = UnderrunLog()
    for ms, count in ((0, 0), (20, 1), (40, 2), (STARTUP_MS, 2), (STARTUP_MS + 20, 3)):
        log.sample(ms, count)
    log.sample(3000, 3)
    log.sample(3020, 4)
    assert (log.startup, log.total - log.startup) == (2, 2), log.times_ms
    assert log.times_ms == [20, 40, 520, 3020]


def test_underrun_times_are_bounded() -> None:
    """Only the first ``kept`` rises of the count keep their time; the count keeps going."""
    log = UnderrunLog(kept=3)
    for n in range(1, 10):
        log.sample(1000 * n, n)
    assert log.times_ms == [1000, 2000, 3000]
    assert (log.startup, log.total) == (0, 9)
