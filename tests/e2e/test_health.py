"""/health of a real daemon in direct mode follows its SIP worker: starting, killed, back."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import httpx
import pytest

from tests.support import DaemonProcess

pytestmark = pytest.mark.e2e


def _health(base: str) -> tuple[dict[str, Any], int]:
    """The /health report and the status code of ``?strict=1`` read just before it: a report
    showing the worker down means it was already down for the strict read, unless it went
    down in between (the first report after the kill)."""
    strict = httpx.get(f"{base}/health?strict=1", timeout=5).status_code
    report: dict[str, Any] = httpx.get(f"{base}/health", timeout=5).json()
    return report, strict


def _worker_up(report: dict[str, Any]) -> bool:
    return all(w["up"] for w in report["workers"])


def test_health_is_unhealthy_while_the_worker_is_down(daemon_env: dict[str, str]) -> None:
    """Direct mode: unhealthy (strict 503) while starting and from a SIGKILL of the only
    worker until its restart is up, healthy (strict 200) otherwise; the report's ``web``
    shows the web worker up with no call."""
    with DaemonProcess(daemon_env, timeout=30) as daemon:
        base = daemon.base_url
        starting = []  # (status, strict code) read before the worker was up
        deadline = time.monotonic() + 30
        while True:
            report, strict = _health(base)
            if _worker_up(report):
                break
            starting.append((report["status"], strict))
            assert time.monotonic() < deadline, "the SIP worker did not come up"
        print(f"while starting: {len(starting)} reports {sorted(set(starting))}")
        assert all(r == ("unhealthy", 503) for r in starting), starting
        report, strict = _health(base)
        assert (report["status"], strict) == ("healthy", 200)
        deadline = time.monotonic() + 30
        while not report["web"]["up"]:  # the web worker starts beside the SIP one
            assert time.monotonic() < deadline, f"the web worker did not come up: {report}"
            time.sleep(0.05)
            report, _ = _health(base)
        assert report["web"] == {"up": True, "calls": 0, "restarts": 0}, report

        [worker] = report["workers"]
        os.kill(worker["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        seen: list[tuple[float, str, int, int | None]] = []
        while True:
            report, strict = _health(base)
            [state] = report["workers"]
            seen.append((time.monotonic() - killed_at, report["status"], strict, state["pid"]))
            if state["up"] and state["pid"] != worker["pid"] and state["restarts"] == 1:
                break
            assert time.monotonic() - killed_at < 30, f"no restart: {seen[-3:]}"
            time.sleep(0.05)
        down = [(status, strict) for _, status, strict, _ in seen[:-1]]
        print(f"after SIGKILL: {len(down)} reports while down, back up after {seen[-1][0]:.2f} s")
        assert down, "the restart was never observed as down"
        # The report read at the instant of the kill may predate its discovery; none after.
        assert all(r == ("unhealthy", 503) for r in down[1:]), seen
        assert ("unhealthy", 503) in down
        report, strict = _health(base)
        assert (report["status"], strict) == ("healthy", 200)
