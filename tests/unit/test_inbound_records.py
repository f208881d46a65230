"""Inbound calls' records on a real store: the answer, and the calls recovery finishes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from api.webhooks import Deliverer
from daemon.inbound_records import InboundRecords, inbound_view
from daemon.metrics import end_cause_label
from daemon.observe import FinishedCall
from daemon.store import Store
from sip.events import CallAnswered, CallEnded


class Finished:
    """A call observer that keeps the calls it is told of."""

    def __init__(self) -> None:
        self.calls: list[FinishedCall] = []

    def call_finished(self, call: FinishedCall) -> None:
        self.calls.append(call)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "sipai.db")
    await s.open()
    yield s
    await s.close()


async def _until(predicate: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(5):
        while not await predicate():
            await asyncio.sleep(0.01)


async def test_an_inbound_call_rings_until_its_answer(store: Store) -> None:
    """A call's record says ringing from its report until the worker's CallAnswered, then
    answered with the answer's time; another call's answer or end changes nothing."""
    records = InboundRecords(store, Deliverer(store, ""), "")
    start = {"call": "w0-1", "sip_call_id": "sip-1", "caller": "1001", "record_id": "in-1"}
    records.on_inbound(0, "inbound_call", start)
    await _until(lambda: _exists(store, "in-1"))
    ringing = await store.get_inbound("in-1")
    assert ringing is not None
    assert (inbound_view(ringing)["call_status"], ringing["answered_at"]) == ("ringing", None)

    records.on_sip_event(1, CallAnswered("w0-1"))  # the same call id on another worker
    records.on_sip_event(0, CallEnded("w0-2", 0, "gone", local_cause="worker_died"))
    records.on_sip_event(0, CallAnswered("w0-1"))

    async def answered() -> bool:
        record = await store.get_inbound("in-1")
        return record is not None and record["answered_at"] is not None

    await _until(answered)
    record = await store.get_inbound("in-1")
    assert record is not None
    assert (inbound_view(record)["call_status"], record["status"]) == ("answered", "in_progress")
    assert record["answered_at"] >= ringing["started_at"]


async def _exists(store: Store, call_id: str) -> bool:
    return await store.get_inbound(call_id) is not None


async def test_recovered_calls_reach_the_observer_as_interrupted(store: Store) -> None:
    """Calls a previous process left in progress are finished at start-up and each is told to
    the observer, failed, with a cause the metrics count as interrupted."""
    for n in (1, 2):
        await store.insert_inbound(f"in-{n}", f"sip-{n}", "1001", 0)
    await store.insert_inbound("in-3", "sip-3", "1001", 0)
    await store.finish_inbound("in-3", "completed", "caller hung up")
    finished = Finished()
    records = InboundRecords(store, Deliverer(store, ""), "", observer=finished)

    assert await records.recover() == 2
    calls = sorted(finished.calls, key=lambda c: c.call_id)
    assert [(c.call_id, c.direction, c.status) for c in calls] == [
        ("in-1", "inbound", "failed"),
        ("in-2", "inbound", "failed"),
    ]
    assert {end_cause_label(c.direction, c.status, c.end_cause) for c in calls} == {"interrupted"}
