"""The ``/metrics`` exposition: one prometheus_client registry, owned by the supervisor.

:class:`Metrics` holds the registry (never the library's global one) and is the supervisor's
:class:`~daemon.observe.CallObserver`: each finished call, webhook attempt, failed REGISTER and
failed model session counts there as it happens, on the supervisor's loop. The figures a call
measured in its worker (turn latency, jitter, loss, MOS...) arrive once, with the call's black
box at its end (no per-frame or periodic traffic from the workers).

What the daemon knows as a state (registration, workers up, calls up and queued, stored calls
and webhooks by status, INVITEs refused) is read at scrape time from memory only: the
supervisor's health report, the store's counts kept in memory, the refusal counts the route has
just asked the workers for. A scrape never scans a table. Each worker's CPU, memory and open
files come from ``/proc/<pid>``.

Every label value is from a closed set (a call's id, caller or URL never is one):
:func:`end_cause_label` folds a call's outcome into one of :data:`END_CAUSES`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from api.app import HealthReport
from daemon.observe import FinishedCall
from daemon.outbound import DECIDED, CallResult, CallRunner, Report
from sip.events import RegistrationChanged

INBOUND_END_CAUSES = (
    "caller_hangup",  # the caller hung up (or gave up before the answer)
    "end_call",  # the model ended the call (end_call tool)
    "transferred",  # the model transferred the call (REFER accepted)
    "model_failure",  # the model could not be reached, or its session failed
    "no_ack",  # our 200 OK was never acknowledged
    "sip_error",  # the call ended with a SIP error status
    "error",  # an error of ours, or a cause not known here
    "interrupted",  # the daemon stopped during the call
    "worker_died",  # the SIP worker holding the call died
)
OUTBOUND_END_CAUSES = (
    "completed",  # answered and the message played whole
    "callee_hangup",  # answered, hung up before the message was over
    "busy",
    "no_answer",
    "declined",  # 603 Decline
    "dial_failed",  # never reached the callee: no SIP response, or the INVITE not sent
    "failed",  # any other failure (a SIP error status, a worker lost...)
)
# a browser call ends as an inbound call does
END_CAUSES = {
    "inbound": INBOUND_END_CAUSES,
    "web": INBOUND_END_CAUSES,
    "outbound": OUTBOUND_END_CAUSES,
}

CALL_STATUSES = ("completed", "no_answer", "failed", "busy")
REGISTRATION_CODES = ("401", "403", "404", "408", "480", "500", "503")
WEBHOOK_KINDS = ("result", "inbound.message", "inbound.ended", "call.progress")
FAILURE_KINDS = ("auth", "rate_limit", "connect", "timeout", "closed", "protocol", "mismatch")
REPLACEMENT_REASONS = ("reconnect", "rotation", "failover")
FAILOVER_PHASES = ("connect", "session")

TURN_LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 8)
POST_TO_INVITE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
ANSWER_TO_AUDIO_BUCKETS = (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2)
WEBHOOK_DELIVERY_BUCKETS = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000,
)  # fmt: skip
BARGE_IN_STOP_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
JITTER_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
LOSS_BUCKETS = (0, 0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5)
MOS_BUCKETS = (1, 2, 2.5, 3, 3.5, 3.8, 4, 4.2, 4.4, 4.5)

REFUSED_HELP = (
    "INVITEs refused before a call slot, by reason: forbidden (403, sip.allow_from), "
    "not_found (404, another user), rate_limited (503, sip.invite_rate), bad_request "
    "(400, Content-Length)."
)


def end_cause_label(
    direction: str, status: str, cause: str = "", *, message_played: bool | None = None
) -> str:
    """One of :data:`END_CAUSES` for a finished call.

    Inbound, from the cause the agent recorded: "caller hung up", "end_call", "transferred",
    "model <kind>: ...", "no ACK from the caller...", "SIP <code> ...", "error: ...",
    "interrupted: ...", "worker_died: ..."; no cause at all is a model that could not be
    reached when the call failed, else a caller gone before the answer. Outbound, from the
    result's status and error ("SIP 603 Decline", "SIP 0 <why the INVITE was not sent>", "no
    SIP response from <target>") and whether the message played whole (None: not known,
    counted as played). Anything else is ``error`` (inbound) or ``failed`` (outbound)."""
    if direction == "outbound":
        return _outbound_cause(status, cause, message_played)
    if not cause:
        return "model_failure" if status == "failed" else "caller_hangup"
    if cause == "caller hung up":
        return "caller_hangup"
    if cause in ("end_call", "transferred"):
        return cause
    for prefix, label in (
        ("model ", "model_failure"),
        ("no ACK", "no_ack"),
        ("SIP ", "sip_error"),
        ("interrupted", "interrupted"),
        ("worker_died", "worker_died"),
    ):
        if cause.startswith(prefix):
            return label
    return "error"


def _outbound_cause(status: str, error: str, message_played: bool | None) -> str:
    if status == "completed":
        return "callee_hangup" if message_played is False else "completed"
    if status in ("busy", "no_answer"):
        return status
    if error.startswith("SIP 603"):
        return "declined"
    if error.startswith(("SIP 0 ", "no SIP response")):
        return "dial_failed"  # the INVITE could not be sent, or nothing answered it
    return "failed"


def _closed(value: object, allowed: Sequence[str], other: str = "other") -> str:
    text = str(value)
    return text if text in allowed else other


@dataclass
class ScrapeState:
    """What the state collector reads at scrape time (all of it in memory)."""

    health: Callable[[], HealthReport]
    calls: Callable[[], Mapping[str, int]]  # stored calls by status
    webhooks: Callable[[], Mapping[str, int]]  # outbox rows by delivery state
    refused: Mapping[str, int] = field(default_factory=dict)  # set just before each scrape


class StateCollector:
    """Today's gauges and the workers' counters, built afresh at each collect."""

    def __init__(self, state: ScrapeState) -> None:
        self._state = state

    def collect(self) -> Iterable[Metric]:
        state = self._state
        health = state.health()
        yield _gauge(
            "sipai_sip_registered",
            "1 while at least one worker is registered.",
            int(health.sip_registered),
        )
        yield _gauge(
            "sipai_workers_up",
            "SIP worker processes up.",
            sum(1 for w in health.workers if w["up"]),
        )
        restarts = CounterMetricFamily("sipai_worker_restarts", "SIP worker restarts.")
        restarts.add_metric([], sum(int(w["restarts"]) for w in health.workers))
        yield restarts
        yield _gauge("sipai_active_calls", "Calls up now.", health.active_calls)
        yield _gauge(
            "sipai_queued_calls", "Outbound calls waiting for a slot.", health.queued_calls
        )
        calls = GaugeMetricFamily(
            "sipai_calls", "Stored outbound calls by status.", labels=["status"]
        )
        for status, n in sorted(state.calls().items()):
            calls.add_metric([status], n)
        yield calls
        refused = CounterMetricFamily("sipai_sip_invites_refused", REFUSED_HELP, labels=["reason"])
        for reason, n in sorted(state.refused.items()):
            refused.add_metric([reason], n)
        yield refused
        webhooks = GaugeMetricFamily(
            "sipai_webhooks", "Webhooks by delivery state.", labels=["state"]
        )
        for delivery, n in sorted(state.webhooks().items()):
            webhooks.add_metric([delivery], n)
        yield webhooks
        yield from _worker_processes(health.workers)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _worker_processes(workers: Sequence[Mapping[str, Any]]) -> Iterable[Metric]:
    """CPU, resident memory and open files of each worker process, from ``/proc/<pid>``; a
    worker not running (or gone between its summary and the read) is left out."""
    cpu = CounterMetricFamily(
        "sipai_worker_cpu_seconds",
        "CPU time (user and system) of each SIP worker process since it started.",
        labels=["worker"],
    )
    memory = GaugeMetricFamily(
        "sipai_worker_resident_memory_bytes",
        "Resident memory of each SIP worker process.",
        labels=["worker"],
    )
    fds = GaugeMetricFamily(
        "sipai_worker_open_fds",
        "Open file descriptors of each SIP worker process.",
        labels=["worker"],
    )
    for worker in workers:
        pid = worker.get("pid")
        if not pid:
            continue
        try:
            with open(f"/proc/{pid}/stat", "rb") as stat_file:
                stat = stat_file.read()
            with open(f"/proc/{pid}/statm", "rb") as statm_file:
                pages = int(statm_file.read().split()[1])
            open_fds = len(os.listdir(f"/proc/{pid}/fd"))
        except OSError:
            continue
        # Fields after the command, which may hold spaces and parentheses: utime, stime are
        # fields 14 and 15 of stat(5), the 12th and 13th after the closing parenthesis.
        after = stat[stat.rindex(b")") + 2 :].split()
        label = [str(worker["index"])]
        cpu.add_metric(label, (int(after[11]) + int(after[12])) / _TICKS)
        memory.add_metric(label, pages * _PAGE)
        fds.add_metric(label, open_fds)
    yield from (cpu, memory, fds)


class Metrics:
    """The registry of ``/metrics``: the process, platform and GC collectors, the counters and
    histograms below, and :class:`StateCollector`. Loop thread only (a scrape runs there too)."""

    def __init__(
        self,
        health: Callable[[], HealthReport],
        calls: Callable[[], Mapping[str, int]],
        webhooks: Callable[[], Mapping[str, int]],
    ) -> None:
        # No `_created` series (the library's switch is process-wide; nothing here uses them).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self._state = ScrapeState(health, calls, webhooks)
        registry.register(StateCollector(self._state))

        def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
            return Counter(name, documentation, labels, registry=registry)

        def histogram(
            name: str, documentation: str, buckets: Sequence[float], labels: Sequence[str] = ()
        ) -> Histogram:
            return Histogram(name, documentation, labels, registry=registry, buckets=buckets)

        self.calls = counter(
            "sipai_calls",
            "Calls finished, by direction, status and end cause.",
            ["direction", "status", "end_cause"],
        )
        self.webhooks_delivered = counter(
            "sipai_webhooks_delivered", "Webhooks delivered (a 2xx answer), by kind.", ["kind"]
        )
        self.webhook_retries = counter(
            "sipai_webhook_retries",
            "Webhook attempts that failed and will be retried, by kind.",
            ["kind"],
        )
        self.webhooks_abandoned = counter(
            "sipai_webhooks_abandoned",
            "Webhooks given up, by kind and reason: exhausted (every retry failed) or gone "
            "(410 Gone).",
            ["kind", "reason"],
        )
        self.registration_failures = counter(
            "sipai_sip_registration_failures",
            "Failed REGISTERs (a refusal, an error status or no answer), by SIP status; "
            "other: any other status, or none (no answer, transport error).",
            ["code"],
        )
        self.model_connect_failures = counter(
            "sipai_model_connect_failures",
            "Inbound calls whose realtime model could not be reached, by failure kind.",
            ["kind"],
        )
        self.model_session_failures = counter(
            "sipai_model_session_failures",
            "Realtime model sessions that failed during a call, by failure kind.",
            ["kind"],
        )
        self.model_reconnects = counter(
            "sipai_model_reconnects", "Realtime model sessions reopened after a drop mid-call."
        )
        self.model_replacements = counter(
            "sipai_model_session_replacements",
            "Realtime model sessions replaced during a call, by reason: reconnect (after a "
            "drop) or rotation (before the provider's session cap).",
            ["reason"],
        )
        self.model_failovers = counter(
            "sipai_model_failovers",
            "Inbound calls that went on on the embedded engine after their realtime model was "
            "lost, by phase: connect (never reached) or session (lost mid-call).",
            ["phase"],
        )
        self.barge_ins = counter("sipai_barge_ins", "Times a caller interrupted the agent.")
        self.recordings = counter(
            "sipai_recordings",
            "Call recordings written, by whether they are complete (no frame lost).",
            ["complete"],
        )
        self.turn_latency = histogram(
            "sipai_turn_latency_seconds",
            "Inbound turns: end of the caller's speech (VAD) to the agent's first audio out.",
            TURN_LATENCY_BUCKETS,
        )
        self.post_to_invite = histogram(
            "sipai_outbound_post_to_invite_seconds",
            "Outbound calls: POST /call accepted to the INVITE sent (queueing included).",
            POST_TO_INVITE_BUCKETS,
        )
        self.answer_to_audio = histogram(
            "sipai_outbound_answer_to_first_audio_seconds",
            "Outbound calls: the callee's answer to the message's first audio out.",
            ANSWER_TO_AUDIO_BUCKETS,
        )
        self.webhook_delivery = histogram(
            "sipai_webhook_delivery_seconds",
            "Webhooks: queued to delivered (a 2xx answer), retries included, by kind.",
            WEBHOOK_DELIVERY_BUCKETS,
            ["kind"],
        )
        self.barge_in_stop = histogram(
            "sipai_barge_in_stop_seconds",
            "Barge-ins: the model's speech_started to the agent's audio stopped.",
            BARGE_IN_STOP_BUCKETS,
        )
        self.jitter = histogram(
            "sipai_call_jitter_seconds",
            "Mean RTP interarrival jitter of each call at its end: rx as received here, tx as "
            "the far end reported (RTCP).",
            JITTER_BUCKETS,
            ["direction"],
        )
        self.loss = histogram(
            "sipai_call_loss_ratio",
            "RTP packet loss of each call at its end (0-1): rx as received here, tx as the "
            "far end reported (RTCP).",
            LOSS_BUCKETS,
            ["direction"],
        )
        self.mos = histogram(
            "sipai_call_mos",
            "Estimated MOS of each call at its end (E-model, G.107): rx what the daemon "
            "heard, tx what the far end heard.",
            MOS_BUCKETS,
            ["direction"],
        )
        self._message_played: dict[str, bool] = {}  # outbound calls run, not yet finished
        for kind in WEBHOOK_KINDS:  # the series exist from the start, at 0
            self.webhooks_delivered.labels(kind)
            self.webhook_retries.labels(kind)

    def exposition(self, refused: Mapping[str, int]) -> bytes:
        """The text exposition (format 0.0.4), with ``refused`` as the INVITEs refused."""
        self._state.refused = refused
        return generate_latest(self.registry)

    # -- CallObserver ------------------------------------------------------------------------

    def call_finished(self, call: FinishedCall) -> None:
        """A finished call: its outcome, its recording, and the figures of its black box."""
        played = self._message_played.pop(call.call_id, None)
        direction = _closed(call.direction, tuple(END_CAUSES))
        label = end_cause_label(direction, call.status, call.end_cause, message_played=played)
        self.calls.labels(direction, _closed(call.status, CALL_STATUSES), label).inc()
        if call.recording is not None:
            self.recordings.labels(str(call.recording.complete).lower()).inc()
        box = call.black_box or {}
        outbound = box.get("outbound") or {}
        invite_at = call.invite_at if call.invite_at is not None else outbound.get("invite_at")
        if call.created_at is not None and invite_at is not None:
            self.post_to_invite.observe(max(0.0, invite_at - call.created_at))
        _observe_ms(self.answer_to_audio, outbound.get("answer_to_first_audio_ms"))
        for turn in box.get("turns") or ():
            _observe_ms(self.turn_latency, turn.get("latency_ms"))
        for barge_in in box.get("barge_ins") or ():
            self.barge_ins.inc()
            _observe_ms(self.barge_in_stop, barge_in.get("stop_ms"))
        model = box.get("model") or {}
        self.model_reconnects.inc(int(model.get("reconnects") or 0))
        for replacement in model.get("replacements") or ():
            self.model_replacements.labels(
                _closed(replacement.get("reason"), REPLACEMENT_REASONS)
            ).inc()
        self._line_quality(box)

    def _line_quality(self, box: Mapping[str, Any]) -> None:
        rtp = box.get("rtp") or {}
        rx, tx = rtp.get("rx") or {}, rtp.get("tx") or {}
        if rx.get("packets"):
            _observe_ms(self.jitter.labels("rx"), rx.get("jitter_ms_mean"))
            _observe_pct(self.loss.labels("rx"), rx.get("loss_pct"))
        if tx.get("reports"):  # the far end's RTCP reports: without one, nothing is known
            _observe_ms(self.jitter.labels("tx"), tx.get("jitter_ms_reported"))
            _observe_pct(self.loss.labels("tx"), tx.get("loss_pct_reported"))
        mos = box.get("mos") or {}
        for direction in ("rx", "tx"):
            if mos.get(direction) is not None:
                self.mos.labels(direction).observe(float(mos[direction]))

    def webhook_attempted(self, kind: str, state: str, queued_at: float, now: float) -> None:
        """One delivery attempt's outcome, and the delivery time of a delivered webhook."""
        kind = _closed(kind, WEBHOOK_KINDS)
        if state == "delivered":
            self.webhooks_delivered.labels(kind).inc()
            self.webhook_delivery.labels(kind).observe(max(0.0, now - queued_at))
        elif state == "pending":
            self.webhook_retries.labels(kind).inc()
        elif state in ("abandoned", "gone"):
            reason = "gone" if state == "gone" else "exhausted"
            self.webhooks_abandoned.labels(kind, reason).inc()

    # -- what else the supervisor hears ------------------------------------------------------

    def outbound_result(self, call_id: str, message_played: bool) -> None:
        """Whether an outbound call's message played whole, kept until the call is finished
        (the finished call says only its status and error)."""
        if len(self._message_played) >= 1024:  # a call that was never finished: forget it
            del self._message_played[next(iter(self._message_played))]
        self._message_played[call_id] = message_played

    def registration_changed(self, event: RegistrationChanged) -> None:
        """A worker's registration status: a failed REGISTER (a retry is due) counts."""
        if not event.registered and event.retry_in is not None:
            self.registration_failures.labels(_closed(str(event.code), REGISTRATION_CODES)).inc()

    def on_inbound(self, worker: int, kind: str, body: Mapping[str, Any]) -> None:
        """An inbound agent's event: a model failure counts, by kind, at connect or later;
        a failover to the embedded engine is such a failure too, and counts by phase."""
        if kind == "agent_failover":
            self.model_failovers.labels(_closed(body.get("phase"), FAILOVER_PHASES)).inc()
        elif kind != "agent_failed":
            return
        failure = _closed(body.get("kind"), FAILURE_KINDS)
        if body.get("phase") == "connect":
            self.model_connect_failures.labels(failure).inc()
        else:
            self.model_session_failures.labels(failure).inc()


def _observe_ms(histogram: Histogram, value: float | None) -> None:
    if value is not None:
        histogram.observe(max(0.0, float(value)) / 1000)


def _observe_pct(histogram: Histogram, value: float | None) -> None:
    if value is not None:
        histogram.observe(min(1.0, max(0.0, float(value) / 100)))


class ObservedRunner:
    """The outbound call runner, telling :class:`Metrics` whether each call's message played."""

    def __init__(self, runner: CallRunner, metrics: Metrics) -> None:
        self.runner = runner
        self._metrics = metrics

    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        played: list[bool] = []  # as a decided result said (it stays the call's result)

        async def observed(status: str, **columns: Any) -> None:
            decided = columns.get("result")
            if status == DECIDED and not played and isinstance(decided, dict):
                played.append(decided.get("message_played") is True)
            await report(status, **columns)

        result = await self.runner.run(call_id, request, observed)
        self._metrics.outbound_result(call_id, played[0] if played else result.message_played)
        return result
