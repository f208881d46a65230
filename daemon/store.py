"""The call store: SQLite (WAL) with call records, the webhook outbox and delivery attempts.

The supervisor is the only writer. Every statement runs on one dedicated thread (the audited
door for blocking database work); the coroutine methods hand work to it. A call's final status
and its webhook are written in one transaction, so a result is never marked final without its
webhook, nor the reverse. The schema is versioned with ``PRAGMA user_version`` and upgraded by
the migrations below, in order, at open.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

T = TypeVar("T")

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE calls (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL UNIQUE,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        request TEXT NOT NULL,
        extension TEXT NOT NULL,
        callback_url TEXT,
        status TEXT NOT NULL,
        sip_code INTEGER,
        sip_reason TEXT,
        worker INTEGER,
        sip_call TEXT,
        dialed_at REAL,
        answered_at REAL,
        ended_at REAL,
        result TEXT
    );
    CREATE INDEX calls_by_status ON calls(status, seq);
    CREATE TABLE outbox (
        webhook_id TEXT PRIMARY KEY,
        call_id TEXT NOT NULL REFERENCES calls(call_id),
        url TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at REAL NOT NULL,
        state TEXT NOT NULL,
        next_attempt_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
    CREATE TABLE attempts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        webhook_id TEXT NOT NULL REFERENCES outbox(webhook_id),
        started_at REAL NOT NULL,
        duration_ms REAL NOT NULL,
        status_code INTEGER,
        error TEXT
    );
    CREATE INDEX attempts_by_webhook ON attempts(webhook_id, id);
    """,
    """
    CREATE TABLE inbound_calls (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        call_id TEXT NOT NULL UNIQUE,
        sip_call_id TEXT NOT NULL,
        caller TEXT NOT NULL,
        worker INTEGER NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        status TEXT NOT NULL,
        end_cause TEXT,
        error TEXT,
        transcript TEXT NOT NULL DEFAULT '[]'
    );
    """,
    """
    ALTER TABLE inbound_calls ADD COLUMN message TEXT;
    """,
    # The outbox also carries inbound calls' webhooks (inbound.message): its call_id names a
    # row of calls or of inbound_calls, so it loses its reference to calls (rebuilt, as SQLite
    # requires, with foreign keys off during the migration).
    """
    CREATE TABLE outbox_new (
        webhook_id TEXT PRIMARY KEY,
        call_id TEXT,
        url TEXT NOT NULL,
        body TEXT NOT NULL,
        created_at REAL NOT NULL,
        state TEXT NOT NULL,
        next_attempt_at REAL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO outbox_new (webhook_id, call_id, url, body, created_at, state,
        next_attempt_at, attempts)
        SELECT webhook_id, call_id, url, body, created_at, state, next_attempt_at, attempts
        FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_new RENAME TO outbox;
    CREATE INDEX outbox_due ON outbox(state, next_attempt_at);
    CREATE INDEX outbox_by_call ON outbox(call_id, created_at);
    """,
    # Calls you can see and hear: each call's black box, inbound calls' called user and
    # answer time, the kind of each webhook (result, inbound.message, inbound.ended,
    # call.progress), recordings, and the indexes retention deletes by.
    """
    ALTER TABLE calls ADD COLUMN black_box TEXT;
    ALTER TABLE inbound_calls ADD COLUMN black_box TEXT;
    ALTER TABLE inbound_calls ADD COLUMN extension TEXT;
    ALTER TABLE inbound_calls ADD COLUMN answered_at REAL;
    ALTER TABLE outbox ADD COLUMN kind TEXT NOT NULL DEFAULT 'result';
    UPDATE outbox SET kind = 'inbound.message' WHERE body LIKE '{"type":"inbound.message"%';
    CREATE TABLE recordings (
        call_id TEXT PRIMARY KEY,
        direction TEXT NOT NULL,
        path TEXT NOT NULL,
        created_at REAL NOT NULL,
        duration_seconds REAL NOT NULL,
        bytes INTEGER NOT NULL,
        sha256 TEXT NOT NULL,
        complete INTEGER NOT NULL,
        dropped_frames INTEGER NOT NULL,
        rate INTEGER NOT NULL
    );
    CREATE INDEX recordings_by_age ON recordings(created_at);
    CREATE INDEX calls_by_end ON calls(ended_at);
    CREATE INDEX inbound_by_end ON inbound_calls(ended_at);
    """,
)

FINAL_STATUSES = frozenset({"completed", "no_answer", "failed", "busy"})
IN_FLIGHT_STATUSES = frozenset({"dialing", "ringing", "answered"})


class DuplicateCallId(Exception):
    """A call with this call_id already exists."""


@dataclass(frozen=True)
class Webhook:
    webhook_id: str
    call_id: str | None  # an outbound or inbound call; None: an engine session of no call
    url: str
    body: str  # the exact JSON sent (and signed), the same on every attempt
    attempts: int
    state: str  # pending | delivered | gone (410) | abandoned (schedule exhausted)


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sipai-store")
        self._db: sqlite3.Connection | None = None  # used on the store thread only

    # -- the one door ----------------------------------------------------------------------

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            assert self._db is not None, "the store is not open"
            return work(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=OFF")  # while migrating (no-op inside a transaction)
        db.execute("PRAGMA busy_timeout=5000")
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path}: schema version {version} is newer than this sipai "
                f"({len(MIGRATIONS)}); refusing to touch it"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, script.split(";")):
                db.execute(statement)
            broken = db.execute("PRAGMA foreign_key_check").fetchall()
            if broken:
                db.execute("ROLLBACK")
                raise RuntimeError(f"{self.path}: migration {number} breaks references: {broken}")
            db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        db.execute("PRAGMA foreign_keys=ON")
        self._db = db

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    # -- calls -----------------------------------------------------------------------------

    async def insert_call(self, call_id: str, request: dict[str, Any]) -> None:
        """Store a new queued call; DuplicateCallId if the id is taken."""
        now = time.time()

        def insert(db: sqlite3.Connection) -> None:
            try:
                db.execute(
                    "INSERT INTO calls (call_id, created_at, updated_at, request, extension,"
                    " callback_url, status) VALUES (?, ?, ?, ?, ?, ?, 'queued')",
                    (
                        call_id,
                        now,
                        now,
                        json.dumps(request),
                        request["extension"],
                        request.get("callback_url"),
                    ),
                )
            except sqlite3.IntegrityError:
                raise DuplicateCallId(call_id) from None

        await self._run(insert)

    async def update_call(self, call_id: str, **fields: Any) -> None:
        """Set columns of a call that is not final (status transitions, SIP codes, times)."""
        columns = ", ".join(f"{name} = ?" for name in fields)

        def update(db: sqlite3.Connection) -> None:
            db.execute(
                f"UPDATE calls SET {columns}, updated_at = ? WHERE call_id = ?",  # noqa: S608 - column names are ours
                (*fields.values(), time.time(), call_id),
            )

        await self._run(update)

    async def finish_call(
        self, call_id: str, status: str, result: dict[str, Any], **fields: Any
    ) -> Webhook | None:
        """Mark the call final and queue its webhook in one transaction (once only)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"{status!r} is not a final status")
        now = time.time()
        body = json.dumps(result, separators=(",", ":"))

        def finish(db: sqlite3.Connection) -> Webhook | None:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT status, callback_url FROM calls WHERE call_id = ?", (call_id,)
                ).fetchone()
                if row is None or row["status"] in FINAL_STATUSES:
                    db.execute("ROLLBACK")
                    return None
                assignments = "".join(f", {name} = ?" for name in fields)
                db.execute(
                    f"UPDATE calls SET status = ?, result = ?, updated_at = ?{assignments}"  # noqa: S608
                    " WHERE call_id = ?",
                    (status, body, now, *fields.values(), call_id),
                )
                webhook = None
                if row["callback_url"]:
                    webhook = Webhook(
                        f"msg_{uuid.uuid4().hex}", call_id, row["callback_url"], body, 0, "pending"
                    )
                    db.execute(
                        "INSERT INTO outbox (webhook_id, call_id, url, body, created_at, state,"
                        " next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                        (webhook.webhook_id, call_id, webhook.url, body, now, now),
                    )
                db.execute("COMMIT")
                return webhook
            except BaseException:
                db.execute("ROLLBACK")
                raise

        return await self._run(finish)

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The call record with its webhook deliveries and their attempts, or None."""

        def get(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            if row is None:
                return None
            record = _call_record(row)
            record["webhooks"] = _webhooks_of(db, call_id)
            return record

        return await self._run(get)

    async def list_calls(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first; ``before`` is the ``seq`` of the last record of the previous page."""

        def page(db: sqlite3.Connection) -> list[dict[str, Any]]:
            return [_call_record(row) for row in _newest(db, "calls", limit, before)]

        return await self._run(page)

    async def calls_with_status(self, statuses: frozenset[str]) -> list[dict[str, Any]]:
        """Calls in the given statuses, oldest first (FIFO)."""
        marks = ",".join("?" * len(statuses))

        def select(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute(
                f"SELECT * FROM calls WHERE status IN ({marks}) ORDER BY seq",  # noqa: S608
                tuple(statuses),
            )
            return [_call_record(row) for row in rows]

        return await self._run(select)

    # -- inbound calls ---------------------------------------------------------------------

    async def insert_inbound(
        self, call_id: str, sip_call_id: str, caller: str, worker: int
    ) -> None:
        now = time.time()
        await self._run(
            lambda db: db.execute(
                "INSERT INTO inbound_calls (call_id, sip_call_id, caller, worker, started_at,"
                " status) VALUES (?, ?, ?, ?, ?, 'in_progress')",
                (call_id, sip_call_id, caller, worker, now),
            )
        )

    async def add_turn(self, call_id: str, role: str, text: str, at: float) -> None:
        """Append one transcript turn (``at``: seconds since the call was answered)."""
        turn = json.dumps({"role": role, "text": text, "at": at})
        await self._run(
            lambda db: db.execute(
                "UPDATE inbound_calls SET transcript = json_insert(transcript, '$[#]', json(?))"
                " WHERE call_id = ?",
                (turn, call_id),
            )
        )

    async def finish_inbound(
        self, call_id: str, status: str, end_cause: str, error: str | None = None
    ) -> None:
        now = time.time()
        await self._run(
            lambda db: db.execute(
                "UPDATE inbound_calls SET status = ?, end_cause = ?, ended_at = ?,"
                " error = COALESCE(?, error) WHERE call_id = ? AND status = 'in_progress'",
                (status, end_cause, now, error, call_id),
            )
        )

    async def set_message(self, call_id: str, message: str) -> None:
        """The message the receptionist took on this call."""
        await self._run(
            lambda db: db.execute(
                "UPDATE inbound_calls SET message = ? WHERE call_id = ?", (message, call_id)
            )
        )

    async def queue_message(
        self, call_id: str | None, message: str, url: str, payload: dict[str, Any]
    ) -> Webhook:
        """The receptionist's message on its call and its webhook to ``url``, in one transaction.

        ``call_id`` None: an engine session that belongs to no call (only the webhook is kept).
        """
        now = time.time()
        body = json.dumps(payload, separators=(",", ":"))
        webhook = Webhook(f"msg_{uuid.uuid4().hex}", call_id, url, body, 0, "pending")

        def queue(db: sqlite3.Connection) -> Webhook:
            db.execute("BEGIN IMMEDIATE")
            try:
                if call_id is not None:
                    db.execute(
                        "UPDATE inbound_calls SET message = ? WHERE call_id = ?", (message, call_id)
                    )
                db.execute(
                    "INSERT INTO outbox (webhook_id, call_id, url, body, created_at, state,"
                    " next_attempt_at) VALUES (?, ?, ?, ?, ?, 'pending', ?)",
                    (webhook.webhook_id, call_id, url, body, now, now),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return webhook

        return await self._run(queue)

    async def interrupt_inbound(self) -> int:
        """At start-up: calls left in progress by a previous process are over."""
        now = time.time()

        def interrupt(db: sqlite3.Connection) -> int:
            cursor = db.execute(
                "UPDATE inbound_calls SET status = 'failed', ended_at = ?,"
                " end_cause = 'interrupted: the daemon stopped during the call'"
                " WHERE status = 'in_progress'",
                (now,),
            )
            return cursor.rowcount

        return await self._run(interrupt)

    async def list_inbound(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first, transcripts included."""

        def page(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = _newest(db, "inbound_calls", limit, before)
            return [
                {
                    **dict(row),
                    "transcript": json.loads(row["transcript"]),
                    "webhooks": _webhooks_of(db, row["call_id"]),
                }
                for row in rows
            ]

        return await self._run(page)

    # -- outbox ----------------------------------------------------------------------------

    async def due_webhooks(self, now: float, limit: int = 16) -> list[Webhook]:
        def due(db: sqlite3.Connection) -> list[Webhook]:
            rows = db.execute(
                "SELECT * FROM outbox WHERE state = 'pending' AND next_attempt_at <= ?"
                " ORDER BY next_attempt_at LIMIT ?",
                (now, limit),
            )
            return [_webhook(row) for row in rows]

        return await self._run(due)

    async def next_webhook_due(self) -> float | None:
        def first(db: sqlite3.Connection) -> float | None:
            row = db.execute(
                "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending'"
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._run(first)

    async def record_attempt(
        self,
        webhook_id: str,
        *,
        started_at: float,
        duration_ms: float,
        status_code: int | None,
        error: str | None,
        state: str,
        next_attempt_at: float | None,
    ) -> None:
        def record(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO attempts (webhook_id, started_at, duration_ms, status_code, error)"
                " VALUES (?, ?, ?, ?, ?)",
                (webhook_id, started_at, duration_ms, status_code, error),
            )
            db.execute(
                "UPDATE outbox SET attempts = attempts + 1, state = ?, next_attempt_at = ?"
                " WHERE webhook_id = ?",
                (state, next_attempt_at, webhook_id),
            )
            db.execute("COMMIT")

        await self._run(record)

    async def call_counts(self) -> dict[str, int]:
        def counts(db: sqlite3.Connection) -> dict[str, int]:
            rows = db.execute("SELECT status, COUNT(*) FROM calls GROUP BY status")
            return {row[0]: int(row[1]) for row in rows}

        return await self._run(counts)

    async def webhook_counts(self) -> dict[str, int]:
        def counts(db: sqlite3.Connection) -> dict[str, int]:
            rows = db.execute("SELECT state, COUNT(*) FROM outbox GROUP BY state")
            return {row[0]: int(row[1]) for row in rows}

        return await self._run(counts)


def _newest(
    db: sqlite3.Connection, table: Literal["calls", "inbound_calls"], limit: int, before: int | None
) -> sqlite3.Cursor:
    """One page of ``table``, newest first: up to ``limit`` rows with ``seq`` below ``before``."""
    return db.execute(
        f"SELECT * FROM {table} WHERE seq < ? ORDER BY seq DESC LIMIT ?",  # noqa: S608
        (before if before is not None else 2**62, limit),
    )


def _call_record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["request"] = json.loads(record["request"])
    record["result"] = json.loads(record["result"]) if record["result"] else None
    return record


def _webhooks_of(db: sqlite3.Connection, call_id: str) -> list[dict[str, Any]]:
    """A call's webhook deliveries, oldest first, each with its attempts."""
    webhooks = []
    for hook in db.execute(
        "SELECT * FROM outbox WHERE call_id = ? ORDER BY created_at", (call_id,)
    ).fetchall():
        attempts = [
            {
                "at": a["started_at"],
                "status_code": a["status_code"],
                "error": a["error"],
                "duration_ms": a["duration_ms"],
            }
            for a in db.execute(
                "SELECT * FROM attempts WHERE webhook_id = ? ORDER BY id", (hook["webhook_id"],)
            )
        ]
        webhooks.append(
            {
                "webhook_id": hook["webhook_id"],
                "url": hook["url"],
                "state": hook["state"],
                "next_attempt_at": hook["next_attempt_at"],
                "attempts": attempts,
            }
        )
    return webhooks


def _webhook(row: sqlite3.Row) -> Webhook:
    return Webhook(
        row["webhook_id"], row["call_id"], row["url"], row["body"], row["attempts"], row["state"]
    )
