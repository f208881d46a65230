"""The daemon killed with SIGKILL: webhooks and queued calls survive, nothing is dialled twice."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.peers.receiver import Receiver
from tests.support import DaemonProcess, free_port

pytestmark = pytest.mark.e2e


def _daemon(env: dict[str, str], mode: str, started: Path) -> DaemonProcess:
    return DaemonProcess(
        env | {"SIPAI_TEST_RUNNER": mode, "SIPAI_TEST_STARTED": str(started)},
        script="tests.e2e.scripted_supervisor",
        timeout=30,
    )


def _until(predicate, within: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_webhook_pending_at_sigkill_is_delivered_after_restart(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """Receiver down, call finished, daemon killed -9; restarted with the receiver up: delivered."""
    port = free_port()
    api = int(daemon_env["SIPAI_API__PORT"])
    base = f"http://127.0.0.1:{api}"
    started = tmp_path / "started.txt"
    first = _daemon(daemon_env, "instant", started)
    try:
        first.start_sync()
        posted = httpx.post(
            f"{base}/call",
            json={
                "message": "hi",
                "extension": "1001",
                "callback_url": f"http://127.0.0.1:{port}/h",
            },
        )
        call_id = posted.json()["call_id"]

        def attempted() -> bool:
            view = httpx.get(f"{base}/call/{call_id}").json()
            return bool(view.get("webhooks")) and bool(view["webhooks"][0]["attempts"])

        _until(attempted)
    finally:
        first.kill()

    receiver = Receiver(port)
    second = _daemon(daemon_env, "instant", started)
    try:
        second.start_sync()
        _until(lambda: len(receiver.requests()) == 1, within=30)
        view = httpx.get(f"{base}/call/{call_id}").json()
        [hook] = view["webhooks"]
        assert receiver.requests()[0].headers["webhook-id"] == hook["webhook_id"]
        assert hook["attempts"][0]["status_code"] is None  # refused before the kill
        assert second.stop_sync(timeout=15) == 0
    finally:
        second.kill()
        receiver.close()


def test_sigkill_mid_queue_loses_nothing_and_dials_nothing_twice(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """One call up, two queued, kill -9: after restart the first is failed, the others run."""
    env = daemon_env | {"SIPAI_CALLS__MAX_CONCURRENT": "1"}
    api = int(env["SIPAI_API__PORT"])
    base = f"http://127.0.0.1:{api}"
    started = tmp_path / "started.txt"
    first = _daemon(env, "hold", started)
    try:
        first.start_sync()
        ids = [
            httpx.post(f"{base}/call", json={"message": "hi", "extension": "1001"}).json()[
                "call_id"
            ]
            for _ in range(3)
        ]
        _until(lambda: started.exists() and started.read_text().split() == ids[:1])
        health = httpx.get(f"{base}/health").json()
        assert health["queued_calls"] == 2, health
    finally:
        first.kill()

    second = _daemon(env, "instant", started)
    try:
        second.start_sync()
        _until(lambda: started.read_text().split() == ids)  # 2 and 3, in order, once each

        def final(call_id: str) -> str:
            return str(httpx.get(f"{base}/call/{call_id}").json()["call_status"])

        _until(lambda: [final(i) for i in ids] == ["failed", "completed", "completed"])
        assert "stopped while the call was" in httpx.get(f"{base}/call/{ids[0]}").json()["error"]
        assert second.stop_sync(timeout=15) == 0
    finally:
        second.kill()
