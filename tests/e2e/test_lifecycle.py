"""The daemon as a real process under a fake systemd: notify, watchdog, health, drain, exit."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.store import Store
from tests.e2e.notify import NotifySocket
from tests.peers.receiver import Receiver
from tests.support import SIPAI, DaemonProcess, workers_up

pytestmark = pytest.mark.e2e

DASHBOARD = Path(__file__).parents[2] / "systemd" / "grafana-dashboard.json"
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset"}  # fmt: skip


@pytest.fixture
def notify(short_tmp: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(short_tmp)
    yield sock
    sock.close()


def _events(stdout: bytes) -> list[dict[str, object]]:
    return [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]


def test_notify_watchdog_health_and_graceful_stop(
    notify: NotifySocket, daemon_env: dict[str, str]
) -> None:
    """READY=1 once serving, WATCHDOG=1 each interval, STOPPING=1 on SIGTERM, exit 0 in bound."""
    env = daemon_env | {
        "NOTIFY_SOCKET": notify.path,
        "WATCHDOG_USEC": "1000000",  # a ping every 0.5 s
        "SIPAI_DAEMON__DRAIN_SECONDS": "5",
    }
    daemon = DaemonProcess(env, wait=None)
    daemon.start_sync()
    try:
        ready_at = notify.wait_for("READY=1", timeout=30)
        health = daemon.ready_sync()
        assert health.status_code == 200
        body = health.json()
        assert (body["status"], body["sip_registered"]) == ("healthy", False)
        assert body["uptime_seconds"] > 0

        first_ping = notify.wait_for("WATCHDOG=1", timeout=1.0)
        assert first_ping >= ready_at
        notify.received.clear()
        notify.wait_for("WATCHDOG=1", timeout=1.0)  # and again within the interval

        signalled_at = time.monotonic()
        daemon.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", timeout=5)
        assert daemon.wait_sync(timeout=5 + 3) == 0
        assert time.monotonic() - signalled_at < 5 + 3
    finally:
        daemon.kill()
    events = [e["event"] for e in daemon.log_events()]
    assert events[0] == "daemon.starting"
    assert (
        events.index("daemon.ready")
        < events.index("daemon.stopping")
        < events.index("daemon.stopped")
    )


def test_first_log_line_says_embedded_defaults(daemon_env: dict[str, str]) -> None:
    """With no config file the first log event says the daemon runs on embedded defaults."""
    daemon = DaemonProcess(daemon_env, timeout=30)
    try:
        daemon.start_sync()
        assert daemon.stop_sync(signal.SIGINT, timeout=10) == 0
    finally:
        daemon.kill()
    first = daemon.log_events()[0]
    assert first["event"] == "daemon.starting"
    assert str(first["config"]).startswith("embedded defaults")
    assert (first["sip_mode"], first["agent_backend"]) == ("direct", "local")


def test_bad_config_exits_2_without_traceback(tmp_path: Path, daemon_env: dict[str, str]) -> None:
    """`sipai run` with a broken file prints the problems and exits 2 before starting."""
    path = tmp_path / "bad.toml"
    path.write_text("[sip]\nworkers = -1\n")
    result = subprocess.run(
        [SIPAI, "run", "--config", path],
        env=daemon_env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert f"{path}: sip.workers: ".encode() in result.stderr
    assert b"Traceback" not in result.stderr


def test_busy_api_port_is_a_clean_failure(daemon_env: dict[str, str]) -> None:
    """When the API port is taken the daemon logs why and exits 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = daemon_env | {"SIPAI_API__PORT": str(taken.getsockname()[1])}
        result = subprocess.run(
            [SIPAI, "run"], env=env, capture_output=True, timeout=30, check=False
        )
    assert result.returncode == 1
    failed = [e for e in _events(result.stdout) if e["event"] == "daemon.start_failed"]
    assert "Address already in use" in str(failed[0]["error"])


HANGING = "tests.e2e.hanging_supervisor"


def test_drain_is_bounded(notify: NotifySocket, daemon_env: dict[str, str]) -> None:
    """A component that never finishes draining is cut off after daemon.drain_seconds."""
    env = daemon_env | {"NOTIFY_SOCKET": notify.path, "SIPAI_DAEMON__DRAIN_SECONDS": "1"}
    daemon = DaemonProcess(env, script=HANGING, wait=None)
    daemon.start_sync()
    try:
        notify.wait_for("READY=1", timeout=30)
        signalled_at = time.monotonic()
        assert daemon.stop_sync(timeout=10) == 0
        elapsed = time.monotonic() - signalled_at
        assert 1.0 <= elapsed < 4.0
    finally:
        daemon.kill()
    events = daemon.log_events()
    assert any(e["event"] == "daemon.drain_timeout" for e in events)


def test_second_signal_exits_at_once(notify: NotifySocket, daemon_env: dict[str, str]) -> None:
    """During a long drain a second SIGTERM ends the process immediately with 128+15."""
    env = daemon_env | {"NOTIFY_SOCKET": notify.path, "SIPAI_DAEMON__DRAIN_SECONDS": "60"}
    daemon = DaemonProcess(env, script=HANGING, wait=None)
    daemon.start_sync()
    try:
        notify.wait_for("READY=1", timeout=30)
        daemon.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", timeout=5)
        signalled_at = time.monotonic()
        assert daemon.stop_sync(timeout=5) == 128 + signal.SIGTERM
        assert time.monotonic() - signalled_at < 2.0
    finally:
        daemon.kill()


def test_an_open_console_stream_ends_on_stop(
    notify: NotifySocket, daemon_env: dict[str, str]
) -> None:
    """A console event stream of the daemon shows an outbound call as it is queued; on
    SIGTERM the daemon ends the stream itself (cleanly, at the start of the drain, not cut
    off when the API server gives up on it) and exits 0 within its drain bound."""
    drain_seconds = 2
    env = daemon_env | {
        "NOTIFY_SOCKET": notify.path,
        "SIPAI_DAEMON__DRAIN_SECONDS": str(drain_seconds),
    }
    daemon = DaemonProcess(env, wait=None)
    daemon.start_sync()
    try:
        notify.wait_for("READY=1", timeout=30)
        with (
            httpx.Client(base_url=daemon.base_url, timeout=10) as client,
            client.stream("GET", "/console/events") as stream,
        ):
            assert stream.status_code == 200, stream.read()
            lines = stream.iter_lines()
            assert "event: snapshot" in list(_until_events(lines))
            placed = client.post(
                "/call", json={"message": "hi", "extension": "sip:1001@127.0.0.1:9"}
            )  # the discard port: nobody answers
            assert placed.status_code == 200
            queued = _until_events(lines)
            assert f'"call_id": "{placed.json()["call_id"]}"' in "".join(queued), (
                "an outbound call is on the stream"
            )
            signalled_at = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            rest = list(lines)  # httpx raises if the stream is cut off before its end
            ended_s = time.monotonic() - signalled_at
        assert daemon.wait_sync(timeout=drain_seconds + 3) == 0
        exited_s = time.monotonic() - signalled_at
    finally:
        daemon.kill()
    print(f"stream ended {ended_s:.2f} s after SIGTERM, exit {exited_s:.2f} s ({len(rest)} lines)")
    assert ended_s < drain_seconds, f"the stream ended {ended_s:.2f} s after SIGTERM"
    assert exited_s < drain_seconds + 3


def _until_events(lines: Iterator[str]) -> Iterator[str]:
    """The stream's lines to the end of its next event (a few lines)."""
    event = False
    for _, line in zip(range(10), lines, strict=False):
        yield line
        event = event or line.startswith("event:")
        if event and line == "":
            return


def _dashboard_metrics() -> set[str]:
    """The metric names in every ``expr`` of the Grafana dashboard (label matchers, ranges,
    strings and groupings taken out; functions and keywords are not names)."""
    names: set[str] = set()
    panels = json.loads(DASHBOARD.read_text())["panels"]
    for expr in (t["expr"] for p in panels for t in p.get("targets", [])):
        bare = re.sub(r'\{[^}]*\}|\[[^\]]*\]|"[^"]*"', " ", expr)
        bare = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", bare)
        names |= set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", bare)) - PROMQL_WORDS
    return names


SERIES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}


def _unknown_to(scrape: str, names: set[str]) -> set[str]:
    """Those of ``names`` that are no series of a family of ``scrape``, by its type: a
    counter's ``_total``, a histogram's ``_bucket``, ``_sum`` and ``_count``, a gauge's name
    (whether or not the family has samples yet)."""
    series = {
        family.name + suffix
        for family in text_string_to_metric_families(scrape)
        for suffix in SERIES.get(family.type, ("",))
    }
    return names - series


def test_api_in_the_daemon(daemon_env: dict[str, str]) -> None:
    """The running daemon: metrics (every one the Grafana dashboard uses among them), strict
    health, 400 for bad calls, valid ones queued."""
    env = daemon_env | {
        "SIPAI_SIP__REGISTRAR": "sip:127.0.0.1:9",  # nobody answers there
        "SIPAI_DAEMON__DRAIN_SECONDS": "2",  # the queued call is dialling into the void
    }
    daemon = DaemonProcess(env, timeout=30)
    try:
        daemon.start_sync()
        base = daemon.base_url
        daemon.ready_sync(workers_up, timeout=30)
        assert httpx.get(f"{base}/health?strict=1", timeout=5).status_code == 503
        scrape = httpx.get(f"{base}/metrics", timeout=5)
        assert scrape.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        metrics = scrape.text
        assert "sipai_sip_registered 0" in metrics
        assert "sipai_workers_up 1" in metrics
        used = _dashboard_metrics()
        assert len(used) >= 30, f"{len(used)} metrics in the dashboard: {sorted(used)}"
        unknown = _unknown_to(metrics, used)
        assert not unknown, f"{len(used)} metrics in the dashboard, not exported: {unknown}"
        bad = httpx.post(f"{base}/call", json={"message": "hi"}, timeout=5)
        assert (bad.status_code, bad.json()["detail"]) == (400, "extension: field required")
        good = httpx.post(f"{base}/call", json={"message": "hi", "extension": "1001"}, timeout=5)
        assert good.status_code == 200
        assert good.json()["status"] == "queued"
        [record] = httpx.get(f"{base}/calls", timeout=5).json()["calls"]
        assert record["call_id"] == good.json()["call_id"]
        assert daemon.stop_sync(timeout=15) == 0
    finally:
        daemon.kill()


async def _two_finished_calls(path: Path, ended_at: dict[str, float]) -> None:
    store = Store(path)
    await store.open()
    for call_id, ended in ended_at.items():
        await store.insert_call(call_id, {"extension": "1001", "message": "hi"})
        result = {"call_id": call_id, "status": "completed"}
        await store.finish_call(call_id, "completed", result, ended_at=ended)
    await store.close()


def test_the_daemon_prunes_old_calls_when_it_starts(daemon_env: dict[str, str]) -> None:
    """With ``storage.retention_days`` set, the daemon's first retention pass at start-up
    deletes a call that ended before the cutoff and keeps a recent one, and the stored-calls
    gauge follows."""
    now = time.time()
    ended_at = {"out-old": now - 3 * 86400, "out-new": now - 60}
    asyncio.run(_two_finished_calls(Path(daemon_env["SIPAI_STORAGE__PATH"]), ended_at))
    daemon = DaemonProcess(daemon_env | {"SIPAI_STORAGE__RETENTION_DAYS": "2"}, timeout=30)
    try:
        daemon.start_sync()
        base = daemon.base_url
        daemon.ready_sync(workers_up, timeout=30)
        deadline = time.monotonic() + 5
        while httpx.get(f"{base}/call/out-old", timeout=5).status_code != 404:
            assert time.monotonic() < deadline, "the old call is still stored"
            time.sleep(0.1)
        assert httpx.get(f"{base}/call/out-new", timeout=5).status_code == 200
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert 'sipai_calls{status="completed"} 1.0' in metrics, metrics
        assert daemon.stop_sync(timeout=15) == 0
    finally:
        daemon.kill()


async def _inbound_left_in_progress(path: Path) -> None:
    store = Store(path)
    await store.open()
    await store.insert_inbound("in-00000000deadbeef", "gone@pbx", "1001", 0, "1000")
    await store.close()


def test_an_inbound_call_a_killed_daemon_left_is_reported_at_start(
    daemon_env: dict[str, str],
) -> None:
    """An inbound call still in progress in the store when the daemon starts (its process
    died) is finished as failed, and its ``inbound.ended`` webhook is delivered."""
    asyncio.run(_inbound_left_in_progress(Path(daemon_env["SIPAI_STORAGE__PATH"])))
    receiver = Receiver()
    daemon = DaemonProcess(daemon_env | {"SIPAI_WEBHOOKS__INBOUND_URL": receiver.url}, timeout=30)
    try:
        daemon.start_sync()
        deadline = time.monotonic() + 10
        while not receiver.requests():
            assert time.monotonic() < deadline, "no inbound.ended webhook after the restart"
            time.sleep(0.1)
        [hook] = receiver.requests()
        body = json.loads(hook.body)
        assert (body["type"], body["call_id"]) == ("inbound.ended", "in-00000000deadbeef"), body
        assert body["call_status"] == "failed", body
        record = httpx.get(f"{daemon.base_url}/call/in-00000000deadbeef", timeout=5).json()
        assert record["call_status"] == "failed", record
        assert daemon.stop_sync(timeout=15) == 0
    finally:
        daemon.kill()
        receiver.close()


def _series(scrape: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Each sample of ``scrape`` by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
    }


def test_a_finished_call_and_its_webhook_count_in_the_metrics(
    daemon_env: dict[str, str],
) -> None:
    """An outbound call the far end refuses (the daemon's own SIP port, another user: 404)
    counts in the running daemon's metrics once finished: the call by direction, status and
    end cause, the stored-calls gauge, the refused INVITE, its POST-to-INVITE time, and its
    result webhook delivered."""
    receiver = Receiver()
    daemon = DaemonProcess(daemon_env, timeout=30)  # direct mode: the INVITE goes to the URI
    try:
        daemon.start_sync()
        base = daemon.base_url
        daemon.ready_sync(workers_up, timeout=30)
        target = f"sip:9999@127.0.0.1:{daemon_env['SIPAI_SIP__PORT']}"
        request = {"message": "hi", "extension": target, "callback_url": receiver.url}
        assert httpx.post(f"{base}/call", json=request, timeout=5).status_code == 200
        delivered = ("sipai_webhooks_delivered_total", frozenset({("kind", "result")}))
        deadline = time.monotonic() + 10
        while (series := _series(httpx.get(f"{base}/metrics", timeout=5).text))[delivered] < 1:
            assert time.monotonic() < deadline, "no result webhook delivered"
            time.sleep(0.1)
        labels = {"direction": "outbound", "status": "failed", "end_cause": "failed"}
        expected = {
            ("sipai_calls_total", frozenset(labels.items())): 1.0,
            ("sipai_calls", frozenset({("status", "failed")})): 1.0,
            ("sipai_sip_invites_refused_total", frozenset({("reason", "not_found")})): 1.0,
            ("sipai_webhook_delivery_seconds_count", frozenset({("kind", "result")})): 1.0,
            ("sipai_outbound_post_to_invite_seconds_count", frozenset()): 1.0,
        }
        assert {key: series.get(key) for key in expected} == expected
        post_to_invite = series[("sipai_outbound_post_to_invite_seconds_sum", frozenset())]
        print(f"POST /call -> INVITE {post_to_invite * 1000:.1f} ms (in the histogram)")
        assert len(receiver.requests()) == 1
        assert daemon.stop_sync(timeout=15) == 0
    finally:
        daemon.kill()
        receiver.close()
