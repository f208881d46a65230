"""The /metrics registry: today's gauges, the counters and histograms fed by finished calls."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prometheus_client import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from api.app import HealthReport
from daemon.blackbox import RecordingInfo
from daemon.metrics import END_CAUSES, Metrics, end_cause_label
from daemon.observe import FinishedCall
from daemon.store import Store
from sip.events import RegistrationChanged

HEALTH = HealthReport(
    status="healthy",
    sip_registered=True,
    version="1.0",
    uptime_seconds=1.0,
    active_calls=2,
    queued_calls=7,
    workers=[
        {"index": 0, "pid": None, "up": True, "restarts": 1},
        {"index": 1, "pid": None, "up": False, "restarts": 2},
    ],
)

REFUSED_HELP = (
    "INVITEs refused before a call slot, by reason: forbidden (403, sip.allow_from), "
    "not_found (404, another user), rate_limited (503, sip.invite_rate), bad_request "
    "(400, Content-Length)."
)


def _metrics(
    calls: dict[str, int] | None = None, webhooks: dict[str, int] | None = None
) -> Metrics:
    return Metrics(lambda: HEALTH, lambda: calls or {}, lambda: webhooks or {})


def _scrape(metrics: Metrics, refused: dict[str, int] | None = None) -> list[Metric]:
    """The exposition as the Prometheus text parser reads it."""
    return list(text_string_to_metric_families(metrics.exposition(refused or {}).decode()))


def _samples(families: list[Metric], name: str | None = None) -> list[Sample]:
    return [s for f in families for s in f.samples if name is None or s.name == name]


def _value(families: list[Metric], sample: str, **labels: str) -> float:
    """The value of the one sample named ``sample`` that has ``labels``."""
    found = [
        s.value
        for s in _samples(families, sample)
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (sample, labels, _samples(families, sample))
    return float(found[0])


def test_todays_gauges_keep_their_names_help_and_values() -> None:
    """The families served before the registry keep their names, types, HELP and values
    (workers summed, labels per status, state and reason), next to the new counters and
    histograms, and no ``_created`` series is exposed."""
    metrics = _metrics(calls={"completed": 3, "busy": 1}, webhooks={"pending": 2, "delivered": 5})
    families = _scrape(metrics, refused={"rate_limited": 1, "forbidden": 4})
    kinds = {(f.name, f.type): f.documentation for f in families}
    expected = {
        ("sipai_sip_registered", "gauge"): "1 while at least one worker is registered.",
        ("sipai_workers_up", "gauge"): "SIP worker processes up.",
        ("sipai_worker_restarts", "counter"): "SIP worker restarts.",
        ("sipai_active_calls", "gauge"): "Calls up now.",
        ("sipai_queued_calls", "gauge"): "Outbound calls waiting for a slot.",
        ("sipai_calls", "gauge"): "Stored outbound calls by status.",
        ("sipai_sip_invites_refused", "counter"): REFUSED_HELP,
        ("sipai_webhooks", "gauge"): "Webhooks by delivery state.",
    }
    for key, documentation in expected.items():
        assert kinds.get(key) == documentation, key
    figures = {
        ("sipai_sip_registered", ()): 1,
        ("sipai_workers_up", ()): 1,
        ("sipai_worker_restarts_total", ()): 3,
        ("sipai_active_calls", ()): 2,
        ("sipai_queued_calls", ()): 7,
        ("sipai_calls", (("status", "completed"),)): 3,
        ("sipai_calls", (("status", "busy"),)): 1,
        ("sipai_sip_invites_refused_total", (("reason", "forbidden"),)): 4,
        ("sipai_sip_invites_refused_total", (("reason", "rate_limited"),)): 1,
        ("sipai_webhooks", (("state", "pending"),)): 2,
        ("sipai_webhooks", (("state", "delivered"),)): 5,
    }
    for (sample, labels), value in figures.items():
        assert _value(families, sample, **dict(labels)) == value, (sample, labels)
    assert ("sipai_calls", "counter") in kinds
    assert ("sipai_turn_latency_seconds", "histogram") in kinds
    assert ("process_resident_memory_bytes", "gauge") in kinds
    created = [s.name for s in _samples(families) if s.name.endswith("_created")]
    assert created == [], created


BLACK_BOX: dict[str, Any] = {
    "version": 1,
    "codec": "PCMU",
    "rate": 8000,
    "rtp": {
        "rx": {
            "packets": 200,
            "lost": 10,
            "loss_pct": 4.76,
            "discarded": 0,
            "duplicates": 0,
            "reordered": 0,
            "jitter_ms_mean": 3.0,
            "jitter_ms_max": 9.0,
        },
        "tx": {
            "packets": 210,
            "lost_reported": 0,
            "loss_pct_reported": None,
            "jitter_ms_reported": None,
            "reports": 0,  # no RTCP report from the far end: the tx side is not observed
        },
        "rtt_ms": None,
        "jitter_buffer": {
            "avg_delay_ms": 40.0,
            "max_delay_ms": 60.0,
            "lost": 10,
            "discarded": 0,
            "empty": 3,
        },
    },
    "mos": {"rx": 3.86, "tx": None, "r_rx": 75.98, "r_tx": None, "one_way_ms": 60.0},
    "turns": [
        {"at_s": 2.0, "caller_end_s": 1.9, "first_audio_s": 2.3, "latency_ms": 400.0},
        {"at_s": 6.0, "caller_end_s": 5.9, "first_audio_s": 7.1, "latency_ms": 1200.0},
        {"at_s": 9.0, "caller_end_s": 8.9, "first_audio_s": None, "latency_ms": None},
    ],
    "barge_ins": [{"at_s": 4.0, "stop_ms": 15.0, "truncated_at_ms": 900.0, "cancelled": True}],
    "model": {
        "connect_ms": 120.0,
        "reconnects": 1,
        "replacements": [{"at_s": 5.0, "reason": "reconnect"}],
        "failures": [],
    },
}


def test_a_finished_call_feeds_counters_and_histograms() -> None:
    """A finished inbound call counts once by direction, status and end cause, and its black
    box feeds the histograms: each answered turn's latency, the barge-in's stop time, the
    received jitter, loss and MOS (the unreported send side observes nothing)."""
    metrics = _metrics()
    recording = RecordingInfo("/r/in-1.wav", 12.0, 384044, "ab" * 32, True, 0, 8000)
    metrics.call_finished(
        FinishedCall("in-1", "inbound", "completed", "caller hung up", BLACK_BOX, recording)
    )
    metrics.call_finished(FinishedCall("in-2", "web", "completed", "end_call"))
    f = _scrape(metrics)
    calls = {"direction": "inbound", "status": "completed", "end_cause": "caller_hangup"}
    assert _value(f, "sipai_calls_total", **calls) == 1
    web = {"direction": "web", "status": "completed", "end_cause": "end_call"}
    assert _value(f, "sipai_calls_total", **web) == 1
    assert _value(f, "sipai_turn_latency_seconds_count") == 2
    turns = "sipai_turn_latency_seconds"
    assert _value(f, f"{turns}_bucket", le="0.3") == 0
    assert _value(f, f"{turns}_bucket", le="0.5") == 1
    assert _value(f, f"{turns}_bucket", le="1.5") == 2
    assert _value(f, f"{turns}_sum") == 1.6
    stop = "sipai_barge_in_stop_seconds"
    assert (_value(f, f"{stop}_bucket", le="0.01"), _value(f, f"{stop}_bucket", le="0.02")) == (
        0,
        1,
    )
    assert _value(f, "sipai_barge_ins_total") == 1
    assert _value(f, "sipai_model_reconnects_total") == 1
    replacements = "sipai_model_session_replacements"
    assert _value(f, f"{replacements}_total", reason="reconnect") == 1
    jitter = "sipai_call_jitter_seconds"
    assert _value(f, f"{jitter}_bucket", direction="rx", le="0.002") == 0
    assert _value(f, f"{jitter}_bucket", direction="rx", le="0.005") == 1
    loss = "sipai_call_loss_ratio"
    assert _value(f, f"{loss}_bucket", direction="rx", le="0.03") == 0
    assert _value(f, f"{loss}_bucket", direction="rx", le="0.05") == 1
    mos = "sipai_call_mos"
    assert _value(f, f"{mos}_bucket", direction="rx", le="3.8") == 0
    assert _value(f, f"{mos}_bucket", direction="rx", le="4.0") == 1
    tx = [s for s in _samples(f) if s.labels.get("direction") == "tx"]
    assert tx == [], tx
    assert _value(f, "sipai_recordings_total", complete="true") == 1


def test_webhooks_registrations_and_model_failures_count_by_closed_labels() -> None:
    """Webhook attempts count by kind and outcome (delivery time observed), failed REGISTERs
    by SIP code (other codes and none as ``other``), model failures by phase and kind; an
    outbound call's post-to-INVITE time comes from its record and result."""
    metrics = _metrics()
    metrics.webhook_attempted("result", "pending", 100.0, 100.2)
    metrics.webhook_attempted("result", "delivered", 100.0, 105.5)
    metrics.webhook_attempted("inbound.ended", "gone", 100.0, 100.1)
    metrics.webhook_attempted("call.progress", "abandoned", 100.0, 105.0)
    metrics.registration_changed(RegistrationChanged(False, 401, "Unauthorized", retry_in=30.0))
    metrics.registration_changed(RegistrationChanged(False, 0, "transport", retry_in=1.0))
    metrics.registration_changed(RegistrationChanged(False, 200, "stopping"))  # no retry due
    metrics.registration_changed(RegistrationChanged(True, 200, "OK"))
    metrics.on_inbound(0, "agent_failed", {"call": "c1", "kind": "auth", "phase": "connect"})
    metrics.on_inbound(0, "agent_failed", {"call": "c2", "kind": "closed", "phase": "session"})
    metrics.on_inbound(0, "agent_failed", {"call": "c3", "kind": "???"})
    metrics.on_inbound(0, "transcript", {"call": "c1", "role": "user", "text": "hi"})
    metrics.outbound_result("out-1", message_played=False)
    box = {"outbound": {"invite_at": 1000.04, "answer_to_first_audio_ms": 80.0}}
    metrics.call_finished(
        FinishedCall("out-1", "outbound", "completed", "completed", box, created_at=1000.0)
    )
    f = _scrape(metrics)
    assert _value(f, "sipai_webhook_retries_total", kind="result") == 1
    assert _value(f, "sipai_webhooks_delivered_total", kind="result") == 1
    delivery = "sipai_webhook_delivery_seconds"
    assert _value(f, f"{delivery}_bucket", kind="result", le="5.0") == 0
    assert _value(f, f"{delivery}_bucket", kind="result", le="10.0") == 1
    abandoned = "sipai_webhooks_abandoned"
    assert _value(f, f"{abandoned}_total", kind="inbound.ended", reason="gone") == 1
    assert _value(f, f"{abandoned}_total", kind="call.progress", reason="exhausted") == 1
    registration = "sipai_sip_registration_failures"
    assert _value(f, f"{registration}_total", code="401") == 1
    assert _value(f, f"{registration}_total", code="other") == 1
    assert len(_samples(f, f"{registration}_total")) == 2, _samples(f, f"{registration}_total")
    connect, session = "sipai_model_connect_failures", "sipai_model_session_failures"
    assert _value(f, f"{connect}_total", kind="auth") == 1
    assert _value(f, f"{session}_total", kind="closed") == 1
    assert _value(f, f"{session}_total", kind="other") == 1
    calls = {"direction": "outbound", "status": "completed", "end_cause": "callee_hangup"}
    assert _value(f, "sipai_calls_total", **calls) == 1
    post = "sipai_outbound_post_to_invite_seconds"
    assert _value(f, f"{post}_bucket", le="0.025") == 0
    assert _value(f, f"{post}_bucket", le="0.05") == 1
    answer = "sipai_outbound_answer_to_first_audio_seconds"
    assert _value(f, f"{answer}_bucket", le="0.1") == 1


def test_end_causes_map_to_a_closed_set() -> None:
    """Every end cause an inbound agent or an outbound result can carry folds into one label
    of the closed set of its direction; an unknown text is ``error`` or ``failed``."""
    inbound = {
        ("completed", "caller hung up"): "caller_hangup",
        ("completed", ""): "caller_hangup",  # gone before the answer
        ("failed", ""): "model_failure",  # the model could not be reached: apology or 503
        ("completed", "end_call"): "end_call",
        ("completed", "transferred"): "transferred",
        ("failed", "model rate_limit: 429 Too Many Requests"): "model_failure",
        ("completed", "no ACK from the caller"): "no_ack",
        ("completed", "no ACK from the caller: 408 Request Timeout"): "no_ack",
        ("completed", "SIP 503 Service Unavailable"): "sip_error",
        ("failed", "error: boom"): "error",
        ("failed", "interrupted: the daemon stopped during the call"): "interrupted",
        ("failed", "worker_died: SIP worker 0 died (exit code -9)"): "worker_died",
        ("completed", "something new"): "error",
    }
    for (status, cause), label in inbound.items():
        assert end_cause_label("inbound", status, cause) == label, cause
    outbound = {
        ("completed", "completed", True): "completed",
        ("completed", "completed", None): "completed",
        ("completed", "speech recognition failed: x", True): "completed",
        ("completed", "completed", False): "callee_hangup",
        ("busy", "busy", None): "busy",
        ("no_answer", "no_answer", None): "no_answer",
        ("failed", "SIP 603 Decline", None): "declined",
        ("failed", "SIP 0 Invalid URI", None): "dial_failed",
        ("failed", "no SIP response from sip:1001@127.0.0.1", None): "dial_failed",
        ("failed", "SIP 404 Not Found", None): "failed",
        ("failed", "SIP worker 0 died during the call", None): "failed",
        ("failed", "internal error: boom", None): "failed",
        ("queued", "", None): "failed",
    }
    for (status, cause, played), label in outbound.items():
        assert end_cause_label("outbound", status, cause, message_played=played) == label, cause
    assert set(inbound.values()) == set(END_CAUSES["inbound"])
    assert set(outbound.values()) == set(END_CAUSES["outbound"])


async def test_the_scrape_answers_from_memory_with_the_store_closed(tmp_path: Path) -> None:
    """Stored calls and webhooks by status come from the store's counts in memory: after the
    store is closed a scrape still shows them (a table scan would raise)."""
    store = Store(tmp_path / "sipai.db")
    await store.open()
    for n in range(3):
        request = {"extension": "1001", "message": "hi", "callback_url": "http://127.0.0.1:9/"}
        await store.insert_call(f"c{n}", request if n == 0 else request | {"callback_url": None})
    await store.finish_call("c0", "completed", {"call_id": "c0", "status": "completed"})
    await store.finish_call("c1", "busy", {"call_id": "c1", "status": "busy"})
    await store.close()
    metrics = Metrics(lambda: HEALTH, store.status_counts, store.webhook_state_counts)
    f = _scrape(metrics)
    calls = {s.labels["status"]: s.value for s in _samples(f, "sipai_calls")}
    assert calls == {"completed": 1, "busy": 1, "queued": 1}, calls
    webhooks = {s.labels["state"]: s.value for s in _samples(f, "sipai_webhooks")}
    assert webhooks == {"pending": 1}, webhooks


def test_failovers_count_by_phase_and_as_model_failures() -> None:
    """A failover to the embedded engine counts by phase, and as the model failure it is (at
    connect or in the session, by kind); a failover replacement counts by its reason."""
    metrics = _metrics()
    connect = {"call": "c1", "kind": "connect", "error": "503", "phase": "connect"}
    metrics.on_inbound(0, "agent_failover", connect)
    session = {"call": "c2", "kind": "closed", "error": "1006", "phase": "session"}
    metrics.on_inbound(0, "agent_failover", session)
    box = {"model": {"reconnects": 0, "replacements": [{"at_s": 3.0, "reason": "failover"}]}}
    metrics.call_finished(FinishedCall("in-2", "inbound", "completed", "caller hung up", box))
    f = _scrape(metrics)
    assert _value(f, "sipai_model_failovers_total", phase="connect") == 1
    assert _value(f, "sipai_model_failovers_total", phase="session") == 1
    assert _value(f, "sipai_model_connect_failures_total", kind="connect") == 1
    assert _value(f, "sipai_model_session_failures_total", kind="closed") == 1
    replaced = "sipai_model_session_replacements_total"
    assert _value(f, replaced, reason="failover") == 1
