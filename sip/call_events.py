"""Hands each SIP event of a worker to the call flow that owns its call, and to no other.

A flow learns its call's key from ``make_call``, and the first events of that call (180, 200,
a quick failure) may reach the event loop before the reply does. So while a dial is in
progress, the events of calls nobody owns yet are kept per call key; a dialler claims its
key's events as soon as it knows the key, and the rest are dropped once no dial is in
progress. A flow's queue only ever holds events of its own call.

Everything here runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from sip.events import IncomingCall, SipEvent


class CallEvents:
    def __init__(self) -> None:
        self._owned: dict[str, asyncio.Queue[SipEvent]] = {}
        self._unclaimed: dict[str, list[SipEvent]] = {}  # kept only while a dial is running
        self._dials = 0

    def route(self, event: SipEvent) -> None:
        """Queue ``event`` for the owner of its call (events without a call go nowhere, nor
        an IncomingCall: the inbound flow is handed it, and claims the call's events)."""
        call = getattr(event, "call", None)
        if not isinstance(call, str) or isinstance(event, IncomingCall):
            return
        queue = self._owned.get(call)
        if queue is not None:
            queue.put_nowait(event)
        elif self._dials:
            self._unclaimed.setdefault(call, []).append(event)

    @contextlib.contextmanager
    def dialing(self) -> Iterator[None]:
        """Around a ``make_call`` and the :meth:`claim` of its key: no early event is lost."""
        self._dials += 1
        try:
            yield
        finally:
            self._dials -= 1
            if not self._dials:
                self._unclaimed.clear()

    def claim(self, call: str) -> asyncio.Queue[SipEvent]:
        """The queue of ``call``'s events from now on, starting with those that came early."""
        queue: asyncio.Queue[SipEvent] = asyncio.Queue()
        for event in self._unclaimed.pop(call, ()):
            queue.put_nowait(event)
        self._owned[call] = queue
        return queue

    def release(self, call: str) -> None:
        self._owned.pop(call, None)
