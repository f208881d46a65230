"""The inbound agent on a browser call leg: an aiortc peer on 127.0.0.1 and the fake model."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from config.schema import AgentSettings, ApiSettings, RealtimeSettings
from daemon.calls.inbound import InboundAgent
from daemon.legs.leg import CallInfo
from daemon.legs.webrtc import WebRtcLeg, use_ice_addresses
from daemon.realtime.backends import endpoint
from tests.audio import tone, tone_level_db
from tests.peers.realtime_server import FakeRealtime, FakeSession
from tests.peers.webrtc_client import WebRtcClient

RATE = 8000
GREETING_HZ, GOODBYE_HZ = 600, 500


@pytest.fixture(autouse=True)
def loopback_only() -> Iterator[None]:
    use_ice_addresses(["127.0.0.1"])
    yield
    use_ice_addresses([])


class Services:
    def __init__(self) -> None:
        self.reports: list[tuple[str, dict[str, Any]]] = []

    async def synthesize(self, text: str, rate: int) -> NDArray[np.int16]:
        return tone(400, rate, 1.0, amplitude=8000)

    async def report(self, kind: str, body: dict[str, Any]) -> None:
        self.reports.append((kind, body))


def _levels(pcm: NDArray[np.int16]) -> tuple[float, float]:
    """Levels of the greeting (first 0.9 s of loud audio) and the goodbye (last 0.4 s)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 800)
    assert len(loud), "nothing loud was heard"
    first, last = int(loud[0]), int(loud[-1])
    greeting = tone_level_db(pcm[first : first + 43200], GREETING_HZ, 48000)
    goodbye = tone_level_db(pcm[last - 19200 : last], GOODBYE_HZ, 48000)
    return greeting, goodbye


async def test_the_agent_greets_a_browser_and_end_call_hangs_up() -> None:
    """The greeting reaches the browser, the browser's audio reaches the model, end_call after
    the goodbye closes the browser's connection, and the session offers no transfer or DTMF."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("response.create")
        await session.respond(tone(GREETING_HZ, session.output_rate, 1.0, amplitude=8000))
        await session.wait_for_input(lambda pcm: len(pcm) > RATE, 10)
        await session.respond(tone(GOODBYE_HZ, session.output_rate, 0.5, amplitude=8000), "Bye.")
        await session.call_tool("end_call", {})

    async with FakeRealtime("ga", script) as fake:
        settings = AgentSettings(backend="url", url=fake.url, transfer_target="2000")
        client = WebRtcClient(freq=440.0)
        info = CallInfo("web-1", True, "webrtc:1", "web:local", kind="web")
        leg = await WebRtcLeg.accept(await client.offer(), info, RATE)
        await client.accept(leg.answer_sdp)
        agent = InboundAgent(
            leg, settings, endpoint(settings, ApiSettings()), RealtimeSettings(), Services()
        )
        try:
            async with asyncio.timeout(20):
                await agent.run()
                await client.closed.wait()
        finally:
            await leg.hangup()
            await client.close()
            await leg.wait_closed()
        session = fake.sessions[0]
    assert agent.end_cause == "end_call"
    assert client.hangup_received.is_set(), "the page was told the call ended"
    heard = client.heard_pcm()
    greeting, goodbye = _levels(heard)
    print(
        f"browser heard {GREETING_HZ} Hz at {greeting:.0f} dB, {GOODBYE_HZ} Hz at {goodbye:.0f} dB"
    )
    assert greeting > 70, greeting
    assert goodbye > 70, goodbye
    caller = session.input_pcm
    assert tone_level_db(caller[-RATE:], 440.0, RATE) > 60, "the browser's tone reached the model"
    tools = [t["name"] for t in session.session.get("tools", [])]
    assert tools == ["end_call"], tools
    assert fake.violations == []
