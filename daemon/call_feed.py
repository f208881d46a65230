"""The console's live feed of calls: events published by the call records, read by streams.

:class:`CallFeed` lives on the supervisor's loop. ``publish`` is called after each stored
change of a call (an inbound call started, a transcript turn, its end; an outbound call's
status); each ``subscribe()`` iterator yields the events published after it started, in
order, and ends when the feed is drained (on stop, so no stream holds the API server open).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

QUEUE_SIZE = 256  # events one subscriber may be behind by


class CallFeed:
    """Fan-out of call events to subscribers; one queue per subscriber (loop only)."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._drained = False

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    def publish(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to every subscriber; one too far behind loses its oldest event."""
        if self._drained:
            return
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    def subscribe(self) -> AsyncIterator[dict[str, Any]]:
        """The events published from this call on, until the feed is drained (iterate it to
        the end or ``aclose()`` it once started: that unsubscribes)."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=QUEUE_SIZE)
        if self._drained:
            queue.put_nowait(None)
        else:
            self._queues.add(queue)
        return self._events(queue)

    async def _events(
        self, queue: asyncio.Queue[dict[str, Any] | None]
    ) -> AsyncIterator[dict[str, Any]]:
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.discard(queue)

    def drain(self) -> None:
        """End every subscription, and refuse new ones."""
        self._drained = True
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
