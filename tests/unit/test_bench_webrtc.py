"""The placement rule of ``bench.webrtc``: where browser calls run, from the runs' figures."""

from __future__ import annotations

from typing import Any

from bench.webrtc import _decision


def _engine(alone: float, web_worker: float, supervisor: float, alone_after: float) -> Any:
    """One round and the last run with no browser call."""
    p99s = [("alone", alone), ("web_worker", web_worker), ("supervisor", supervisor)]
    runs = [{"placement": name, "p99": p99} for name, p99 in p99s]
    return {"runs": [*runs, {"placement": "alone", "p99": alone_after}]}


def _sip(up: list[float], down: list[float], cpu: list[float]) -> dict[str, Any]:
    return {"sip_uplink_ms_p99": up, "sip_downlink_ms_p99": down, "sip_cpu_percent_per_call": cpu}


QUIET_SIP = _sip([6.0, 6.5, 6.2], [19.0, 18.6, 19.2], [3.3, 3.7, 3.4])


def test_the_placement_that_slows_the_engine_path_less_is_chosen() -> None:
    """On the engine's loop browser calls add 2.5 ms p99, in a process of their own 0.6: that."""
    decision = _decision(_engine(1.2, 1.8, 3.7, 1.2), QUIET_SIP)
    assert decision["placement"] == "web_worker", decision
    assert decision["engine_path_p99_rise_ms"] == {"web_worker": 0.6, "supervisor": 2.5}


def test_a_tie_within_the_noise_keeps_browser_calls_in_their_own_process() -> None:
    """Rises 0.6 and 0.7 ms, the alone runs 0.3 ms apart: both pass, neither wins, web_worker."""
    decision = _decision(_engine(1.0, 1.75, 1.85, 1.3), QUIET_SIP)
    assert decision["engine_path_noise_ms"] == 0.3
    assert decision["passing"] == ["supervisor", "web_worker"], decision
    assert decision["placement"] == "web_worker", decision


def test_a_clearly_lighter_placement_that_passes_is_chosen() -> None:
    """The supervisor's loop slowed by 0.1 ms, a process of their own by 0.8 ms: supervisor."""
    assert _decision(_engine(1.2, 2.0, 1.3, 1.2), QUIET_SIP)["placement"] == "supervisor"


def test_no_placement_within_the_bound_decides_nothing() -> None:
    """Both placements add more than the 1 ms bound to the engine's path: undecided."""
    decision = _decision(_engine(1.2, 2.6, 3.7, 1.2), QUIET_SIP)
    assert (decision["passing"], decision["placement"]) == ([], "undecided"), decision


def test_sip_media_slowed_beyond_its_noise_refuses_the_placement() -> None:
    """SIP uplink p99 up 4 ms with browser calls (spread 0.2 ms): undecided; CPU up 2 points too."""
    for sip in (
        _sip([6.0, 10.1, 6.2], [19.0, 18.6, 19.2], [3.3, 3.7, 3.4]),
        _sip([6.0, 6.1, 6.2], [19.0, 18.6, 19.2], [3.3, 5.4, 3.4]),
    ):
        assert _decision(_engine(1.2, 1.8, 3.7, 1.2), sip)["placement"] == "undecided"


def test_without_the_sip_runs_nothing_is_decided() -> None:
    """The SIP calls' own media are part of the rule: no with_sip run, no placement."""
    assert _decision(_engine(1.2, 1.8, 3.7, 1.2), None)["placement"] == "undecided"


def test_the_medians_over_the_rounds_decide_not_one_lucky_run() -> None:
    """Three rounds, the supervisor lucky in one (1.1 ms): medians 2.3 and 3.7 pick web_worker."""
    rounds = [(1.3, 2.5, 4.1), (1.3, 2.3, 3.7), (1.2, 2.2, 1.1)]
    runs = [
        {"placement": name, "p99": p99}
        for round_ in rounds
        for name, p99 in zip(("alone", "web_worker", "supervisor"), round_, strict=True)
    ]
    engine = {"runs": [*runs, {"placement": "alone", "p99": 1.2}]}
    decision = _decision(engine, QUIET_SIP)
    assert decision["engine_path_p99_rise_ms"] == {"web_worker": 1.05, "supervisor": 2.45}
    assert decision["placement"] == "web_worker", decision
