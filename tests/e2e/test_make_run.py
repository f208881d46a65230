"""README's `make run` starts the daemon on embedded defaults and serves /health."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from tests.support import ROOT, wait_for_health

pytestmark = pytest.mark.e2e


def test_make_run_serves_health(daemon_env: dict[str, str]) -> None:
    """`make run` (ports moved by environment overrides) answers /health, Ctrl-C stops it."""
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "-C", str(ROOT), "run"],
        env=daemon_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, as in a terminal
    )
    try:
        health = wait_for_health(int(daemon_env["SIPAI_API__PORT"]), proc, timeout=300)
        deadline = time.monotonic() + 30
        while health.json()["status"] != "healthy":  # unhealthy until the SIP worker is up
            assert time.monotonic() < deadline, health.json()
            time.sleep(0.1)
            health = httpx.get(health.url, timeout=5)
        assert health.status_code == 200
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground group
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    output = proc.communicate(timeout=10)[0].decode()
    assert '"event": "daemon.stopped"' in output
