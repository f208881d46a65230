"""Benchmark scripts print one JSON object on stdout and nothing else (logs go to stderr).

Each test runs a script in a small, bounded configuration and checks only its output, never
its figures: a benchmark run is not a timed test.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.e2e


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_engine_bench_prints_only_json() -> None:
    """bench.engine (one turn, one paused utterance) prints its report alone on stdout, the
    engine's logs on stderr."""
    result = _bench("bench.engine", "--turns", "1", "--pauses", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)  # all of stdout, so any log line there fails this
    assert report["benchmark"] == "engine_reply_latency"
    assert report["turns"] == 1
    assert report["mid_sentence_pauses"]["utterances"] == 1
    assert set(report["mid_sentence_pauses"]) >= {"smart_turn", "silence"}
    assert "engine.turn" in result.stderr


def test_calls_bench_prints_only_json_with_its_fields() -> None:
    """bench.calls (4 calls of 4 s) prints only JSON: underruns split, clean, knee, PSS, RSS."""
    result = _bench("bench.calls", "--calls", "4", "--seconds", "4")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["benchmark"] == "concurrent_calls"
    assert report["call_seconds"] == 4.0
    for rule in ("knee_rule", "clean_rule", "startup_rule", "pss_rule"):
        assert report[rule], rule
    [level] = report["levels"]
    print(json.dumps(level))
    assert (level["concurrent_calls"], level["workers"]) == (4, 1)
    assert level["calls_completed"] == 4, level
    for key in ("playout_underruns_startup", "playout_underruns_steady", "late_frames"):
        assert level[key] >= 0, key
    assert report["knee_concurrent_calls"] == (4 if level["clean"] else None), level
    [rss], [pss] = level["rss_mib_per_worker"], level["pss_mib_per_worker"]
    assert 0 < pss <= rss, level
    assert level["pss_mib_daemon"] == round(level["pss_mib_supervisor"] + pss, 1)


def test_invite_attacks_bench_prints_only_json() -> None:
    """bench.invite_attacks (without the 35 s un-ACKed part) prints its report alone on
    stdout, with the refusal counters of /metrics."""
    result = _bench("bench.invite_attacks", "--allow-from", "127.0.0.1", "--skip-unacked")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["benchmark"] == "invite_attacks"
    assert {"scanner_user", "other_host", "flood", "content_length"} <= report.keys()
    assert any('reason="forbidden"' in line for line in report["metrics"]), report["metrics"]
