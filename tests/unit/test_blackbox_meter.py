"""A call's black box from what its flow saw: turns, barge-ins, sessions, and the line."""

from __future__ import annotations

import numpy as np
import pytest

from daemon.calls import conversation_events as ce
from daemon.calls.blackbox_meter import BlackBoxMeter, VoiceMeter, line
from daemon.legs.leg import MediaStats
from tests.audio import tone


def test_turns_barge_ins_and_session_changes() -> None:
    """Each model end of speech pairs the caller's last voiced frame with the first pull of
    the next item the agent started; a turn the agent never answered is counted apart; p50,
    p95 and max come from the answered ones; barge-ins and replacements keep their figures."""
    meter = BlackBoxMeter()
    meter.answered(10.0)
    meter.connected(123.4)
    pulls = {"i1": 11.45, "i2": 14.62, "i4": 21.3}
    # turn 1: voice ends at 11.0, the model says so at 11.2, i1 first out at 11.45 (450 ms)
    meter.caller_stopped(11.0)
    meter.model_stopped(11.2)
    meter.item_started("i1", 11.3)
    meter.item_started("i1", 11.35)  # more of the same item
    # turn 2: the caller barges in over i1; voice ends at 14.1, i2 first out 520 ms later
    meter.note(ce.BargedIn("i1", stop_ms=24.3, truncated_ms=1480, cancelled=True), 13.0)
    meter.caller_stopped(14.1)
    meter.model_stopped(14.15)  # the model's report came before the daemon's VAD said so
    meter.item_started("i2", 14.3)
    # turn 3: never answered (the session dropped), replaced on a reconnect
    meter.caller_stopped(17.0)
    meter.model_stopped(17.4)
    meter.note(ce.SessionNote("replaced", "reconnect"), 18.0)
    # turn 4: answered after 300 ms, then a rotation
    meter.caller_stopped(21.0)
    meter.model_stopped(21.1)
    meter.item_started("i4", 21.2)
    meter.note(ce.SessionNote("replaced", "rotation"), 30.0)
    box = meter.black_box(None, 8000, 25.5, pulls.get)
    latencies = [turn["latency_ms"] for turn in box["turns"]]
    print(f"turn latencies {latencies}, summary {box['turn_latency_ms']}")
    assert latencies == [450.0, 520.0, None, 300.0], box["turns"]
    assert [turn["item"] for turn in box["turns"]] == ["i1", "i2", None, "i4"]
    assert box["turns"][0] == {
        "at_s": 1.2,
        "caller_end_s": 1.0,
        "first_audio_s": 1.45,
        "latency_ms": 450.0,
        "item": "i1",
    }
    assert box["turns"][2]["caller_end_s"] == 7.0
    summary = box["turn_latency_ms"]
    assert (summary["count"], summary["unanswered"]) == (3, 1), summary
    assert (summary["p50"], summary["max"]) == (450.0, 520.0), summary
    assert summary["p95"] == pytest.approx(513.0), summary
    assert box["barge_ins"] == [
        {"at_s": 3.0, "stop_ms": 24.3, "truncated_at_ms": 1480.0, "cancelled": True}
    ]
    assert box["model"] == {
        "connect_ms": 123.4,
        "reconnects": 1,
        "replacements": [
            {"at_s": 8.0, "reason": "reconnect"},
            {"at_s": 20.0, "reason": "rotation"},
        ],
        "failures": [],
        "failovers": [],
    }
    assert box["rtp"] is None
    assert box["mos"] is None
    assert box["connect_seconds"] == 25.5
    assert box["version"] == 1


def test_a_failover_is_kept_with_when_and_why() -> None:
    """A failover at connect is at 0 s (before the answer, too); one mid-call at its time
    since the answer; each names its phase, kind, error and the engine it went to."""
    meter = BlackBoxMeter()
    assert meter.failed_over("connect", "HTTP 503 on connect", "connect", None) == 0.0
    meter.answered(10.0)
    assert meter.failed_over("closed", "1006 no close frame", "session", 14.25) == 4.25
    box = meter.black_box(None, 8000, 20.0, lambda item: None)
    assert box["model"]["failovers"] == [
        {
            "at_s": 0.0,
            "phase": "connect",
            "kind": "connect",
            "error": "HTTP 503 on connect",
            "to": "local",
        },
        {
            "at_s": 4.25,
            "phase": "session",
            "kind": "closed",
            "error": "1006 no close frame",
            "to": "local",
        },
    ]


def test_the_line_section_rates_what_each_side_heard() -> None:
    """5 % of RTP lost on the way in lowers ``mos.rx`` to about 3.86 at 60 ms one way; with
    no receiver report from the peer ``mos.tx`` is null, and no RTT sample gives null."""
    stats = MediaStats(
        rx_packets=190,
        rx_lost=10,
        rx_jitter_ms=1.0,
        tx_packets=200,
        uplink_frames=200,
        uplink_dropped=0,
        callback_errors=0,
        playout_underruns=0,
        jb_avg_delay_ms=40.0,
        codec="PCMU",
    )
    box = line(stats)
    assert box["rtp"] is not None
    assert box["mos"] is not None
    assert box["rtp"]["rx"]["loss_pct"] == 5.0
    assert box["rtp"]["rtt_ms"] is None
    assert box["mos"]["one_way_ms"] == 60.0
    assert box["mos"]["rx"] == pytest.approx(3.863, abs=0.001), box["mos"]
    assert box["mos"]["tx"] is None
    assert box["rtp"]["tx"]["loss_pct_reported"] is None
    reported = line(MediaStats(**{**stats.__dict__, "tx_reports": 2, "tx_lost_reported": 0}))
    assert reported["mos"] is not None
    assert reported["mos"]["tx"] == pytest.approx(4.38, abs=0.01)


def test_the_voice_meter_reports_the_arrival_of_the_last_voiced_frame() -> None:
    """A tone of 1 s then silence: the end of speech is reported with the stamp of a frame
    within webrtcvad's tail (under 200 ms) after the tone's last frame."""
    ends: list[float] = []
    meter = VoiceMeter(8000, ends.append)
    audio = np.concatenate([tone(440, 8000, 1.0), np.zeros(8000, dtype=np.int16)])
    for n in range(len(audio) // 160):
        meter.feed(100.0 + n * 0.02, audio[160 * n : 160 * (n + 1)].tobytes())
    assert len(ends) == 1, ends
    assert 100.98 <= ends[0] <= 100.98 + 0.2, ends
