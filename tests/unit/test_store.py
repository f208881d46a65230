"""The SQLite call store: schema versions, records, the exactly-once final transition."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from daemon.blackbox import RecordingInfo
from daemon.inbound_records import inbound_view
from daemon.store import FINAL_STATUSES, MIGRATIONS, DuplicateCallId, Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = Store(tmp_path / "var" / "sipai.db")
    await s.open()
    yield s
    await s.close()


def _request(extension: str = "1001", url: str | None = "http://127.0.0.1:9/hook") -> dict:
    return {"message": "hi", "extension": extension, "callback_url": url}


async def test_schema_is_versioned_and_wal(store: Store) -> None:
    """Opening creates the schema at the latest version, in WAL mode."""
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


async def test_newer_schema_is_refused(tmp_path: Path) -> None:
    """A database from a newer sipai is not touched."""
    path = tmp_path / "sipai.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.close()
    store = Store(path)
    with pytest.raises(RuntimeError, match="newer than this sipai"):
        await store.open()
    await store.close()


async def test_duplicate_call_id(store: Store) -> None:
    """A call_id can be stored once."""
    await store.insert_call("out-1-1", _request())
    with pytest.raises(DuplicateCallId):
        await store.insert_call("out-1-1", _request())


async def test_final_status_and_webhook_are_written_once_together(store: Store) -> None:
    """finish_call marks the call final with its outbox row; a second finish does nothing."""
    await store.insert_call("a", _request())
    await store.insert_call("b", _request(url=None))
    webhook = await store.finish_call("a", "busy", {"call_id": "a", "status": "busy"}, sip_code=486)
    assert webhook is not None
    assert await store.finish_call("a", "completed", {"status": "completed"}) is None
    assert await store.finish_call("b", "no_answer", {"status": "no_answer"}) is None
    a = await store.get_call("a")
    assert a is not None
    assert (a["status"], a["sip_code"], a["result"]["status"]) == ("busy", 486, "busy")
    assert [w["webhook_id"] for w in a["webhooks"]] == [webhook.webhook_id]
    b = await store.get_call("b")
    assert b is not None
    assert (b["status"], b["webhooks"]) == ("no_answer", [])
    assert await store.webhook_counts() == {"pending": 1}
    with pytest.raises(ValueError, match="not a final status"):
        await store.finish_call("a", "ringing", {})


async def test_listing_and_queue_order(store: Store) -> None:
    """Records list newest first in pages; queued calls come back oldest first."""
    for n in range(5):
        await store.insert_call(f"c{n}", _request())
    await store.update_call("c1", status="ringing", worker=0, sip_call="w0-1")
    first = await store.list_calls(limit=2)
    assert [r["call_id"] for r in first] == ["c4", "c3"]
    second = await store.list_calls(limit=2, before=first[-1]["seq"])
    assert [r["call_id"] for r in second] == ["c2", "c1"]
    queued = await store.calls_with_status(frozenset({"queued"}))
    assert [r["call_id"] for r in queued] == ["c0", "c2", "c3", "c4"]
    in_flight = await store.calls_with_status(frozenset({"ringing"}))
    assert [(r["call_id"], r["worker"]) for r in in_flight] == [("c1", 0)]
    assert "completed" in FINAL_STATUSES


async def test_inbound_calls_keep_their_transcript(store: Store) -> None:
    """Turns are appended in order; the end is written once; listing is newest first."""
    await store.insert_inbound("in-1", "sip-1", "1001", 0)
    await store.add_turn("in-1", "agent", 'Hello, "welcome".', 0.4)
    await store.add_turn("in-1", "caller", "Hi, I need help.", 2.5)
    await store.finish_inbound("in-1", "completed", "end_call")
    await store.finish_inbound("in-1", "failed", "again")  # final already: no change
    await store.insert_inbound("in-2", "sip-2", "1002", 1)
    first, second = await store.list_inbound(10)
    assert first["call_id"] == "in-2"
    assert (second["status"], second["end_cause"]) == ("completed", "end_call")
    assert second["transcript"] == [
        {"role": "agent", "text": 'Hello, "welcome".', "at": 0.4},
        {"role": "caller", "text": "Hi, I need help.", "at": 2.5},
    ]
    assert await store.interrupt_inbound() == ["in-2"]  # in-2 was left in progress
    assert (await store.list_inbound(1))[0]["status"] == "failed"


async def test_version_1_database_is_upgraded(tmp_path: Path) -> None:
    """A database written by the first schema gains the inbound table and keeps its calls."""
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0])
    db.execute("PRAGMA user_version = 1")
    db.close()
    store = Store(path)
    await store.open()
    try:
        await store.insert_inbound("in-1", "sip-1", "1001", 0)
        assert len(await store.list_inbound(5)) == 1
    finally:
        await store.close()


async def test_inbound_message_and_its_webhook_are_queued_together(store: Store) -> None:
    """The message lands on its inbound call with a pending outbox row, due at once, whose
    attempts the inbound listing shows."""
    await store.insert_inbound("in-1", "sip-1", "1001", 0)
    payload = {"type": "inbound.message", "call_id": "in-1", "message": "call me", "at": 1.0}
    webhook = await store.queue_message("in-1", "call me", "http://127.0.0.1:9/m", payload)
    webhook_due = 1e12
    [due] = await store.due_webhooks(webhook_due)
    assert due == webhook
    assert (due.call_id, due.url, json.loads(due.body)) == ("in-1", "http://127.0.0.1:9/m", payload)
    await store.record_attempt(
        webhook.webhook_id,
        started_at=2.0,
        duration_ms=1.5,
        status_code=None,
        error="ConnectError",
        state="pending",
        next_attempt_at=webhook_due,
    )
    [record] = await store.list_inbound(5)
    assert record["message"] == "call me"
    [hook] = record["webhooks"]
    assert (hook["webhook_id"], hook["state"]) == (webhook.webhook_id, "pending")
    assert [a["error"] for a in hook["attempts"]] == ["ConnectError"]
    session_only = await store.queue_message(None, "hi", "http://127.0.0.1:9/m", payload)
    assert session_only.call_id is None  # an engine session of no call: only the webhook


async def test_version_3_outbox_keeps_its_rows_and_attempts(tmp_path: Path) -> None:
    """Upgrading to the outbox that also names inbound calls keeps every webhook, its attempts
    and the attempts' reference to the outbox."""
    path = tmp_path / "v3.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:3]:
        db.executescript(script)
    db.execute(
        "INSERT INTO calls (call_id, created_at, updated_at, request, extension, status)"
        " VALUES ('c1', 1, 1, '{}', '1001', 'completed')"
    )
    db.execute(
        "INSERT INTO outbox (webhook_id, call_id, url, body, created_at, state, attempts)"
        " VALUES ('msg_1', 'c1', 'http://127.0.0.1:9/h', '{}', 1, 'delivered', 1)"
    )
    db.execute(
        "INSERT INTO attempts (webhook_id, started_at, duration_ms, status_code)"
        " VALUES ('msg_1', 2, 3, 200)"
    )
    db.execute("PRAGMA user_version = 3")
    db.commit()
    db.close()
    store = Store(path)
    await store.open()
    try:
        record = await store.get_call("c1")
        assert record is not None
        [hook] = record["webhooks"]
        assert (hook["webhook_id"], hook["state"]) == ("msg_1", "delivered")
        assert [a["status_code"] for a in hook["attempts"]] == [200]
    finally:
        await store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA foreign_keys=ON")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO attempts (webhook_id, started_at, duration_ms) VALUES ('msg_x', 1, 1)"
        )
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.close()


def _recording(path: Path, call_id: str) -> RecordingInfo:
    return RecordingInfo(str(path / f"{call_id}.wav"), 2.0, 64044, "ab" * 32, True, 0, 8000)


def _view(record: dict) -> dict:
    return {"type": "inbound.ended", "call_id": record["call_id"], "status": record["status"]}


async def test_version_4_database_is_upgraded_keeping_rows_and_kinds(tmp_path: Path) -> None:
    """A version 4 file keeps its calls and webhooks; an inbound.message row gets its kind,
    a result row the default, and the recordings table is there."""
    path = tmp_path / "v4.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        db.executescript(script)
    db.execute(
        "INSERT INTO calls (call_id, created_at, updated_at, request, extension, status)"
        " VALUES ('c1', 1, 1, '{}', '1001', 'completed')"
    )
    db.execute(
        "INSERT INTO inbound_calls (call_id, sip_call_id, caller, worker, started_at, status)"
        " VALUES ('in-1', 's', '1002', 0, 1, 'completed')"
    )
    for webhook_id, call_id, body in (
        ("msg_r", "c1", '{"call_id":"c1","status":"completed"}'),
        ("msg_m", "in-1", '{"type":"inbound.message","call_id":"in-1","message":"hi"}'),
    ):
        db.execute(
            "INSERT INTO outbox (webhook_id, call_id, url, body, created_at, state)"
            " VALUES (?, ?, 'http://127.0.0.1:9/h', ?, 1, 'delivered')",
            (webhook_id, call_id, body),
        )
    db.execute("PRAGMA user_version = 4")
    db.commit()
    db.close()
    store = Store(path)
    await store.open()
    try:
        outbound = await store.get_call("c1")
        inbound = await store.get_inbound("in-1")
        assert outbound is not None
        assert inbound is not None
        assert [w["kind"] for w in outbound["webhooks"]] == ["result"]
        assert [w["kind"] for w in inbound["webhooks"]] == ["inbound.message"]
        assert (outbound["black_box"], outbound["recording"], inbound["recording"]) == (
            None,
            None,
            None,
        )
        await store.save_recording("c1", "outbound", _recording(tmp_path, "c1"))
        saved = await store.get_recording("c1")
        assert saved is not None
        assert (saved["direction"], saved["complete"], saved["rate"]) == ("outbound", True, 8000)
        assert store.status_counts() == {"completed": 1}
        assert store.webhook_state_counts() == {"delivered": 2}
    finally:
        await store.close()


async def test_version_5_database_gains_direction_keeping_rows(tmp_path: Path) -> None:
    """A version 5 file's inbound calls read direction inbound and stay listed as inbound;
    a browser call stored after the upgrade is listed under web only."""
    path = tmp_path / "v5.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:5]:
        db.executescript(script)
    db.execute(
        "INSERT INTO inbound_calls (call_id, sip_call_id, caller, worker, started_at, status,"
        " extension) VALUES ('in-1', 's', '1002', 0, 1, 'completed', '1000')"
    )
    db.execute("PRAGMA user_version = 5")
    db.commit()
    db.close()
    store = Store(path)
    await store.open()
    try:
        old = await store.get_inbound("in-1")
        assert old is not None
        assert (old["direction"], old["caller"], old["extension"]) == ("inbound", "1002", "1000")
        await store.insert_inbound("in-2", "webrtc:1", "web:default", 1000, direction="web")
        web = await store.get_inbound("in-2")
        assert web is not None
        assert web["direction"] == "web"
        assert (inbound_view(old)["direction"], inbound_view(web)["direction"]) == (
            "inbound",
            "web",
        )
        assert [r["call_id"] for r in await store.list_inbound(10)] == ["in-1"]
        assert [r["call_id"] for r in await store.list_inbound(10, direction="web")] == ["in-2"]
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    db.close()


async def test_version_6_database_gains_idempotency_keys(tmp_path: Path) -> None:
    """A version 6 file opens at version 7 with an empty idempotency_keys table keyed by
    (scope, key); calls are stored as before."""
    path = tmp_path / "v6.db"
    db = sqlite3.connect(path)
    for script in MIGRATIONS[:6]:
        db.executescript(script)
    db.execute("PRAGMA user_version = 6")
    db.commit()
    db.close()
    store = Store(path)
    await store.open()
    try:
        await store.insert_call("c1", _request())
        assert (await store.get_call("c1")) is not None
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS) == 7
    assert db.execute("SELECT count(*) FROM idempotency_keys").fetchone()[0] == 0
    columns = [row[1] for row in db.execute("PRAGMA table_info(idempotency_keys)")]
    assert columns == ["scope", "key", "body_sha256", "call_id", "response", "created_at"]
    db.execute("INSERT INTO idempotency_keys VALUES ('', 'k', 'h', 'c1', '{}', 1)")
    with pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO idempotency_keys VALUES ('', 'k', 'h2', 'c2', '{}', 2)")
    db.close()


async def test_inbound_finish_and_its_webhook_are_written_together(
    store: Store, tmp_path: Path
) -> None:
    """finish_inbound writes the status, black box, answer time, recording and the
    inbound.ended outbox row built from the finished record, once only."""
    await store.insert_inbound("in-1", "sip-1", "1001", 0, "1000")
    webhook = await store.finish_inbound(
        "in-1",
        "completed",
        "caller hung up",
        black_box={"version": 1, "connect_seconds": 4.0},
        connect_seconds=4.0,
        recording=_recording(tmp_path, "in-1"),
        webhook_url="http://127.0.0.1:9/in",
        event=_view,
    )
    assert webhook is not None
    again = await store.finish_inbound(
        "in-1", "failed", "again", webhook_url="http://127.0.0.1:9/in", event=_view
    )
    assert again is None
    record = await store.get_inbound("in-1")
    assert record is not None
    assert (record["status"], record["end_cause"], record["extension"]) == (
        "completed",
        "caller hung up",
        "1000",
    )
    assert record["black_box"] == {"version": 1, "connect_seconds": 4.0}
    assert record["ended_at"] - record["answered_at"] == pytest.approx(4.0)
    assert record["recording"]["sha256"] == "ab" * 32
    [hook] = record["webhooks"]
    assert (hook["webhook_id"], hook["kind"], hook["state"]) == (
        webhook.webhook_id,
        "inbound.ended",
        "pending",
    )
    assert json.loads(webhook.body) == {
        "type": "inbound.ended",
        "call_id": "in-1",
        "status": "completed",
    }
    [due] = await store.due_webhooks(1e12)
    assert (due.kind, due.body) == ("inbound.ended", webhook.body)
    await store.insert_inbound("in-2", "sip-2", "1001", 0)
    assert await store.finish_inbound("in-2", "completed", "end_call") is None  # no URL: no row
    assert (await store.get_inbound("in-2") or {})["webhooks"] == []


async def test_status_counts_follow_every_transition(store: Store, tmp_path: Path) -> None:
    """The in-memory counts of calls by status and webhooks by state equal a GROUP BY over
    the tables after inserts, updates, finishes, attempts, an interrupted inbound call's
    webhook and a prune."""
    db = sqlite3.connect(store.path)

    def grouped(query: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in db.execute(query)}

    def check(step: str) -> None:
        calls = grouped("SELECT status, COUNT(*) FROM calls GROUP BY status")
        hooks = grouped("SELECT state, COUNT(*) FROM outbox GROUP BY state")
        assert store.status_counts() == calls, (step, store.status_counts(), calls)
        assert store.webhook_state_counts() == hooks, (step, store.webhook_state_counts(), hooks)

    try:
        for n in range(4):
            await store.insert_call(f"c{n}", _request())
        check("insert")
        await store.update_call("c0", status="dialing")
        await store.update_call("c0", status="ringing", worker=0)
        await store.update_call("c1", status="dialing")
        await store.update_call("c1", sip_code=180)  # no status: no move
        check("update")
        hook = await store.finish_call("c0", "busy", {"status": "busy"}, ended_at=10.0)
        await store.finish_call("c1", "completed", {"status": "completed"}, ended_at=10.0)
        await store.finish_call("c1", "failed", {"status": "failed"})  # final already
        assert not await store.update_call("c1", status="answered")  # final already
        await store.queue_progress("c2", "http://127.0.0.1:9/h", {"type": "call.progress"})
        await store.insert_inbound("in-1", "sip-1", "1001", 0)
        await store.queue_message("in-1", "hi", "http://127.0.0.1:9/m", {"type": "m"})
        check("finish")
        assert hook is not None
        await store.record_attempt(
            hook.webhook_id,
            started_at=11.0,
            duration_ms=1.0,
            status_code=200,
            error=None,
            state="delivered",
            next_attempt_at=None,
        )
        check("attempt")
        assert len(await store.interrupt_inbound("http://127.0.0.1:9/in", _view)) == 1
        check("interrupt")
        assert store.status_counts() == {"busy": 1, "completed": 1, "queued": 2}
        await store.prune(cutoff=20.0, recording_cutoff=None)
        check("prune")
        assert store.status_counts() == {"completed": 1, "queued": 2}  # c1's webhook pends
        assert store.webhook_state_counts() == {"pending": 4}
    finally:
        db.close()


async def test_an_inbound_id_cannot_be_reused_by_post(store: Store) -> None:
    """A caller-supplied call_id that names an inbound call is refused like a taken one."""
    await store.insert_inbound("in-0123456789abcdef", "sip-1", "1001", 0)
    with pytest.raises(DuplicateCallId):
        await store.insert_call("in-0123456789abcdef", _request())
    assert await store.get_call("in-0123456789abcdef") is None
    assert store.status_counts() == {}
