"""Inbound calls' records: what the workers' agents and the local engine report, into the store.

Each inbound call gets a record when its worker reports it, under the id the worker made
(``in-<random>``, so the recording's file and the logs carry it too); its transcript turns, its
failure and its outcome follow in arrival order. The outcome (status, cause, black box,
recording) and, when ``webhooks.inbound_url`` is set, the ``inbound.ended`` webhook (the call's
view, as ``GET /call/{id}`` shows it) are written in one transaction. The local engine's
sessions name their call as "worker:call" (the ``X-Sipai-Call`` header): the receptionist's
message and a session's failure (speech recognition...) land in that call's record. Browser
calls (the web workers', ``direction: "web"``) are recorded the same way. After each stored
change the console's live feed (:class:`daemon.call_feed.CallFeed`) is told the call's headline
(:func:`feed_event`). Runs on the supervisor's loop.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from api.webhooks import Deliverer
from daemon.blackbox import RecordingInfo
from daemon.call_feed import CallFeed
from daemon.logs import get_logger
from daemon.observe import CallObserver, FinishedCall, NullObserver
from daemon.store import INTERRUPTED_CAUSE, Store
from sip.events import CallAnswered, CallEnded, SipEvent

log = get_logger(__name__)

CallKey = tuple[int, str]  # (worker index, that worker's call id)


def _call_key(caller: str) -> CallKey | None:
    """The call an engine session belongs to, from its "worker:call" name."""
    worker, _, call = caller.partition(":")
    return (int(worker), call) if worker.isdigit() else None


def inbound_view(record: dict[str, Any]) -> dict[str, Any]:
    """An inbound call's record (``Store.get_inbound``) as the API shows it, in the terms of an
    outbound call's view: ``status`` in_progress until the call ends, then not_found;
    ``call_status`` ringing until the call is answered, answered, then completed or failed;
    ``duration_seconds`` the time it was connected; then the inbound call's own fields."""
    final = record["status"] != "in_progress"
    black_box = record["black_box"]
    view: dict[str, Any] = {
        "call_id": record["call_id"],
        "status": "not_found" if final else "in_progress",
        "direction": record["direction"],
        "call_status": record["status"]
        if final
        else ("answered" if record["answered_at"] is not None else "ringing"),
        "created_at": record["started_at"],
        "sip_code": None,
        "caller": record["caller"],
        "answered_at": record["answered_at"],
        "ended_at": record["ended_at"],
        "end_cause": record["end_cause"],
        "error": record["error"],
        "transcript": record["transcript"],
        "message": record["message"],
    }
    if record["extension"] is not None:  # records older than the called user have none
        view["extension"] = record["extension"]
    if final:
        if black_box is not None and "connect_seconds" in black_box:
            view["duration_seconds"] = black_box["connect_seconds"]
        elif record["answered_at"] is not None and record["ended_at"] is not None:
            view["duration_seconds"] = round(record["ended_at"] - record["answered_at"], 3)
        view["black_box"] = black_box
        view["recording"] = recording_view(record["call_id"], record["recording"])
    if "webhooks" in record:
        view["webhooks"] = record["webhooks"]
    return view


def recording_view(call_id: str, recording: dict[str, Any] | None) -> dict[str, Any] | None:
    """What a call's record says of its recording, with the route that serves it."""
    if recording is None:
        return None
    return {
        "url": f"/call/{call_id}/recording",
        "duration_seconds": recording["duration_seconds"],
        "bytes": recording["bytes"],
        "sha256": recording["sha256"],
        "complete": bool(recording["complete"]),
        "dropped_frames": recording["dropped_frames"],
    }


def feed_event(record: dict[str, Any], turn: dict[str, Any] | None = None) -> dict[str, Any]:
    """What the console's live feed says of an inbound call after a change: its view's
    headline fields (the page fetches the rest), and the transcript turn just stored."""
    view = inbound_view(record)
    event = {k: view.get(k) for k in ("call_id", "direction", "status", "call_status", "caller")}
    event["extension"] = record["extension"]
    event["started_at"] = record["started_at"]
    if turn is not None:
        event["turn"] = turn
    return event


def ended_event(record: dict[str, Any]) -> dict[str, Any]:
    """The ``inbound.ended`` webhook's body: the finished call's view (its deliveries, which
    the body cannot know, left out), typed."""
    return {"type": "inbound.ended", **inbound_view(record)}


class InboundRecords:
    def __init__(
        self,
        store: Store,
        deliverer: Deliverer,
        inbound_url: str,
        observer: CallObserver | None = None,
        feed: CallFeed | None = None,
    ) -> None:
        self._store = store
        self._feed = feed  # the console's live calls: told after each stored change
        self._deliverer = deliverer
        # webhooks.inbound_url: the inbound.message and inbound.ended webhooks; "" sends none
        # (the message stays in the record)
        self._message_url = inbound_url
        self._observer = observer if observer is not None else NullObserver()
        self._ids: dict[CallKey, str] = {}  # the record of each call up
        self._errors: dict[CallKey, str] = {}  # the first failure of each call up
        self._directions: dict[CallKey, str] = {}  # inbound (SIP) or web, of each call up
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Future[None]] = set()

    async def recover(self) -> int:
        """At start-up: finish the calls a previous process left in progress (failed, with
        their ``inbound.ended`` webhooks, told to the observer); how many there were."""
        interrupted = await self._store.interrupt_inbound(self._message_url, ended_event)
        if interrupted and self._message_url:
            self._deliverer.wake()
        for call_id in interrupted:
            self._observer.call_finished(
                FinishedCall(call_id, "inbound", "failed", INTERRUPTED_CAUSE)
            )
        return len(interrupted)

    def on_sip_event(self, worker: int, event: SipEvent) -> None:
        """A worker's SIP event: the answer of a call with a record, and the end of the calls
        of a worker that died (it sends no outcome: the call is finished here, failed)."""
        if isinstance(event, CallAnswered):
            at = time.time()
            self._queue(self._answered((worker, event.call), at))
        elif isinstance(event, CallEnded) and event.local_cause == "worker_died":
            self._queue(self._worker_died((worker, event.call), event.reason))

    async def _answered(self, key: CallKey, at: float) -> None:
        async with self._lock:  # after the record's insert, which comes first
            call_id = self._ids.get(key)
            if call_id is None:  # not an agent's call (an outbound call, a test policy)
                return
            try:
                await self._store.answer_inbound(call_id, at)
            except Exception as exc:
                log.error("inbound.store_failed", call_id=call_id, error=repr(exc))

    async def _worker_died(self, key: CallKey, reason: str) -> None:
        async with self._lock:
            call_id = self._ids.pop(key, None)
            error = self._errors.pop(key, None)
            if call_id is None:
                return
            try:
                await self._finish(call_id, {"cause": f"worker_died: {reason}"}, error or reason)
            except Exception as exc:
                log.error("inbound.store_failed", call_id=call_id, error=repr(exc))

    def _queue(self, write: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def on_inbound(self, worker: int, kind: str, body: dict[str, Any]) -> None:
        """What an inbound agent reports: the call, each transcript turn, the outcome."""
        fields = {k: v for k, v in body.items() if k != "call"}
        log.info(f"inbound.{kind}", call_id=body.get("call"), worker=worker, **fields)
        self._queue(self._record(worker, kind, body))

    async def _record(self, worker: int, kind: str, body: dict[str, Any]) -> None:
        key = (worker, str(body.get("call")))
        async with self._lock:  # one worker's events are stored in arrival order
            try:
                if kind == "inbound_call":
                    call_id = str(body.get("record_id") or f"in-{uuid.uuid4().hex[:16]}")
                    self._ids[key] = call_id
                    await self._store.insert_inbound(
                        call_id,
                        str(body["sip_call_id"]),
                        str(body["caller"]),
                        worker,
                        str(body.get("extension") or "") or None,
                        direction=str(body.get("direction", "inbound")),
                    )
                    self._directions[key] = str(body.get("direction", "inbound"))
                    await self._publish(call_id)
                    return
                call_id = self._ids.get(key, "")
                if kind == "transcript":
                    await self._store.add_turn(
                        call_id, str(body["role"]), str(body["text"]), float(body["at"])
                    )
                    turn = {k: body[k] for k in ("role", "text", "at")}
                    await self._publish(call_id, turn)
                elif kind == "agent_failed":
                    self._errors[key] = f"{body.get('kind')}: {body.get('error')}"
                elif kind == "inbound_done":
                    self._ids.pop(key, None)
                    direction = self._directions.pop(key, "inbound")
                    await self._finish(call_id, body, self._errors.pop(key, None), direction)
                    await self._publish(call_id)
            except Exception as exc:
                log.error("inbound.store_failed", call_id=body.get("call"), error=repr(exc))

    async def _publish(self, call_id: str, turn: dict[str, Any] | None = None) -> None:
        """Tell the console's feed what the record of ``call_id`` now says (``turn``: the
        transcript turn just stored)."""
        if self._feed is None or not call_id:
            return
        record = await self._store.get_inbound(call_id)
        if record is not None:
            self._feed.publish(feed_event(record, turn))

    async def _finish(
        self, call_id: str, body: dict[str, Any], error: str | None, direction: str = "inbound"
    ) -> None:
        status = "failed" if error else "completed"
        cause = str(body["cause"])
        black_box = body.get("black_box")
        recording = RecordingInfo(**body["recording"]) if body.get("recording") else None
        webhook = await self._store.finish_inbound(
            call_id,
            status,
            cause,
            error,
            black_box=black_box,
            connect_seconds=float(body.get("connect_seconds") or 0.0),
            recording=recording,
            webhook_url=self._message_url,
            event=ended_event,
        )
        if webhook is not None:
            log.info("inbound.ended_queued", call_id=call_id, webhook_id=webhook.webhook_id)
            self._deliverer.wake()
        if call_id:  # a call whose start was recorded
            self._observer.call_finished(
                FinishedCall(call_id, direction, status, cause, black_box, recording)
            )

    def on_message(self, caller: str) -> Callable[[str], Awaitable[None]]:
        """Where the receptionist of the engine session ``caller`` hands the message it took:
        the inbound webhook if one is set, else the call's record."""

        async def on_message(message: str) -> None:
            key = _call_key(caller)
            call_id = self._ids.get(key) if key is not None else None
            log.info("inbound.message", call_id=call_id, message=message)
            if self._message_url:
                webhook = await self._deliverer.send_message(self._message_url, call_id, message)
                log.info("inbound.message_queued", call_id=call_id, webhook_id=webhook.webhook_id)
            elif call_id is not None:
                await self._store.set_message(call_id, message)

        return on_message

    def engine_error(self, caller: str, error: str) -> None:
        """An engine session's failure (speech recognition...) goes into its call's record."""
        key = _call_key(caller)
        if key is not None and key in self._ids:
            self._errors.setdefault(key, error)
