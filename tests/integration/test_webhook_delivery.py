"""Webhooks from the durable outbox to a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.webhooks import Deliverer
from daemon.store import Store
from tests.peers.receiver import Receiver
from tests.support import ROOT, free_port
from tests.unit.test_webhooks import _independent_signature

FAST = (0.2, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2)
SECRET = "whsec_" + "c2lwYWktdGVzdC1zZWNyZXQ="  # base64 of b"sipai-test-secret"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "sipai.db")
    await s.open()
    yield s
    await s.close()


async def _finished_call(store: Store, url: str, call_id: str = "out-1-1") -> str:
    await store.insert_call(call_id, {"extension": "1001", "message": "hi", "callback_url": url})
    payload = {
        "call_id": call_id,
        "status": "completed",
        "extension": "1001",
        "duration_seconds": 3.2,
        "message_played": True,
        "choice_response": None,
        "choice_raw_text": None,
        "error": None,
    }
    webhook = await store.finish_call(call_id, "completed", payload)
    assert webhook is not None
    return webhook.webhook_id


async def _until(predicate, within: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_delivered_and_signed(store: Store) -> None:
    """The payload arrives once with headers whose signature verifies independently."""
    receiver = Receiver()
    deliverer = Deliverer(store, SECRET, waits=FAST)
    deliverer.start()
    try:
        webhook_id = await _finished_call(store, receiver.url)
        deliverer.wake()
        await _until(lambda: len(receiver.requests()) == 1)
        [got] = receiver.requests()
        assert got.headers["webhook-id"] == webhook_id
        assert got.headers["content-type"] == "application/json"
        expected = _independent_signature(
            b"sipai-test-secret", webhook_id, int(got.headers["webhook-timestamp"]), got.body
        )
        assert got.headers["webhook-signature"] == expected
        assert json.loads(got.body)["status"] == "completed"
        await asyncio.sleep(0.3)  # let the attempt be recorded
        record = await store.get_call("out-1-1")
        assert record is not None
        [hook] = record["webhooks"]
        assert hook["state"] == "delivered"
        assert [a["status_code"] for a in hook["attempts"]] == [200]
    finally:
        await deliverer.stop()
        receiver.close()


async def test_receiver_down_then_up_gets_it_once_with_the_same_id(store: Store) -> None:
    """Refused, then 503 twice, then 200: every try carries one webhook-id; one success."""
    port = free_port()
    deliverer = Deliverer(store, "", waits=FAST)
    deliverer.start()
    receiver: Receiver | None = None
    try:
        webhook_id = await _finished_call(store, f"http://127.0.0.1:{port}/hook")
        deliverer.wake()
        await asyncio.sleep(0.5)  # at least one connection refused
        receiver = Receiver(port, script=[(503, {}), (503, {})])
        await _until(lambda: len(receiver.requests()) == 3)
        await asyncio.sleep(0.6)  # nothing more after the success
        requests = receiver.requests()
        assert [r.status for r in requests] == [503, 503, 200]
        assert {r.headers["webhook-id"] for r in requests} == {webhook_id}
        assert len({r.body for r in requests}) == 1
        record = await store.get_call("out-1-1")
        assert record is not None
        attempts = record["webhooks"][0]["attempts"]
        assert attempts[0]["status_code"] is None
        assert "ConnectError" in attempts[0]["error"]
        assert [a["status_code"] for a in attempts[-3:]] == [503, 503, 200]
        assert record["webhooks"][0]["state"] == "delivered"
    finally:
        await deliverer.stop()
        if receiver is not None:
            receiver.close()


async def test_410_stops_and_retry_after_is_honoured(store: Store) -> None:
    """Retry-After: 1 delays the next try by a second; 410 Gone ends the retries."""
    receiver = Receiver(script=[(503, {"Retry-After": "1"}), (410, {})])
    deliverer = Deliverer(store, "", waits=FAST)
    deliverer.start()
    try:
        await _finished_call(store, receiver.url)
        deliverer.wake()
        await _until(lambda: len(receiver.requests()) == 2, within=5)
        await asyncio.sleep(0.8)
        assert len(receiver.requests()) == 2  # no try after the 410
        record = await store.get_call("out-1-1")
        assert record is not None
        hook = record["webhooks"][0]
        assert hook["state"] == "gone"
        first, second = hook["attempts"]
        assert second["at"] - first["at"] >= 0.95
    finally:
        await deliverer.stop()
        receiver.close()


async def test_pending_webhook_survives_sigkill(store: Store, tmp_path: Path) -> None:
    """Deliverer killed with -9 while the receiver is down; restarted: delivered once."""
    port = free_port()
    webhook_id = await _finished_call(store, f"http://127.0.0.1:{port}/hook")
    command = [
        sys.executable,
        "-m",
        "tests.integration.deliverer_process",
        str(tmp_path / "sipai.db"),
        "",
    ]
    first = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    assert first.stdout is not None
    await first.stdout.readline()
    await asyncio.sleep(1.0)  # a few refused attempts recorded
    first.send_signal(signal.SIGKILL)
    await first.wait()
    record = await store.get_call("out-1-1")
    assert record is not None
    assert record["webhooks"][0]["state"] == "pending"
    assert len(record["webhooks"][0]["attempts"]) >= 1

    receiver = Receiver(port)
    second = await asyncio.create_subprocess_exec(
        *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        await _until(lambda: len(receiver.requests()) == 1)
        await asyncio.sleep(0.6)
        [got] = receiver.requests()
        assert got.headers["webhook-id"] == webhook_id
    finally:
        second.kill()
        await second.wait()
        receiver.close()
