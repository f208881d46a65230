"""The store's Idempotency-Key records, and attaching a call's end to a result decided early."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.blackbox import RecordingInfo
from daemon.retention import Retention
from daemon.store import (
    IDEMPOTENCY_SECONDS,
    DuplicateCallId,
    IdempotencyClaim,
    IdempotentReplay,
    Store,
)

NOW = 1_800_000_000.0
HOUR = 3600.0
RESPONSE = {"status": "queued", "message": "Call initiated"}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "sipai.db")
    await s.open()
    yield s
    await s.close()


def _request() -> dict[str, object]:
    return {"extension": "1001", "message": "hi", "callback_url": "http://127.0.0.1:9/hook"}


def _claim(key: str = "k1", sha: str = "a" * 64, scope: str = "crm") -> IdempotencyClaim:
    return IdempotencyClaim(scope, key, sha, RESPONSE)


def _rows(store: Store, query: str) -> list[tuple[object, ...]]:
    db = sqlite3.connect(store.path)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


async def test_a_claimed_key_is_found_and_a_second_claim_replays_storing_nothing(
    store: Store,
) -> None:
    """A call stored with a key is found by it; a second insert with the key raises
    IdempotentReplay carrying the first call's record, and no second call is stored."""
    await store.insert_call("out-1", _request(), idempotency=_claim(), now=NOW)
    found = await store.find_idempotency("crm", "k1", now=NOW + 1)
    assert found is not None
    assert (found.call_id, found.body_sha256, found.response) == ("out-1", "a" * 64, RESPONSE)
    with pytest.raises(IdempotentReplay) as replay:
        await store.insert_call("out-2", _request(), idempotency=_claim(sha="b" * 64), now=NOW)
    assert replay.value.record.call_id == "out-1"
    assert _rows(store, "SELECT call_id FROM calls") == [("out-1",)]
    assert store.status_counts() == {"queued": 1}


async def test_two_claims_at_once_store_one_call(store: Store) -> None:
    """Two inserts with one key submitted together: the store thread runs them one after the
    other, so one call is stored and the other insert replays it."""
    outcomes = await asyncio.gather(
        store.insert_call("out-1", _request(), idempotency=_claim(), now=NOW),
        store.insert_call("out-2", _request(), idempotency=_claim(), now=NOW),
        return_exceptions=True,
    )
    assert outcomes[0] is None
    assert isinstance(outcomes[1], IdempotentReplay), outcomes
    assert outcomes[1].record.call_id == "out-1"
    assert _rows(store, "SELECT call_id FROM calls") == [("out-1",)]


async def test_keys_are_scoped_by_caller(store: Store) -> None:
    """The same key of another scope (another token) is another key."""
    await store.insert_call("out-1", _request(), idempotency=_claim(scope="crm"), now=NOW)
    await store.insert_call("out-2", _request(), idempotency=_claim(scope="ops"), now=NOW)
    assert await store.find_idempotency("", "k1", now=NOW) is None
    ops = await store.find_idempotency("ops", "k1", now=NOW)
    assert ops is not None
    assert ops.call_id == "out-2"


async def test_a_key_expires_after_24_hours_and_can_be_claimed_again(store: Store) -> None:
    """25 h after its claim a key is not found, and a new call may claim it (the record is
    replaced); 23 h after, it still replays."""
    await store.insert_call("out-1", _request(), idempotency=_claim(), now=NOW)
    assert IDEMPOTENCY_SECONDS == 24 * HOUR
    assert await store.find_idempotency("crm", "k1", now=NOW + 23 * HOUR) is not None
    assert await store.find_idempotency("crm", "k1", now=NOW + 25 * HOUR) is None
    later = NOW + 25 * HOUR
    await store.insert_call("out-2", _request(), idempotency=_claim(sha="b" * 64), now=later)
    found = await store.find_idempotency("crm", "k1", now=later)
    assert found is not None
    assert (found.call_id, found.body_sha256) == ("out-2", "b" * 64)
    assert _rows(store, "SELECT COUNT(*) FROM idempotency_keys") == [(1,)]


async def test_a_key_survives_close_and_reopen(tmp_path: Path) -> None:
    """Keys are in the database file: a reopened store (a restarted daemon) still finds one."""
    first = Store(tmp_path / "sipai.db")
    await first.open()
    await first.insert_call("out-1", _request(), idempotency=_claim(), now=NOW)
    await first.close()
    second = Store(tmp_path / "sipai.db")
    await second.open()
    try:
        found = await second.find_idempotency("crm", "k1", now=NOW + HOUR)
        assert found is not None
        assert found.call_id == "out-1"
    finally:
        await second.close()


async def test_a_refused_insert_stores_no_key(store: Store) -> None:
    """A call_id in use (409) rolls the claim back with the call: the key stays free."""
    await store.insert_call("out-1", _request(), now=NOW)
    with pytest.raises(DuplicateCallId):
        await store.insert_call("out-1", _request(), idempotency=_claim(), now=NOW)
    assert await store.find_idempotency("crm", "k1", now=NOW) is None


async def test_expired_keys_are_pruned_even_with_retention_off(store: Store) -> None:
    """A retention pass with both ages 0 (keep calls and recordings for ever) still deletes
    the keys older than 24 h, and only those; the call of an expired key stays."""
    await store.insert_call("out-1", _request(), idempotency=_claim("old"), now=NOW)
    await store.insert_call("out-2", _request(), idempotency=_claim("new"), now=NOW + 20 * HOUR)
    pruned = await Retention(store, 0, 0).prune(now=NOW + 25 * HOUR)
    assert pruned.idempotency_keys == 1
    assert _rows(store, "SELECT key FROM idempotency_keys") == [("new",)]
    assert len(_rows(store, "SELECT call_id FROM calls")) == 2


async def test_the_retention_task_runs_with_both_ages_0(store: Store) -> None:
    """With both ages 0 the hourly task still starts and its first pass deletes an expired
    key."""
    claimed = time.time() - IDEMPOTENCY_SECONDS - 1
    await store.insert_call("out-1", _request(), idempotency=_claim(), now=claimed)
    retention = Retention(store, 0, 0)
    retention.start()
    try:
        async with asyncio.timeout(5):
            while _rows(store, "SELECT COUNT(*) FROM idempotency_keys") != [(0,)]:
                await asyncio.sleep(0.02)
    finally:
        await retention.stop()


async def test_attach_outcome_adds_the_end_to_a_final_call_only(store: Store) -> None:
    """attach_outcome sets the end time, black box and recording of a final call, leaving its
    result and webhook as they are; on a call not final it changes nothing (False)."""
    await store.insert_call("done", _request())
    await store.insert_call("up", _request())
    webhook = await store.finish_call("done", "completed", {"status": "completed"}, sip_code=200)
    assert webhook is not None
    recording = RecordingInfo("/tmp/done.wav", 2.0, 32044, "00" * 32, True, 0, 8000)
    attached = await store.attach_outcome(
        "done", ended_at=NOW, black_box={"frames": 100}, recording=recording
    )
    assert attached is True
    assert await store.attach_outcome("up", ended_at=NOW, black_box={"frames": 1}) is False
    done = await store.get_call("done")
    assert done is not None
    assert (done["status"], done["result"], done["ended_at"]) == (
        "completed",
        {"status": "completed"},
        NOW,
    )
    assert done["black_box"] == {"frames": 100}
    assert done["recording"]["path"] == "/tmp/done.wav"
    assert [h["webhook_id"] for h in done["webhooks"]] == [webhook.webhook_id]
    up = await store.get_call("up")
    assert up is not None
    assert (up["ended_at"], up["black_box"]) == (None, None)
    assert json.loads(_rows(store, "SELECT body FROM outbox")[0][0]) == {"status": "completed"}


async def test_a_call_whose_key_is_live_outlasts_a_short_retention(store: Store) -> None:
    """With retention_days 0.5 a finished call 13 h old stays while its key (24 h) can still
    replay it, and goes with the first pass after the key expired."""
    claimed = NOW - 13 * 3600
    request = {"extension": "1001", "message": "hi"}  # no webhook to wait for
    await store.insert_call("out-1", request, idempotency=_claim(), now=claimed)
    await store.finish_call("out-1", "completed", {"status": "completed"}, ended_at=claimed)
    await Retention(store, 0.5, 0).prune(NOW)
    assert _rows(store, "SELECT call_id FROM calls") == [("out-1",)]
    await Retention(store, 0.5, 0).prune(claimed + IDEMPOTENCY_SECONDS + 1)
    assert _rows(store, "SELECT call_id FROM calls") == []
