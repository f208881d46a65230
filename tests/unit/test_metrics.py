"""The /metrics exposition, rendered from what the supervisor counts."""

from __future__ import annotations

from api.app import HealthReport
from daemon.metrics import render

EXPECTED = """\
# HELP sipai_sip_registered 1 while at least one worker is registered.
# TYPE sipai_sip_registered gauge
sipai_sip_registered 1
# HELP sipai_workers_up SIP worker processes up.
# TYPE sipai_workers_up gauge
sipai_workers_up 1
# HELP sipai_worker_restarts_total SIP worker restarts.
# TYPE sipai_worker_restarts_total counter
sipai_worker_restarts_total 3
# HELP sipai_active_calls Calls up now.
# TYPE sipai_active_calls gauge
sipai_active_calls 2
# HELP sipai_queued_calls Outbound calls waiting for a slot.
# TYPE sipai_queued_calls gauge
sipai_queued_calls 7
# HELP sipai_calls Stored outbound calls by status.
# TYPE sipai_calls gauge
sipai_calls{status="busy"} 1
sipai_calls{status="completed"} 3
# HELP sipai_sip_invites_refused_total INVITEs refused before a call slot, by reason: \
forbidden (403, sip.allow_from), not_found (404, another user), rate_limited (503, \
sip.invite_rate), bad_request (400, Content-Length).
# TYPE sipai_sip_invites_refused_total counter
sipai_sip_invites_refused_total{reason="forbidden"} 4
sipai_sip_invites_refused_total{reason="rate_limited"} 1
# HELP sipai_webhooks Webhooks by delivery state.
# TYPE sipai_webhooks gauge
sipai_webhooks{state="delivered"} 5
sipai_webhooks{state="pending"} 2
"""


def test_the_exposition_is_the_documented_text() -> None:
    """Gauges and counters come out with their HELP and TYPE lines, labels sorted, workers
    summed (up, restarts), byte for byte as the supervisor has always served them."""
    health = HealthReport(
        status="healthy",
        sip_registered=True,
        version="1.0",
        uptime_seconds=1.0,
        active_calls=2,
        queued_calls=7,
        workers=[{"up": True, "restarts": 1}, {"up": False, "restarts": 2}],
    )
    text = render(
        health,
        calls={"completed": 3, "busy": 1},
        refused_invites={"rate_limited": 1, "forbidden": 4},
        webhooks={"pending": 2, "delivered": 5},
    )
    assert text == EXPECTED
