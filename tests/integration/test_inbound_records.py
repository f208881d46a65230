"""Inbound calls' records fed by a real worker process: its agent's reports and its SIP events."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from api.webhooks import Deliverer
from config.schema import AgentSettings, Settings
from daemon.inbound_records import InboundRecords, inbound_view
from daemon.observe import FinishedCall
from daemon.store import Store
from daemon.workers import WorkerPool
from sip.events import CallAnswered, CallEnded, SipEvent
from tests.integration.conftest import worker_settings
from tests.peers.kamailio import Kamailio
from tests.peers.phone import TestPhone
from tests.peers.realtime_server import FakeRealtime, FakeSession
from tests.peers.receiver import Receiver


class Finished:
    """A call observer that keeps the calls it is told of."""

    def __init__(self) -> None:
        self.calls: list[FinishedCall] = []

    def call_finished(self, call: FinishedCall) -> None:
        self.calls.append(call)

    def webhook_attempted(self, kind: str, state: str, queued_at: float, now: float) -> None:
        pass  # the deliveries are checked on the receiver


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "sipai.db")
    await s.open()
    yield s
    await s.close()


async def _until(predicate: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    async with asyncio.timeout(within):
        while not await predicate():
            await asyncio.sleep(0.05)


async def test_killed_worker_finishes_its_inbound_call_failed_with_the_webhook(
    kamailio: Kamailio, phones: Callable[..., Awaitable[TestPhone]], store: Store
) -> None:
    """SIGKILL the worker of an answered agent call: the pool's CallEnded (worker_died)
    finishes the call's record as failed, its inbound.ended webhook is delivered, the
    observer counts it once, and the record kept the time the call was answered."""

    async def hold(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await asyncio.Event().wait()  # the model stays on the line until the worker dies

    receiver = Receiver()
    finished = Finished()
    deliverer = Deliverer(store, "", waits=(0.2,) * 4, observer=finished)
    records = InboundRecords(store, deliverer, receiver.url, observer=finished)
    events: list[tuple[int, SipEvent]] = []

    def on_event(worker: int, event: SipEvent) -> None:
        events.append((worker, event))
        records.on_sip_event(worker, event)

    async with FakeRealtime("ga", hold) as fake:
        agent = AgentSettings(backend="url", url=fake.url, greeting="")
        pool = WorkerPool(Settings(sip=worker_settings(kamailio), agent=agent), None, on_event)
        pool.inbound_listeners.append(records.on_inbound)
        deliverer.start()
        try:
            await pool.start()
            async with asyncio.timeout(20):
                while not pool.workers[0].registered:
                    await asyncio.sleep(0.05)
            caller = await phones("caller")
            await caller.register(kamailio, "1001")
            dialled = await caller.command("dial", uri="sip:1000@127.0.0.1")
            await caller.expect("media", call=dialled["call"], status="active")

            async def answered() -> bool:
                listed = await store.list_inbound(1)
                return bool(listed) and listed[0]["answered_at"] is not None

            await _until(answered)
            [up] = await store.list_inbound(1)
            assert inbound_view(up)["call_status"] == "answered"
            pid = pool.workers[0].pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)

            async def ended() -> bool:
                record = await store.get_inbound(up["call_id"])
                return record is not None and record["status"] != "in_progress"

            await _until(ended)
            async with asyncio.timeout(10):
                while not receiver.requests():
                    await asyncio.sleep(0.05)
            record = await store.get_inbound(up["call_id"])
        finally:
            await pool.stop()
            await deliverer.stop()
            receiver.close()
    assert record is not None
    died = [e for _, e in events if isinstance(e, CallEnded) and e.local_cause == "worker_died"]
    assert len(died) == 1, died
    assert any(isinstance(e, CallAnswered) for _, e in events)
    assert (record["status"], record["end_cause"]) == (
        "failed",
        f"worker_died: {died[0].reason}",
    ), record
    assert record["answered_at"] == up["answered_at"]
    [got] = receiver.requests()
    payload: dict[str, Any] = json.loads(got.body)
    assert (payload["type"], payload["call_id"], payload["call_status"]) == (
        "inbound.ended",
        up["call_id"],
        "failed",
    )
    assert [(c.call_id, c.status) for c in finished.calls] == [(up["call_id"], "failed")]
