"""Real peers for integration tests: Kamailio, test phones and SIP workers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from config import Settings
from config.schema import AgentSettings, SipSettings
from daemon.workers import WorkerPool
from sip.events import IncomingCall, SipEvent
from sip.worker import SipError, SipWorker
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.support import free_port, rtp_range
from tests.support.paths import SIP_SPAN


@pytest.fixture
async def kamailio(tmp_path: Path) -> AsyncIterator[Kamailio]:
    async with running_kamailio(tmp_path / "kamailio") as k:
        yield k


def worker_settings(kamailio: Kamailio | None, **overrides: Any) -> SipSettings:
    rtp_min, rtp_max = rtp_range(100)
    values: dict[str, Any] = {
        "username": "1000",
        "port": free_port(socket.SOCK_DGRAM, SIP_SPAN),
        "rtp_port_min": rtp_min,
        "rtp_port_max": rtp_max,
        "register_expires": 60,
    }
    if kamailio is not None:
        values.update(registrar=kamailio.uri, password=password("1000"))
    values.update(overrides)
    return SipSettings(**values)


class Recorded:
    """A started SipWorker plus every event it reported, for ``expect`` to search."""

    def __init__(self, worker: SipWorker) -> None:
        self.sip = worker
        self.events: list[SipEvent] = []
        self.arrived: list[float] = []  # monotonic arrival time of each event
        self._consumed: set[int] = set()
        self._changed = asyncio.Condition()
        self._task = asyncio.create_task(self._collect())
        self._answering: asyncio.Task[None] | None = None

    async def _collect(self) -> None:
        async for event in self.sip.events():
            async with self._changed:
                self.events.append(event)
                self.arrived.append(time.monotonic())
                self._changed.notify_all()

    async def expect(self, kind: type, timeout: float = 10.0, **fields: Any) -> Any:
        """The oldest unconsumed event of ``kind`` whose attributes include ``fields``."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    for index, event in enumerate(self.events):
                        if (
                            index not in self._consumed
                            and isinstance(event, kind)
                            and all(getattr(event, k) == v for k, v in fields.items())
                        ):
                            self._consumed.add(index)
                            self.last_arrival = self.arrived[index]
                            return event
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no {kind.__name__} {fields} within {timeout} s; events: {self.events}"
            ) from None

    def answer_all(self) -> None:
        """From now on answer every inbound call (as an agent would)."""

        async def answer() -> None:
            while True:
                event = await self.expect(IncomingCall, timeout=3600)
                with contextlib.suppress(SipError):  # the caller may have given up already
                    await self.sip.answer(event.call)

        self._answering = asyncio.create_task(answer())

    async def stop(self) -> None:
        await self.sip.stop()  # idempotent
        self._task.cancel()
        if self._answering is not None:
            self._answering.cancel()


@pytest.fixture
async def make_worker() -> AsyncIterator[Callable[[SipSettings], Awaitable[Recorded]]]:
    workers: list[Recorded] = []

    async def make(settings: SipSettings) -> Recorded:
        worker = SipWorker(settings)
        await worker.start()
        recorded = Recorded(worker)
        workers.append(recorded)
        return recorded

    yield make
    for recorded in workers:
        await recorded.stop()


@pytest.fixture
async def phones() -> AsyncIterator[Callable[..., Awaitable[TestPhone]]]:
    started: list[TestPhone] = []

    async def start(name: str = "phone", sdp_port_offset: int = 0) -> TestPhone:
        phone = await TestPhone.start(name, sdp_port_offset=sdp_port_offset)
        started.append(phone)
        return phone

    yield start
    for phone in started:
        await phone.close()


class Pool:
    """A started WorkerPool and the events it delivered."""

    def __init__(self, pool: WorkerPool, events: list[tuple[int, SipEvent]]) -> None:
        self.pool = pool
        self.events = events

    async def wait_for(self, predicate: Callable[[], bool], within: float = 20.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                await asyncio.sleep(0.05)

    def of(self, kind: type) -> list[Any]:
        return [event for _, event in self.events if isinstance(event, kind)]


@pytest.fixture
async def make_pool() -> AsyncIterator[Callable[..., Awaitable[Pool]]]:
    pools: list[WorkerPool] = []

    async def make(
        kamailio: Kamailio,
        workers: int,
        inbound_policy: str | None = None,
        agent: AgentSettings | None = None,
    ) -> Pool:
        sip = worker_settings(kamailio, workers=workers)
        settings = Settings(sip=sip, agent=agent or AgentSettings())
        events: list[tuple[int, SipEvent]] = []
        pool = WorkerPool(settings, inbound_policy, lambda i, e: events.append((i, e)))
        pools.append(pool)
        await pool.start()
        result = Pool(pool, events)
        await result.wait_for(lambda: all(w.registered for w in pool.workers))
        return result

    yield make
    for pool in pools:
        await pool.stop()
