"""Outbound calls queue in FIFO order in front of the worker pool."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from daemon.dispatcher import Dispatcher
from sip.events import CallAnswered
from tests.integration.conftest import Pool
from tests.peers.kamailio import Kamailio
from tests.peers.phone import TestPhone


async def test_queue_keeps_fifo_order_and_fills_freed_slots(
    kamailio: Kamailio,
    make_pool: Callable[..., Awaitable[Pool]],
    phones: Callable[..., Awaitable[TestPhone]],
) -> None:
    """Six calls for one 4-slot worker: 4 dial now, 2 wait; each hang-up starts the next."""
    pool = await make_pool(kamailio, 1)
    callee = await phones("callee")
    await callee.register(kamailio, "1011")
    await callee.command("mode", on_incoming="answer", answer_after_ms=0)
    dispatcher = Dispatcher(pool.pool)
    dispatcher.start()
    try:
        jobs = [dispatcher.submit(f"job-{n}", "1011", 10) for n in range(6)]
        placed = [await asyncio.wait_for(job.placed, 10) for job in jobs[:4]]
        await pool.wait_for(lambda: len(pool.of(CallAnswered)) == 4)
        assert dispatcher.queued == 2
        assert not jobs[4].placed.done()
        assert not jobs[5].placed.done()

        await pool.pool.command(placed[0][0], "hangup", call=placed[0][1])
        fifth = await asyncio.wait_for(jobs[4].placed, 10)
        assert not jobs[5].placed.done()  # the later job does not overtake
        assert dispatcher.queued == 1

        await pool.pool.command(placed[1][0], "hangup", call=placed[1][1])
        sixth = await asyncio.wait_for(jobs[5].placed, 10)
        assert dispatcher.queued == 0
        for worker, call in (*placed[2:], fifth, sixth):
            await pool.pool.command(worker, "hangup", call=call)
        await pool.wait_for(lambda: pool.pool.active_calls == 0)
    finally:
        await dispatcher.stop()
