"""The call store: SQLite (WAL) with call records, the webhook outbox and delivery attempts.

The supervisor is the only writer. Every statement runs on one dedicated thread (the audited
door for blocking database work); the coroutine methods hand work to it. A call's final status
and its webhook are written in one transaction, so a result is never marked final without its
webhook, nor the reverse. The schema is versioned with ``PRAGMA user_version`` and upgraded by
the migrations below, in order, at open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from daemon.blackbox import RecordingInfo

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
    # Browser calls: an inbound call is a SIP call ('inbound') or a browser's ('web').
    """
    ALTER TABLE inbound_calls ADD COLUMN direction TEXT NOT NULL DEFAULT 'inbound';
    """,
    # Idempotency-Key on POST /call: the first 200 response of each (caller, key), with the
    # SHA-256 of the request body it answered.
    """
    CREATE TABLE idempotency_keys (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        body_sha256 TEXT NOT NULL,
        call_id TEXT NOT NULL,
        response TEXT NOT NULL,
        created_at REAL NOT NULL,
        PRIMARY KEY (scope, key)
    );
    CREATE INDEX idempotency_by_age ON idempotency_keys(created_at);
    """,
)

IDEMPOTENCY_SECONDS = 86400.0  # how long an Idempotency-Key is remembered
FINAL_STATUSES = frozenset({"completed", "no_answer", "failed", "busy"})
IN_FLIGHT_STATUSES = frozenset({"dialing", "ringing", "answered"})
# The end cause of an inbound call a previous process left in progress.
INTERRUPTED_CAUSE = "interrupted: the daemon stopped during the call"
# What an outbox row carries: the contract's result webhook, the receptionist's message, an
# inbound call's end, an outbound call's progress (asked for by the request).
WEBHOOK_KINDS = ("result", "inbound.message", "inbound.ended", "call.progress")

Counts = dict[str, int]
View = Callable[[dict[str, Any]], dict[str, Any]]


class DuplicateCallId(Exception):
    """A call with this call_id already exists."""


@dataclass(frozen=True)
class IdempotencyClaim:
    """An ``Idempotency-Key`` to remember with a new call: the caller's scope (its token's
    name, ``""`` without tokens), the key, the SHA-256 of the validated body and the
    response the first request got (the one a replay returns)."""

    scope: str
    key: str
    body_sha256: str
    response: dict[str, Any]


@dataclass(frozen=True)
class IdempotencyRecord:
    """A remembered key: the call it placed and the response to replay."""

    scope: str
    key: str
    body_sha256: str
    call_id: str
    response: dict[str, Any]
    created_at: float


class IdempotentReplay(Exception):
    """The key was claimed already (by a request that came first): nothing was stored."""

    def __init__(self, record: IdempotencyRecord) -> None:
        super().__init__(f"Idempotency-Key {record.key!r} belongs to call {record.call_id}")
        self.record = record


@dataclass(frozen=True)
class Webhook:
    webhook_id: str
    call_id: str | None  # an outbound or inbound call; None: an engine session of no call
    url: str
    body: str  # the exact JSON sent (and signed), the same on every attempt
    attempts: int
    state: str  # pending | delivered | gone (410) | abandoned (schedule exhausted)
    kind: str = "result"  # one of WEBHOOK_KINDS
    created_at: float = 0.0  # when it was queued


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sipai-store")
        self._db: sqlite3.Connection | None = None  # used on the store thread only
        # Outbound calls by status and outbox rows by state, for the gauges: loaded at open,
        # replaced (never mutated) by the store thread after each transaction that moves a
        # status or a state; the loop reads them without a query, even once the store closed.
        self._status_counts: Counts = {}
        self._webhook_counts: Counts = {}

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
        self._status_counts = _group_counts(
            db, "SELECT status, COUNT(*) FROM calls GROUP BY status"
        )
        self._webhook_counts = _group_counts(
            db, "SELECT state, COUNT(*) FROM outbox GROUP BY state"
        )
        self._db = db

    async def close(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._executor, close)
        self._executor.shutdown(wait=True)

    # -- calls -----------------------------------------------------------------------------

    async def insert_call(
        self,
        call_id: str,
        request: dict[str, Any],
        *,
        idempotency: IdempotencyClaim | None = None,
        now: float | None = None,
    ) -> None:
        """Store a new queued call; DuplicateCallId if the id is taken, by an outbound or an
        inbound call (one id space: ``GET /call/{id}`` answers for both).

        With ``idempotency``, the key is claimed in the same transaction: if a live record of
        it exists already (a request with that key came first), IdempotentReplay carries it
        and nothing is stored; an expired one is replaced."""
        now = time.time() if now is None else now

        def insert(db: sqlite3.Connection) -> None:
            with _transaction(db):
                if idempotency is not None:
                    found = _live_key(db, idempotency.scope, idempotency.key, now)
                    if found is not None:
                        raise IdempotentReplay(found)
                if db.execute(
                    "SELECT 1 FROM inbound_calls WHERE call_id = ?", (call_id,)
                ).fetchone():
                    raise DuplicateCallId(call_id)
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
                if idempotency is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO idempotency_keys (scope, key, body_sha256,"
                        " call_id, response, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            idempotency.scope,
                            idempotency.key,
                            idempotency.body_sha256,
                            call_id,
                            json.dumps(idempotency.response, separators=(",", ":")),
                            now,
                        ),
                    )
            self._status_counts = _moved(self._status_counts, None, "queued")

        await self._run(insert)

    async def find_idempotency(
        self, scope: str, key: str, now: float | None = None
    ) -> IdempotencyRecord | None:
        """The live record of ``key`` in ``scope`` (younger than IDEMPOTENCY_SECONDS), or
        None."""
        now = time.time() if now is None else now
        return await self._run(lambda db: _live_key(db, scope, key, now))

    async def update_call(self, call_id: str, **fields: Any) -> bool:
        """Set columns of a call that is not final (status transitions, SIP codes, times); a
        call already final is left as it is (False)."""
        columns = ", ".join(f"{name} = ?" for name in fields)
        finals = ",".join("?" * len(FINAL_STATUSES))

        def update(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                row = db.execute(
                    "SELECT status FROM calls WHERE call_id = ?", (call_id,)
                ).fetchone()
                changed = db.execute(
                    f"UPDATE calls SET {columns}, updated_at = ? WHERE call_id = ?"  # noqa: S608 - column names are ours
                    f" AND status NOT IN ({finals})",
                    (*fields.values(), time.time(), call_id, *FINAL_STATUSES),
                ).rowcount
            if changed and "status" in fields:
                self._status_counts = _moved(self._status_counts, row["status"], fields["status"])
            return bool(changed)

        return await self._run(update)

    async def finish_call(
        self,
        call_id: str,
        status: str,
        result: dict[str, Any],
        *,
        black_box: dict[str, Any] | None = None,
        recording: RecordingInfo | None = None,
        **fields: Any,
    ) -> Webhook | None:
        """Mark the call final and queue its webhook in one transaction (once only), with the
        call's black box and its recording's row."""
        finished = await self.finish_call_once(
            call_id, status, result, black_box=black_box, recording=recording, **fields
        )
        return finished[1]

    async def finish_call_once(
        self,
        call_id: str,
        status: str,
        result: dict[str, Any],
        *,
        black_box: dict[str, Any] | None = None,
        recording: RecordingInfo | None = None,
        **fields: Any,
    ) -> tuple[bool, Webhook | None]:
        """:meth:`finish_call`, telling too whether the call was finished now (False: it was
        final already, or unknown)."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"{status!r} is not a final status")
        now = time.time()
        body = json.dumps(result, separators=(",", ":"))
        if black_box is not None:
            fields["black_box"] = json.dumps(black_box, separators=(",", ":"))

        def finish(db: sqlite3.Connection) -> tuple[bool, Webhook | None]:
            with _transaction(db):
                row = db.execute(
                    "SELECT status, callback_url FROM calls WHERE call_id = ?", (call_id,)
                ).fetchone()
                if row is None or row["status"] in FINAL_STATUSES:
                    return False, None
                assignments = "".join(f", {name} = ?" for name in fields)
                db.execute(
                    f"UPDATE calls SET status = ?, result = ?, updated_at = ?{assignments}"  # noqa: S608
                    " WHERE call_id = ?",
                    (status, body, now, *fields.values(), call_id),
                )
                if recording is not None:
                    _insert_recording(db, call_id, "outbound", recording, now)
                webhook = None
                if row["callback_url"]:
                    webhook = _queue(db, call_id, row["callback_url"], body, kind="result", now=now)
            self._status_counts = _moved(self._status_counts, row["status"], status)
            if webhook is not None:
                self._webhook_counts = _moved(self._webhook_counts, None, "pending")
            return True, webhook

        return await self._run(finish)

    async def attach_outcome(
        self,
        call_id: str,
        *,
        ended_at: float,
        black_box: dict[str, Any] | None = None,
        recording: RecordingInfo | None = None,
    ) -> bool:
        """Add what a call leaves once it has ended (its end time, black box and recording) to
        a call already final (its result decided before it hung up); the result and its
        webhook stay as they are. False if the call is not final (or unknown)."""
        now = time.time()
        fields: dict[str, Any] = {"ended_at": ended_at}
        if black_box is not None:
            fields["black_box"] = json.dumps(black_box, separators=(",", ":"))
        finals = ",".join("?" * len(FINAL_STATUSES))

        def attach(db: sqlite3.Connection) -> bool:
            with _transaction(db):
                assignments = "".join(f", {name} = ?" for name in fields)
                changed = db.execute(
                    f"UPDATE calls SET updated_at = ?{assignments}"  # noqa: S608 - our names
                    f" WHERE call_id = ? AND status IN ({finals})",
                    (now, *fields.values(), call_id, *FINAL_STATUSES),
                ).rowcount
                if changed and recording is not None:
                    _insert_recording(db, call_id, "outbound", recording, now)
            return bool(changed)

        return await self._run(attach)

    async def queue_progress(self, call_id: str, url: str, payload: dict[str, Any]) -> Webhook:
        """An outbound call's ``call.progress`` webhook (a status the request asked for)."""
        body = json.dumps(payload, separators=(",", ":"))

        def queue(db: sqlite3.Connection) -> Webhook:
            with _transaction(db):
                webhook = _queue(db, call_id, url, body, kind="call.progress", now=time.time())
            self._webhook_counts = _moved(self._webhook_counts, None, "pending")
            return webhook

        return await self._run(queue)

    async def get_call(self, call_id: str) -> dict[str, Any] | None:
        """The call record with its webhook deliveries and their attempts, or None."""

        def get(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT * FROM calls WHERE call_id = ?", (call_id,)).fetchone()
            if row is None:
                return None
            record = _call_record(row)
            record["recording"] = _recording_of(db, call_id)
            record["webhooks"] = _webhooks_of(db, call_id)
            return record

        return await self._run(get)

    async def list_calls(self, limit: int, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first, recordings included; ``before`` is the ``seq`` of the last record of
        the previous page."""

        def page(db: sqlite3.Connection) -> list[dict[str, Any]]:
            records = [_call_record(row) for row in _newest(db, "calls", limit, before)]
            for record in records:
                record["recording"] = _recording_of(db, record["call_id"])
            return records

        return await self._run(page)

    async def calls_without_end(self) -> list[dict[str, Any]]:
        """Final calls that were answered but have no end time (their result decided before
        they ended, then the daemon stopped), oldest first."""
        finals = ",".join("?" * len(FINAL_STATUSES))

        def select(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = db.execute(
                f"SELECT * FROM calls WHERE status IN ({finals})"  # noqa: S608 - our names
                " AND answered_at IS NOT NULL AND ended_at IS NULL ORDER BY seq",
                tuple(FINAL_STATUSES),
            )
            return [_call_record(row) for row in rows]

        return await self._run(select)

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
        self,
        call_id: str,
        sip_call_id: str,
        caller: str,
        worker: int,
        extension: str | None = None,
        *,
        direction: str = "inbound",
    ) -> None:
        """A new inbound call in progress; ``call_id`` is made by its worker, ``extension`` is
        the user it called, ``direction`` is ``inbound`` (SIP) or ``web`` (a browser)."""
        now = time.time()
        await self._run(
            lambda db: db.execute(
                "INSERT INTO inbound_calls (call_id, sip_call_id, caller, worker, started_at,"
                " status, extension, direction) VALUES (?, ?, ?, ?, ?, 'in_progress', ?, ?)",
                (call_id, sip_call_id, caller, worker, now, extension, direction),
            )
        )

    async def answer_inbound(self, call_id: str, at: float) -> None:
        """The inbound call in progress was answered at ``at`` (epoch seconds)."""
        await self._run(
            lambda db: db.execute(
                "UPDATE inbound_calls SET answered_at = ?"
                " WHERE call_id = ? AND status = 'in_progress'",
                (at, call_id),
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
        self,
        call_id: str,
        status: str,
        end_cause: str,
        error: str | None = None,
        *,
        black_box: dict[str, Any] | None = None,
        connect_seconds: float = 0.0,
        recording: RecordingInfo | None = None,
        webhook_url: str = "",
        event: View | None = None,
    ) -> Webhook | None:
        """End an inbound call in progress (once only): its status, cause, black box and
        recording, and, when ``webhook_url`` is set, its ``inbound.ended`` webhook whose body
        is ``event(record)``, all in one transaction. ``answered_at`` is the end less the
        ``connect_seconds`` the call was up (without them, the time the answer was recorded,
        if any)."""
        now = time.time()
        box = json.dumps(black_box, separators=(",", ":")) if black_box is not None else None
        answered_at = now - connect_seconds if connect_seconds > 0 else None

        def finish(db: sqlite3.Connection) -> Webhook | None:
            with _transaction(db):
                changed = db.execute(
                    "UPDATE inbound_calls SET status = ?, end_cause = ?, ended_at = ?,"
                    " error = COALESCE(?, error), black_box = ?,"
                    " answered_at = COALESCE(?, answered_at)"
                    " WHERE call_id = ? AND status = 'in_progress'",
                    (status, end_cause, now, error, box, answered_at, call_id),
                ).rowcount
                if not changed:
                    return None
                if recording is not None:
                    _insert_recording(db, call_id, "inbound", recording, now)
                if not webhook_url or event is None:
                    return None
                row = db.execute(
                    "SELECT * FROM inbound_calls WHERE call_id = ?", (call_id,)
                ).fetchone()
                payload = event(_inbound_record(db, row))
                body = json.dumps(payload, separators=(",", ":"))
                webhook = _queue(db, call_id, webhook_url, body, kind="inbound.ended", now=now)
            self._webhook_counts = _moved(self._webhook_counts, None, "pending")
            return webhook

        return await self._run(finish)

    async def get_inbound(self, call_id: str) -> dict[str, Any] | None:
        """The inbound call's record (transcript, black box, recording) with its webhook
        deliveries and their attempts, or None."""

        def get(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT * FROM inbound_calls WHERE call_id = ?", (call_id,)).fetchone()
            if row is None:
                return None
            return {**_inbound_record(db, row), "webhooks": _webhooks_of(db, call_id)}

        return await self._run(get)

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

        def queue(db: sqlite3.Connection) -> Webhook:
            with _transaction(db):
                if call_id is not None:
                    db.execute(
                        "UPDATE inbound_calls SET message = ? WHERE call_id = ?", (message, call_id)
                    )
                webhook = _queue(db, call_id, url, body, kind="inbound.message", now=now)
            self._webhook_counts = _moved(self._webhook_counts, None, "pending")
            return webhook

        return await self._run(queue)

    async def interrupt_inbound(
        self, webhook_url: str = "", event: View | None = None
    ) -> list[str]:
        """At start-up: calls left in progress by a previous process are over (failed); with
        ``webhook_url``, each gets its ``inbound.ended`` webhook (body ``event(record)``) in
        the same transaction. Returns their ids."""
        now = time.time()

        def interrupt(db: sqlite3.Connection) -> list[str]:
            with _transaction(db):
                ids = [
                    str(row[0])
                    for row in db.execute(
                        "SELECT call_id FROM inbound_calls WHERE status = 'in_progress'"
                    )
                ]
                db.execute(
                    "UPDATE inbound_calls SET status = 'failed', ended_at = ?, end_cause = ?"
                    " WHERE status = 'in_progress'",
                    (now, INTERRUPTED_CAUSE),
                )
                queued = 0
                if webhook_url and event is not None:
                    for call_id in ids:
                        row = db.execute(
                            "SELECT * FROM inbound_calls WHERE call_id = ?", (call_id,)
                        ).fetchone()
                        payload = event(_inbound_record(db, row))
                        body = json.dumps(payload, separators=(",", ":"))
                        _queue(db, call_id, webhook_url, body, kind="inbound.ended", now=now)
                        queued += 1
            self._webhook_counts = _changed(self._webhook_counts, {"pending": queued})
            return ids

        return await self._run(interrupt)

    async def list_inbound(
        self, limit: int, before: int | None = None, direction: str = "inbound"
    ) -> list[dict[str, Any]]:
        """Newest first, of one ``direction`` (``inbound`` or ``web``), transcripts, black
        boxes and recordings included."""

        def page(db: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = _newest(db, "inbound_calls", limit, before, direction).fetchall()
            return [
                {**_inbound_record(db, row), "webhooks": _webhooks_of(db, row["call_id"])}
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
            with _transaction(db):
                row = db.execute(
                    "SELECT state FROM outbox WHERE webhook_id = ?", (webhook_id,)
                ).fetchone()
                db.execute(
                    "INSERT INTO attempts (webhook_id, started_at, duration_ms, status_code,"
                    " error) VALUES (?, ?, ?, ?, ?)",
                    (webhook_id, started_at, duration_ms, status_code, error),
                )
                db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, state = ?, next_attempt_at = ?"
                    " WHERE webhook_id = ?",
                    (state, next_attempt_at, webhook_id),
                )
            if row is not None:
                self._webhook_counts = _moved(self._webhook_counts, row["state"], state)

        await self._run(record)

    def status_counts(self) -> Counts:
        """Outbound calls by status, from memory (no query; still answers once closed)."""
        return dict(self._status_counts)

    def webhook_state_counts(self) -> Counts:
        """Outbox rows by state, from memory (no query; still answers once closed)."""
        return dict(self._webhook_counts)

    async def call_counts(self) -> Counts:
        return self.status_counts()

    async def webhook_counts(self) -> Counts:
        return self.webhook_state_counts()

    # -- recordings ------------------------------------------------------------------------

    async def save_recording(self, call_id: str, direction: str, info: RecordingInfo) -> None:
        """The row of a call's finished recording (its file written by the worker)."""
        await self._run(lambda db: _insert_recording(db, call_id, direction, info, time.time()))

    async def get_recording(self, call_id: str) -> dict[str, Any] | None:
        """The recording row of a finished call (path, size, sha256...), or None."""

        def get(db: sqlite3.Connection) -> dict[str, Any] | None:
            row = db.execute("SELECT * FROM recordings WHERE call_id = ?", (call_id,)).fetchone()
            return _recording(row) if row is not None else None

        return await self._run(get)

    # -- retention -------------------------------------------------------------------------

    async def prune_idempotency(self, now: float | None = None) -> int:
        """Delete the idempotency keys older than IDEMPOTENCY_SECONDS; how many went."""
        now = time.time() if now is None else now

        def prune(db: sqlite3.Connection) -> int:
            with _transaction(db):
                return db.execute(
                    "DELETE FROM idempotency_keys WHERE created_at <= ?",
                    (now - IDEMPOTENCY_SECONDS,),
                ).rowcount

        return await self._run(prune)

    async def unowned(self, call_ids: list[str]) -> list[str]:
        """Those of ``call_ids`` (the names of recording files) that have no recording row and
        no call in progress: their files belong to nothing."""
        finals = ",".join("?" * len(FINAL_STATUSES))

        def unowned(db: sqlite3.Connection) -> list[str]:
            return [
                call_id
                for call_id in call_ids
                if db.execute(
                    "SELECT 1 FROM recordings WHERE call_id = ?1"  # noqa: S608
                    " UNION ALL SELECT 1 FROM calls"
                    f" WHERE call_id = ?1 AND status NOT IN ({finals})"
                    " UNION ALL SELECT 1 FROM inbound_calls"
                    " WHERE call_id = ?1 AND status = 'in_progress'",
                    (call_id, *FINAL_STATUSES),
                ).fetchone()
                is None
            ]

        return await self._run(unowned)

    async def prune(
        self, cutoff: float | None, recording_cutoff: float | None, *, now: float | None = None
    ) -> list[str]:
        """Delete what ended before the cutoffs (None: keep) and return the recording paths
        whose rows went, for the caller to delete the files.

        ``cutoff``: finished calls of both directions, their webhooks in a final state, their
        attempts and recordings; a call with a webhook still pending stays whole, and so does
        a call in progress. Webhooks of no call (an engine session's message) go by their own
        age. An outbound call whose Idempotency-Key is still live (at ``now``) stays, so a
        retry never replays a call that is gone. ``recording_cutoff``: recordings made before
        it (the calls stay)."""
        keys_after = (time.time() if now is None else now) - IDEMPOTENCY_SECONDS

        finals = ",".join("?" * len(FINAL_STATUSES))
        unsent = (
            "NOT EXISTS (SELECT 1 FROM outbox o"
            " WHERE o.call_id = c.call_id AND o.state = 'pending')"
        )

        def prune(db: sqlite3.Connection) -> list[str]:
            with _transaction(db):
                for table, key in (("doomed", "call_id"), ("doomed_hooks", "webhook_id")):
                    db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} ({key} TEXT PRIMARY KEY)")
                    db.execute(f"DELETE FROM {table}")  # noqa: S608 - our names
                if cutoff is not None:
                    db.execute(
                        "INSERT INTO doomed SELECT call_id FROM calls c"  # noqa: S608
                        f" WHERE status IN ({finals}) AND COALESCE(ended_at, updated_at) < ?"
                        f" AND {unsent} AND NOT EXISTS (SELECT 1 FROM idempotency_keys k"
                        " WHERE k.call_id = c.call_id AND k.created_at > ?)",
                        (*FINAL_STATUSES, cutoff, keys_after),
                    )
                    db.execute(
                        "INSERT OR IGNORE INTO doomed SELECT call_id FROM inbound_calls c"  # noqa: S608
                        f" WHERE status != 'in_progress' AND ended_at < ? AND {unsent}",
                        (cutoff,),
                    )
                    db.execute(
                        "INSERT INTO doomed_hooks SELECT webhook_id FROM outbox"
                        " WHERE call_id IN (SELECT call_id FROM doomed)"
                        " OR (call_id IS NULL AND state != 'pending' AND created_at < ?)",
                        (cutoff,),
                    )
                statuses = _group_counts(
                    db,
                    "SELECT status, COUNT(*) FROM calls"
                    " WHERE call_id IN (SELECT call_id FROM doomed) GROUP BY status",
                )
                states = _group_counts(
                    db,
                    "SELECT state, COUNT(*) FROM outbox"
                    " WHERE webhook_id IN (SELECT webhook_id FROM doomed_hooks) GROUP BY state",
                )
                old = (
                    "call_id IN (SELECT call_id FROM doomed) OR (? IS NOT NULL AND created_at < ?)"
                )
                paths = [
                    str(row[0])
                    for row in db.execute(
                        f"SELECT path FROM recordings WHERE {old}",  # noqa: S608
                        (recording_cutoff, recording_cutoff),
                    )
                ]
                db.execute(
                    f"DELETE FROM recordings WHERE {old}",  # noqa: S608
                    (recording_cutoff, recording_cutoff),
                )
                hooks = "webhook_id IN (SELECT webhook_id FROM doomed_hooks)"
                db.execute(f"DELETE FROM attempts WHERE {hooks}")  # noqa: S608
                db.execute(f"DELETE FROM outbox WHERE {hooks}")  # noqa: S608
                for table in ("calls", "inbound_calls"):
                    db.execute(
                        f"DELETE FROM {table} WHERE call_id IN (SELECT call_id FROM doomed)"  # noqa: S608
                    )
            self._status_counts = _changed(self._status_counts, _negated(statuses))
            self._webhook_counts = _changed(self._webhook_counts, _negated(states))
            return paths

        return await self._run(prune)


def _newest(
    db: sqlite3.Connection,
    table: Literal["calls", "inbound_calls"],
    limit: int,
    before: int | None,
    direction: str | None = None,
) -> sqlite3.Cursor:
    """One page of ``table``, newest first: up to ``limit`` rows with ``seq`` below ``before``
    (and of ``direction``, when given)."""
    if direction is None:
        return db.execute(
            f"SELECT * FROM {table} WHERE seq < ? ORDER BY seq DESC LIMIT ?",  # noqa: S608
            (before if before is not None else 2**62, limit),
        )
    return db.execute(
        f"SELECT * FROM {table} WHERE seq < ? AND direction = ?"  # noqa: S608
        " ORDER BY seq DESC LIMIT ?",
        (before if before is not None else 2**62, direction, limit),
    )


def _call_record(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["request"] = json.loads(record["request"])
    record["result"] = json.loads(record["result"]) if record["result"] else None
    record["black_box"] = json.loads(record["black_box"]) if record["black_box"] else None
    return record


def _inbound_record(db: sqlite3.Connection, row: sqlite3.Row) -> dict[str, Any]:
    """An inbound call's row with its transcript, black box and recording decoded."""
    record = dict(row)
    record["transcript"] = json.loads(record["transcript"])
    record["black_box"] = json.loads(record["black_box"]) if record["black_box"] else None
    record["recording"] = _recording_of(db, record["call_id"])
    return record


def _recording_of(db: sqlite3.Connection, call_id: str) -> dict[str, Any] | None:
    row = db.execute("SELECT * FROM recordings WHERE call_id = ?", (call_id,)).fetchone()
    return _recording(row) if row is not None else None


def _recording(row: sqlite3.Row) -> dict[str, Any]:
    record = dict(row)
    record["complete"] = bool(record["complete"])
    return record


def _insert_recording(
    db: sqlite3.Connection, call_id: str, direction: str, info: RecordingInfo, now: float
) -> None:
    db.execute(
        "INSERT OR REPLACE INTO recordings (call_id, direction, path, created_at,"
        " duration_seconds, bytes, sha256, complete, dropped_frames, rate)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            call_id,
            direction,
            info.path,
            now,
            info.duration_seconds,
            info.bytes,
            info.sha256,
            int(info.complete),
            info.dropped_frames,
            info.rate,
        ),
    )


def _queue(
    db: sqlite3.Connection, call_id: str | None, url: str, body: str, *, kind: str, now: float
) -> Webhook:
    """A new pending outbox row, due at once (inside the caller's transaction)."""
    webhook = Webhook(f"msg_{uuid.uuid4().hex}", call_id, url, body, 0, "pending", kind, now)
    db.execute(
        "INSERT INTO outbox (webhook_id, call_id, url, body, created_at, state,"
        " next_attempt_at, kind) VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)",
        (webhook.webhook_id, call_id, url, body, now, now, kind),
    )
    return webhook


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT; ROLLBACK on any exception (and the exception goes on)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _group_counts(db: sqlite3.Connection, query: str) -> Counts:
    return {str(row[0]): int(row[1]) for row in db.execute(query)}


def _moved(counts: Counts, old: str | None, new: str | None) -> Counts:
    """A copy of ``counts`` with one row moved from ``old`` to ``new`` (None: none)."""
    if old == new:
        return counts
    changes = {key: step for key, step in ((old, -1), (new, 1)) if key is not None}
    return _changed(counts, changes)


def _negated(counts: Counts) -> Counts:
    return {key: -value for key, value in counts.items()}


def _changed(counts: Counts, changes: Counts) -> Counts:
    """A copy of ``counts`` with the signed ``changes`` added; a count at 0 is dropped."""
    if not changes:
        return counts
    summed = {key: counts.get(key, 0) + changes.get(key, 0) for key in counts | changes}
    return {key: value for key, value in summed.items() if value > 0}


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
                "kind": hook["kind"],
                "url": hook["url"],
                "state": hook["state"],
                "next_attempt_at": hook["next_attempt_at"],
                "attempts": attempts,
            }
        )
    return webhooks


def _live_key(db: sqlite3.Connection, scope: str, key: str, now: float) -> IdempotencyRecord | None:
    """The record of ``key`` in ``scope`` unless it is IDEMPOTENCY_SECONDS old."""
    row = db.execute(
        "SELECT * FROM idempotency_keys WHERE scope = ? AND key = ? AND created_at > ?",
        (scope, key, now - IDEMPOTENCY_SECONDS),
    ).fetchone()
    if row is None:
        return None
    return IdempotencyRecord(
        row["scope"],
        row["key"],
        row["body_sha256"],
        row["call_id"],
        json.loads(row["response"]),
        row["created_at"],
    )


def _webhook(row: sqlite3.Row) -> Webhook:
    return Webhook(
        row["webhook_id"],
        row["call_id"],
        row["url"],
        row["body"],
        row["attempts"],
        row["state"],
        row["kind"],
        row["created_at"],
    )
