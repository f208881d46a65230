"""The daemon as a real process under a fake systemd: notify, watchdog, health, drain, exit."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, SIPAI, wait_for_health
from tests.e2e.notify import NotifySocket

pytestmark = pytest.mark.e2e


@pytest.fixture
def notify(short_tmp: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(short_tmp)
    yield sock
    sock.close()


def _start(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate(timeout=10)


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
    proc = _start([str(SIPAI), "run"], env)
    try:
        ready_at = notify.wait_for("READY=1", timeout=30)
        health = wait_for_health(int(env["SIPAI_API__PORT"]), proc)
        assert health.status_code == 200
        body = health.json()
        assert (body["status"], body["sip_registered"]) == ("healthy", False)
        assert body["uptime_seconds"] > 0

        first_ping = notify.wait_for("WATCHDOG=1", timeout=1.0)
        assert first_ping >= ready_at
        notify.received.clear()
        notify.wait_for("WATCHDOG=1", timeout=1.0)  # and again within the interval

        signalled_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", timeout=5)
        assert proc.wait(timeout=5 + 3) == 0
        assert time.monotonic() - signalled_at < 5 + 3
    finally:
        _stop(proc)
    stdout, _ = proc.communicate()
    events = [e["event"] for e in _events(stdout)]
    assert events[0] == "daemon.starting"
    assert (
        events.index("daemon.ready")
        < events.index("daemon.stopping")
        < events.index("daemon.stopped")
    )


def test_first_log_line_says_embedded_defaults(daemon_env: dict[str, str]) -> None:
    """With no config file the first log event says the daemon runs on embedded defaults."""
    env = daemon_env
    proc = _start([str(SIPAI), "run"], env)
    try:
        wait_for_health(int(env["SIPAI_API__PORT"]), proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        _stop(proc)
    first = _events(proc.communicate()[0])[0]
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


HANGING = ROOT / "tests" / "e2e" / "hanging_supervisor.py"


def test_drain_is_bounded(notify: NotifySocket, daemon_env: dict[str, str]) -> None:
    """A component that never finishes draining is cut off after daemon.drain_seconds."""
    env = daemon_env | {"NOTIFY_SOCKET": notify.path, "SIPAI_DAEMON__DRAIN_SECONDS": "1"}
    proc = _start([sys.executable, str(HANGING)], env)
    try:
        notify.wait_for("READY=1", timeout=30)
        signalled_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        elapsed = time.monotonic() - signalled_at
        assert 1.0 <= elapsed < 4.0
    finally:
        _stop(proc)
    events = _events(proc.communicate()[0])
    assert any(e["event"] == "daemon.drain_timeout" for e in events)


def test_second_signal_exits_at_once(notify: NotifySocket, daemon_env: dict[str, str]) -> None:
    """During a long drain a second SIGTERM ends the process immediately with 128+15."""
    env = daemon_env | {"NOTIFY_SOCKET": notify.path, "SIPAI_DAEMON__DRAIN_SECONDS": "60"}
    proc = _start([sys.executable, str(HANGING)], env)
    try:
        notify.wait_for("READY=1", timeout=30)
        proc.send_signal(signal.SIGTERM)
        notify.wait_for("STOPPING=1", timeout=5)
        signalled_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 128 + signal.SIGTERM
        assert time.monotonic() - signalled_at < 2.0
    finally:
        _stop(proc)


def test_api_in_the_daemon(daemon_env: dict[str, str]) -> None:
    """The running daemon: metrics, strict health, 400 for bad calls, valid ones queued."""
    env = daemon_env | {
        "SIPAI_SIP__REGISTRAR": "sip:127.0.0.1:9",  # nobody answers there
        "SIPAI_DAEMON__DRAIN_SECONDS": "2",  # the queued call is dialling into the void
    }
    proc = _start([str(SIPAI), "run"], env)
    port = int(env["SIPAI_API__PORT"])
    try:
        wait_for_health(port, proc)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while not all(w["up"] for w in httpx.get(f"{base}/health", timeout=5).json()["workers"]):
            assert time.monotonic() < deadline, "the SIP worker did not come up"
            proc.poll()
        assert httpx.get(f"{base}/health?strict=1", timeout=5).status_code == 503
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert "sipai_sip_registered 0" in metrics
        assert "sipai_workers_up 1" in metrics
        bad = httpx.post(f"{base}/call", json={"message": "hi"}, timeout=5)
        assert (bad.status_code, bad.json()["detail"]) == (400, "extension: field required")
        good = httpx.post(f"{base}/call", json={"message": "hi", "extension": "1001"}, timeout=5)
        assert good.status_code == 200
        assert good.json()["status"] == "queued"
        [record] = httpx.get(f"{base}/calls", timeout=5).json()["calls"]
        assert record["call_id"] == good.json()["call_id"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        _stop(proc)
