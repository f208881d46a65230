"""Webhooks from the durable outbox to a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook as StandardWebhook

from api.webhooks import Deliverer
from daemon.inbound_records import InboundRecords
from daemon.observe import FinishedCall
from daemon.outbound import CallResult, OutboundService, Report
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


async def _attempted(store: Store, call_id: str) -> bool:
    record = await store.get_inbound(call_id)
    return record is not None and any(hook["attempts"] for hook in record["webhooks"])


class Watcher:
    """A call observer that keeps what it is told."""

    def __init__(self) -> None:
        self.calls: list[FinishedCall] = []
        self.attempts: list[tuple[str, str]] = []
        self.waits: list[float] = []  # queued -> end of each attempt, seconds

    def call_finished(self, call: FinishedCall) -> None:
        self.calls.append(call)

    def webhook_attempted(self, kind: str, state: str, queued_at: float, now: float) -> None:
        self.attempts.append((kind, state))
        self.waits.append(now - queued_at if queued_at > 0 else -1.0)


async def test_inbound_end_of_call_is_signed_retried_and_visible(
    store: Store, tmp_path: Path
) -> None:
    """An inbound call's end, reported while the receiver is down, reaches it once up: one
    webhook-id on every attempt, a Standard Webhooks signature, the call's view as the body,
    and the attempts on the record."""
    port = free_port()
    watcher = Watcher()
    deliverer = Deliverer(store, SECRET, waits=(0.3,) * 4, observer=watcher)
    records = InboundRecords(store, deliverer, f"http://127.0.0.1:{port}/in", observer=watcher)
    deliverer.start()
    receiver: Receiver | None = None
    box = {"version": 1, "codec": "PCMU", "connect_seconds": 3.5}
    recording = {
        "path": str(tmp_path / "in-00000000000000ab.wav"),
        "duration_seconds": 3.5,
        "bytes": 112044,
        "sha256": "cd" * 32,
        "complete": True,
        "dropped_frames": 0,
        "rate": 8000,
    }
    try:
        start = {"call": "w0-1", "sip_call_id": "sip-1", "caller": "1001"}
        records.on_inbound(
            0, "inbound_call", start | {"record_id": "in-00000000000000ab", "extension": "1000"}
        )
        records.on_inbound(
            0, "transcript", {"call": "w0-1", "role": "caller", "text": "hi", "at": 1.0}
        )
        records.on_inbound(
            0,
            "inbound_done",
            {
                "call": "w0-1",
                "cause": "caller hung up",
                "black_box": box,
                "recording": recording,
                "connect_seconds": 3.5,
            },
        )
        async with asyncio.timeout(10):  # the first attempt was refused
            while not await _attempted(store, "in-00000000000000ab"):
                await asyncio.sleep(0.02)
        receiver = Receiver(port)
        await _until(lambda: len(receiver.requests()) == 1)
        await _until(lambda: ("inbound.ended", "delivered") in watcher.attempts)
        record = await store.get_inbound("in-00000000000000ab")
    finally:
        await deliverer.stop()
        if receiver is not None:
            receiver.close()
    assert record is not None
    [hook] = record["webhooks"]
    [got] = receiver.requests()
    assert (hook["kind"], hook["state"]) == ("inbound.ended", "delivered")
    assert got.headers["webhook-id"] == hook["webhook_id"]
    payload = StandardWebhook(SECRET).verify(got.body, got.headers)
    assert payload["type"] == "inbound.ended"
    assert (payload["call_id"], payload["status"], payload["call_status"]) == (
        "in-00000000000000ab",
        "not_found",
        "completed",
    )
    assert (
        payload["caller"],
        payload["extension"],
        payload["end_cause"],
        payload["black_box"],
    ) == (
        "1001",
        "1000",
        "caller hung up",
        box,
    )
    assert payload["duration_seconds"] == pytest.approx(3.5, abs=0.01)
    assert payload["transcript"] == [{"role": "caller", "text": "hi", "at": 1.0}]
    assert payload["recording"]["url"] == "/call/in-00000000000000ab/recording"
    assert payload["recording"]["sha256"] == "cd" * 32
    statuses = [a["status_code"] for a in hook["attempts"]]
    assert statuses[0] is None, hook  # refused
    assert statuses[-1] == 200, hook
    assert watcher.attempts[0] == ("inbound.ended", "pending")
    assert all(0 <= wait < 10 for wait in watcher.waits), watcher.waits
    assert watcher.waits[-1] >= 0.25, watcher.waits  # delivered after the 0.3 s retry wait
    [finished] = watcher.calls
    assert (finished.call_id, finished.direction, finished.status) == (
        "in-00000000000000ab",
        "inbound",
        "completed",
    )
    assert finished.recording is not None
    assert finished.recording.path == recording["path"]


class ProgressRunner:
    """Rings, answers, then holds the call until released; the result has a black box."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        await report("ringing")
        await report("answered", answered_at=1.0)
        await self.release.wait()
        return CallResult(
            "completed",
            duration_seconds=2.0,
            message_played=True,
            black_box={"version": 1, "connect_seconds": 2.0},
            invite_at=5.0,
        )


async def test_progress_events_only_when_asked_and_the_result_is_unchanged(
    store: Store,
) -> None:
    """A request with progress_events ["answered"] gets one signed call.progress, then the
    contract's result; a request without the field gets only the result, and both results
    are the same payload."""
    receiver = Receiver()
    watcher = Watcher()
    runner = ProgressRunner()
    deliverer = Deliverer(store, SECRET, waits=FAST, observer=watcher)
    service = OutboundService(
        store, runner, 4, on_final=deliverer.wake, max_queued=8, observer=watcher
    )
    service.start()
    deliverer.start()
    base = {"extension": "1001", "message": "hi", "callback_url": receiver.url}
    try:
        await service.submit("asked", base | {"progress_events": ["answered"]})
        await _until(lambda: len(receiver.requests()) == 1)
        runner.release.set()
        await _until(lambda: len(receiver.requests()) == 2)
        await service.submit("plain", base)
        await _until(lambda: len(receiver.requests()) == 3)
        await asyncio.sleep(0.3)  # nothing more comes
        received = receiver.requests()
        asked = await store.get_call("asked")
    finally:
        await service.stop()
        await deliverer.stop()
        receiver.close()
    assert len(received) == 3
    progress, asked_result, plain_result = (json.loads(r.body) for r in received)
    assert StandardWebhook(SECRET).verify(received[0].body, received[0].headers) == progress
    assert {k: v for k, v in progress.items() if k != "at"} == {
        "type": "call.progress",
        "call_id": "asked",
        "extension": "1001",
        "status": "answered",
    }
    contract = {
        "status": "completed",
        "extension": "1001",
        "duration_seconds": 2.0,
        "message_played": True,
        "choice_response": None,
        "choice_raw_text": None,
        "error": None,
    }
    assert asked_result == {"call_id": "asked", **contract}
    assert plain_result == {"call_id": "plain", **contract}
    assert asked is not None
    assert [w["kind"] for w in asked["webhooks"]] == ["call.progress", "result"]
    assert asked["black_box"] == {"version": 1, "connect_seconds": 2.0}
    assert [(c.call_id, c.direction, c.invite_at) for c in watcher.calls] == [
        ("asked", "outbound", 5.0),
        ("plain", "outbound", 5.0),
    ]
