"""Retention: what goes at the cutoffs, what stays, and the recording files."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.blackbox import RecordingInfo
from daemon.retention import DAY_SECONDS, Retention
from daemon.store import Store

NOW = 1_800_000_000.0
URL = "http://127.0.0.1:9/hook"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "sipai.db")
    await s.open()
    yield s
    await s.close()


def _recording(directory: Path, call_id: str) -> RecordingInfo:
    path = directory / f"{call_id}.wav"
    path.write_bytes(b"RIFF" + bytes(40))
    return RecordingInfo(str(path), 1.0, 44, "00" * 32, True, 0, 8000)


def _age(store: Store, table: str, call_id: str, days: float) -> None:
    """Move a record's times ``days`` before NOW (its recording's too)."""
    at = NOW - days * DAY_SECONDS
    db = sqlite3.connect(store.path)
    db.execute(f"UPDATE {table} SET ended_at = ? WHERE call_id = ?", (at, call_id))
    db.execute("UPDATE recordings SET created_at = ? WHERE call_id = ?", (at, call_id))
    db.execute("UPDATE outbox SET created_at = ? WHERE call_id = ?", (at, call_id))
    db.commit()
    db.close()


async def test_old_calls_and_recordings_go_pending_webhooks_stay(
    store: Store, tmp_path: Path
) -> None:
    """With 7 days for calls: an old finished call goes with its
    delivered webhook, attempts, recording row and file; an old call whose webhook still
    pends stays whole; then the 2 days of recordings take the recordings of the calls left
    (the calls stay); calls in progress stay; a file already gone is fine."""
    files = tmp_path / "recordings"
    files.mkdir()
    for call_id in ("old", "pending", "recent"):
        await store.insert_call(call_id, {"extension": "1001", "message": "m", "callback_url": URL})
    await store.insert_call("up", {"extension": "1001", "message": "m", "callback_url": URL})
    await store.update_call("up", status="answered")
    delivered = await store.finish_call(
        "old", "completed", {"status": "completed"}, recording=_recording(files, "old")
    )
    assert delivered is not None
    await store.record_attempt(
        delivered.webhook_id,
        started_at=NOW,
        duration_ms=1.0,
        status_code=200,
        error=None,
        state="delivered",
        next_attempt_at=None,
    )
    await store.finish_call(
        "pending", "busy", {"status": "busy"}, recording=_recording(files, "pending")
    )
    recent = await store.finish_call(
        "recent", "completed", {"status": "completed"}, recording=_recording(files, "recent")
    )
    assert recent is not None
    await store.record_attempt(
        recent.webhook_id,
        started_at=NOW,
        duration_ms=1.0,
        status_code=410,
        error=None,
        state="gone",
        next_attempt_at=None,
    )
    await store.insert_inbound("in-old", "sip-1", "1002", 0)
    await store.finish_inbound("in-old", "completed", "end_call", recording=_recording(files, "x"))
    (files / "x.wav").unlink()  # already gone: no error
    await store.insert_inbound("in-up", "sip-2", "1003", 0)
    for table, call_id, days in (
        ("calls", "old", 8),
        ("calls", "pending", 8),
        ("calls", "recent", 3),
        ("inbound_calls", "in-old", 30),
    ):
        _age(store, table, call_id, days)

    calls_only = await Retention(store, 7, 0).prune(now=NOW)

    assert (calls_only.files_removed, calls_only.files_missing) == (1, 1)
    assert sorted(p.name for p in files.iterdir()) == ["pending.wav", "recent.wav"]
    assert await store.get_call("old") is None
    assert await store.get_inbound("in-old") is None
    kept = await store.get_call("pending")
    assert kept is not None
    assert [w["state"] for w in kept["webhooks"]] == ["pending"]
    assert kept["recording"] is not None  # 8 days old, but its call stays whole

    recordings = await Retention(store, 7, 2).prune(now=NOW)

    assert (recordings.files_removed, recordings.files_missing) == (2, 0)
    assert list(files.iterdir()) == []
    for call_id, state in (("pending", "pending"), ("recent", "gone")):
        record = await store.get_call(call_id)
        assert record is not None
        assert record["recording"] is None
        assert [w["state"] for w in record["webhooks"]] == [state]
    assert await store.get_call("up") is not None
    assert await store.get_inbound("in-up") is not None
    db = sqlite3.connect(store.path)
    orphans = db.execute(
        "SELECT COUNT(*) FROM attempts WHERE webhook_id NOT IN (SELECT webhook_id FROM outbox)"
    ).fetchone()[0]
    db.close()
    assert orphans == 0
    assert store.status_counts() == {"busy": 1, "completed": 1, "answered": 1}
    assert store.webhook_state_counts() == {"pending": 1, "gone": 1}


async def test_the_task_prunes_when_started_and_stops(store: Store) -> None:
    """start() runs a pass at once (a call ended 8 days ago goes with 7 days kept), stop()
    ends the task; with both ages 0 retention is not enabled (its pass still runs, for the
    expired idempotency keys)."""
    await store.insert_call("old", {"extension": "1001", "message": "m"})
    await store.finish_call("old", "completed", {"status": "completed"})
    _age(store, "calls", "old", 8 + (NOW - time.time()) / DAY_SECONDS)  # 8 days before now
    idle = Retention(store, 0, 0)
    idle.start()
    assert not idle.enabled
    retention = Retention(store, 7, 0)
    retention.start()
    try:
        async with asyncio.timeout(5):
            while await store.get_call("old") is not None:
                await asyncio.sleep(0.02)
    finally:
        await retention.stop()
        await idle.stop()
    assert store.status_counts() == {}


def _day(directory: Path, days: float) -> Path:
    """The day folder of a call begun ``days`` before NOW (as the recorder names it)."""
    folder = directory / time.strftime("%Y-%m-%d", time.gmtime(NOW - days * DAY_SECONDS))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wav(folder: Path, call_id: str, modified: float | None = None) -> Path:
    path = folder / f"{call_id}.wav"
    path.write_bytes(b"RIFF" + bytes(40))
    if modified is not None:
        os.utime(path, (modified, modified))
    return path


async def test_stray_recordings_and_empty_day_folders_go(store: Store, tmp_path: Path) -> None:
    """Day folders older than the cutoff lose the files no record owns (a killed worker's)
    and, left empty, go themselves; a file with a recording row, the file of a call in
    progress, one still being written, a newer day's and anything not a day folder's stay."""
    files = tmp_path / "recordings"
    old, emptied, empty, recent = _day(files, 10), _day(files, 9), _day(files, 8), _day(files, 1)
    stray = [_wav(old, "in-0000000000000001"), _wav(emptied, "out-1-1")]
    await store.insert_call("pending", {"extension": "1001", "message": "m", "callback_url": URL})
    owned = _wav(old, "pending")
    await store.finish_call(
        "pending",
        "busy",
        {"status": "busy"},
        recording=RecordingInfo(str(owned), 1.0, 44, "00" * 32, True, 0, 8000),
    )
    _age(store, "calls", "pending", 10)  # its webhook pends: the call and its file stay
    await store.insert_inbound("in-up", "sip-1", "1002", 0)
    kept = [
        owned,
        _wav(old, "in-up"),  # in progress (days long, but up)
        _wav(old, "in-0000000000000002", modified=NOW),  # still written to
        _wav(recent, "in-0000000000000003"),  # younger than the cutoff
        _wav(_day(files / "misc", 10), "in-0000000000000004"),  # not a day folder of ours
    ]
    (old / "notes.txt").write_text("not a recording")

    pruned = await Retention(store, 7, 0, directory=files).prune(now=NOW)

    assert not any(path.exists() for path in stray), stray
    assert all(path.exists() for path in kept), [p for p in kept if not p.exists()]
    assert (old / "notes.txt").exists()
    assert not emptied.exists()
    assert not empty.exists()
    assert recent.exists()
    assert (pruned.files_removed, pruned.files_failed) == (2, 0), pruned
    record = await store.get_call("pending")
    assert record is not None
    assert record["recording"] is not None
