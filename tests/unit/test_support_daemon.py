"""The test suite's daemon launcher reports why a daemon never came up, and how it ended."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import DaemonExited, DaemonProcess, daemon_env


async def test_a_daemon_that_exits_before_health_fails_with_its_last_log_lines(
    tmp_path: Path,
) -> None:
    """A config with an unknown key makes ``sipai run`` exit before /health: the launcher
    raises at once (not at its timeout) with the exit status and the daemon's own complaint."""
    daemon = DaemonProcess(daemon_env(tmp_path), config={"sip": {"no_such_key": 1}}, timeout=30)
    with pytest.raises(DaemonExited) as failed:
        await daemon.start()
    message = str(failed.value)
    print(message)
    assert "exited with 2 before ready" in message, message
    assert "sip.no_such_key" in message, message
    assert daemon.returncode == 2


def test_stop_returns_the_exit_status(tmp_path: Path) -> None:
    """A daemon stopped with SIGTERM after /health answered returns its exit status (0) and
    its log holds the whole run."""
    env = daemon_env(tmp_path) | {"SIPAI_TEST_RUNNER": "instant"}
    env["SIPAI_TEST_STARTED"] = str(tmp_path / "started.txt")
    daemon = DaemonProcess(env, script="tests.e2e.scripted_supervisor", wait="health")
    daemon.start_sync()
    code = daemon.stop_sync(timeout=30)
    events = [e["event"] for e in daemon.log_events()]
    assert code == 0, daemon.log_lines()[-20:]
    assert "api.listening" in events, events
    assert events[-1] == "daemon.stopped", events
