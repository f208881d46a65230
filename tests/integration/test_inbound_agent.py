"""The inbound agent in a real worker process: nothing outlives a call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from config.schema import AgentSettings
from sip.events import CallEnded
from tests.integration.conftest import Pool
from tests.peers.kamailio import Kamailio
from tests.peers.phone import TestPhone
from tests.peers.realtime_server import FakeRealtime, FakeSession


async def test_calls_in_a_row_leave_no_task_socket_or_port(
    kamailio: Kamailio,
    make_pool: Callable[..., Awaitable[Pool]],
    phones: Callable[..., Awaitable[TestPhone]],
) -> None:
    """Eight agent calls one after another (the caller hangs up, or the model ends the call):
    the worker's tasks, file descriptors and conference ports are back where they were."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        if len(fake.sessions) % 2 == 0:
            await session.call_tool("end_call", {})

    async with FakeRealtime("ga", script) as fake:
        agent = AgentSettings(backend="url", url=fake.url, greeting="")
        pool = await make_pool(kamailio, 1, agent=agent)
        caller = await phones("caller")
        await caller.register(kamailio, "1001")
        baseline: dict[str, int] = {}
        for number in range(8):
            dialled = await caller.command("dial", uri="sip:1000@127.0.0.1")
            await caller.expect("media", call=dialled["call"], status="active")
            if number % 2 == 0:
                await asyncio.sleep(0.5)
                await caller.command("hangup", call=dialled["call"])
            await caller.expect("call", call=dialled["call"], state="DISCONNECTED")
            await pool.wait_for(lambda n=number: len(pool.of(CallEnded)) == n + 1)
            await asyncio.sleep(0.5)  # the agent's own clean-up after the hang-up
            diagnostics = await pool.pool.command(0, "ping")
            if number == 0:
                baseline = diagnostics
        assert len(fake.sessions) == 8
        assert all(s.ws.state.name == "CLOSED" for s in fake.sessions)
        assert fake.violations == []
        assert diagnostics["calls"] == 0
        assert diagnostics["conference_ports"] == baseline["conference_ports"]
        assert diagnostics["tasks"] == baseline["tasks"]
        assert diagnostics["fds"] <= baseline["fds"]
