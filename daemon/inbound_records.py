"""Inbound calls' records: what the workers' agents and the local engine report, into the store.

Each inbound call gets a record (id ``in-<random>``) when its worker reports it; its transcript
turns, its failure and its outcome follow in arrival order. The local engine's sessions name
their call as "worker:call" (the ``X-Sipai-Call`` header): the receptionist's message and a
session's failure (speech recognition...) land in that call's record. Runs on the
supervisor's loop.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from api.webhooks import Deliverer
from daemon.logs import get_logger
from daemon.store import Store

log = get_logger(__name__)

CallKey = tuple[int, str]  # (worker index, that worker's call id)


def _call_key(caller: str) -> CallKey | None:
    """The call an engine session belongs to, from its "worker:call" name."""
    worker, _, call = caller.partition(":")
    return (int(worker), call) if worker.isdigit() else None


class InboundRecords:
    def __init__(self, store: Store, deliverer: Deliverer, message_url: str) -> None:
        self._store = store
        self._deliverer = deliverer
        self._message_url = message_url  # webhooks.inbound_url: "" keeps messages in the record
        self._ids: dict[CallKey, str] = {}  # the record of each call up
        self._errors: dict[CallKey, str] = {}  # the first failure of each call up
        self._lock = asyncio.Lock()
        self._writes: set[asyncio.Future[None]] = set()

    def on_inbound(self, worker: int, kind: str, body: dict[str, Any]) -> None:
        """What an inbound agent reports: the call, each transcript turn, the outcome."""
        fields = {k: v for k, v in body.items() if k != "call"}
        log.info(f"inbound.{kind}", call_id=body.get("call"), worker=worker, **fields)
        task = asyncio.ensure_future(self._record(worker, kind, body))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _record(self, worker: int, kind: str, body: dict[str, Any]) -> None:
        key = (worker, str(body.get("call")))
        async with self._lock:  # one worker's events are stored in arrival order
            try:
                if kind == "inbound_call":
                    call_id = f"in-{uuid.uuid4().hex[:16]}"
                    self._ids[key] = call_id
                    await self._store.insert_inbound(
                        call_id, str(body["sip_call_id"]), str(body["caller"]), worker
                    )
                    return
                call_id = self._ids.get(key, "")
                if kind == "transcript":
                    await self._store.add_turn(
                        call_id, str(body["role"]), str(body["text"]), float(body["at"])
                    )
                elif kind == "agent_failed":
                    self._errors[key] = f"{body.get('kind')}: {body.get('error')}"
                elif kind == "inbound_done":
                    error = self._errors.pop(key, None)
                    status = "failed" if error else "completed"
                    await self._store.finish_inbound(call_id, status, str(body["cause"]), error)
                    self._ids.pop(key, None)
            except Exception as exc:
                log.error("inbound.store_failed", call_id=body.get("call"), error=repr(exc))

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
