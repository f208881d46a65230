"""The Prometheus text exposition of ``/metrics``: pure rendering of what the supervisor counts."""

from __future__ import annotations

from collections.abc import Mapping

from api.app import HealthReport


def render(
    health: HealthReport,
    calls: Mapping[str, int],
    refused_invites: Mapping[str, int],
    webhooks: Mapping[str, int],
) -> str:
    """Calls (stored outbound calls by status), refused INVITEs by reason, webhooks by delivery
    state, and the SIP, worker and queue state of ``health``."""
    lines = [
        "# HELP sipai_sip_registered 1 while at least one worker is registered.",
        "# TYPE sipai_sip_registered gauge",
        f"sipai_sip_registered {int(health.sip_registered)}",
        "# HELP sipai_workers_up SIP worker processes up.",
        "# TYPE sipai_workers_up gauge",
        f"sipai_workers_up {sum(1 for w in health.workers if w['up'])}",
        "# HELP sipai_worker_restarts_total SIP worker restarts.",
        "# TYPE sipai_worker_restarts_total counter",
        f"sipai_worker_restarts_total {sum(w['restarts'] for w in health.workers)}",
        "# HELP sipai_active_calls Calls up now.",
        "# TYPE sipai_active_calls gauge",
        f"sipai_active_calls {health.active_calls}",
        "# HELP sipai_queued_calls Outbound calls waiting for a slot.",
        "# TYPE sipai_queued_calls gauge",
        f"sipai_queued_calls {health.queued_calls}",
        "# HELP sipai_calls Stored outbound calls by status.",
        "# TYPE sipai_calls gauge",
    ]
    lines += [f'sipai_calls{{status="{status}"}} {n}' for status, n in sorted(calls.items())]
    lines += [
        "# HELP sipai_sip_invites_refused_total INVITEs refused before a call slot, by "
        "reason: forbidden (403, sip.allow_from), not_found (404, another user), "
        "rate_limited (503, sip.invite_rate), bad_request (400, Content-Length).",
        "# TYPE sipai_sip_invites_refused_total counter",
    ]
    lines += [
        f'sipai_sip_invites_refused_total{{reason="{reason}"}} {count}'
        for reason, count in sorted(refused_invites.items())
    ]
    lines += [
        "# HELP sipai_webhooks Webhooks by delivery state.",
        "# TYPE sipai_webhooks gauge",
    ]
    lines += [
        f'sipai_webhooks{{state="{state}"}} {count}' for state, count in sorted(webhooks.items())
    ]
    return "\n".join(lines) + "\n"
