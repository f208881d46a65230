"""The console's live feed of calls: events published by the call records, read by streams.

:class:`CallFeed` lives on the supervisor's loop. ``publish`` is called after each stored
change of a call (an inbound call started, a transcript turn, its end; an outbound call's
status); each ``subscribe()`` iterator yields the events published after it started, in
order, and ends when the feed is drained (on stop, so no stream holds the API server open).

An event is small (the console fetches ``GET /call/{id}`` for the rest)::

    {"call_id": "in-...", "direction": "outbound" | "inbound" | "web",
     "status": "in_progress" | "ended", "call_status": "queued" | "dialing" | "ringing" |
     "answered" | "completed" | "busy" | "no_answer" | "failed",
     "caller": str | None, "extension": str | None, "started_at": epoch seconds,
     "turn": {"role", "text", "at"}}            # turn: only on a transcript event

A published event may carry only what changed (``call_id`` and the new fields): the feed
completes it from what it knows of the call, and keeps every call in progress for the
snapshot a new stream starts with. :meth:`stream` is what ``GET /console/events`` sends:
that snapshot, then the events, a ping when nothing happened for ``ping_seconds``, and a
resync (the stream's queue was full: its events were dropped and the page re-reads the
calls) instead of stalling the publisher. At most ``max_subscribers`` streams at once: one
more gets :class:`FeedFull`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any, Literal

QUEUE_SIZE = 256  # events one subscriber may be behind by
MAX_SUBSCRIBERS = 16
PING_SECONDS = 15.0
ENDED = frozenset({"completed", "busy", "no_answer", "failed"})  # a call's final statuses

StreamItem = tuple[Literal["snapshot", "call", "resync", "ping"], dict[str, Any]]


class FeedFull(Exception):
    """Every subscription is taken."""


class _Subscriber:
    """One stream's queue of events (``None``: the feed was drained); loop only."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.overflowed = False  # events were dropped since the last resync

    def put(self, event: dict[str, Any] | None) -> None:
        if self.queue.full():
            while not self.queue.empty():
                self.queue.get_nowait()
            self.overflowed = event is not None
        self.queue.put_nowait(event)


class CallFeed:
    """Fan-out of call events to subscribers; one queue per subscriber (loop only)."""

    def __init__(
        self, max_subscribers: int = MAX_SUBSCRIBERS, ping_seconds: float = PING_SECONDS
    ) -> None:
        self.max_subscribers = max_subscribers
        self.ping_seconds = ping_seconds
        self._subscribers: set[_Subscriber] = set()
        self._live: dict[str, dict[str, Any]] = {}  # call_id -> its last event, while up
        self._drained = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def snapshot(self) -> list[dict[str, Any]]:
        """The calls in progress, oldest first, each as its last event."""
        return [dict(event) for event in self._live.values()]

    def publish(self, event: Mapping[str, Any]) -> None:
        """Hand ``event`` (completed from what is known of its call) to every subscriber; one
        too far behind is told to resync."""
        if self._drained:
            return
        call_id = str(event["call_id"])
        known = self._live.get(call_id, {})
        merged: dict[str, Any] = {
            "direction": "inbound",
            "caller": None,
            "extension": None,
            "started_at": time.time(),
            **{k: v for k, v in known.items() if k != "turn"},
            **event,
        }
        merged["status"] = "ended" if merged.get("call_status") in ENDED else "in_progress"
        if merged["status"] == "ended":
            self._live.pop(call_id, None)
        else:
            self._live[call_id] = merged
        for subscriber in self._subscribers:
            subscriber.put(merged)

    def outbound_status(self, call_id: str, status: str, record: Mapping[str, Any]) -> None:
        """An outbound call's new status, as the outbound service stored it (its listener)."""
        self.publish(
            {
                "call_id": call_id,
                "direction": "outbound",
                "call_status": status,
                "extension": record.get("extension"),
                "started_at": record.get("created_at") or time.time(),
            }
        )

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """The events published from this call on, until the feed is drained (iterate it to
        the end or ``aclose()`` it once started: that unsubscribes). FeedFull when
        ``max_subscribers`` are taken."""
        return self._events(self._join())

    def stream(self) -> AsyncIterator[StreamItem]:
        """What a console stream sends: the snapshot, then each event, pings and resyncs,
        until the feed is drained. FeedFull when ``max_subscribers`` are taken. The stream
        takes its place when it starts (a stream never started, its client gone before the
        body was read, holds none); one that finds every place taken by then ends at once."""
        if not self._drained and len(self._subscribers) >= self.max_subscribers:
            raise FeedFull(f"{self.max_subscribers} console streams are open already")
        return self._items()

    def _join(self) -> _Subscriber:
        subscriber = _Subscriber()
        if self._drained:
            subscriber.put(None)
            return subscriber
        if len(self._subscribers) >= self.max_subscribers:
            raise FeedFull(f"{self.max_subscribers} console streams are open already")
        self._subscribers.add(subscriber)
        return subscriber

    async def _events(self, subscriber: _Subscriber) -> AsyncIterator[dict[str, Any]]:
        try:
            while (event := await subscriber.queue.get()) is not None:
                yield event
        finally:
            self._subscribers.discard(subscriber)

    async def _items(self) -> AsyncIterator[StreamItem]:
        try:
            subscriber = self._join()
        except FeedFull:
            return
        try:
            yield "snapshot", {"calls": self.snapshot()}
            while True:
                try:
                    async with asyncio.timeout(self.ping_seconds):
                        event = await subscriber.queue.get()
                except TimeoutError:
                    yield "ping", {}
                    continue
                if event is None:
                    return
                if subscriber.overflowed:
                    subscriber.overflowed = False
                    yield "resync", {}
                yield "call", event
        finally:
            self._subscribers.discard(subscriber)

    def drain(self) -> None:
        """End every subscription, and refuse new ones."""
        self._drained = True
        for subscriber in self._subscribers:
            subscriber.put(None)
