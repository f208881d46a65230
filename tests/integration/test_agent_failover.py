"""Failover to the embedded engine (``[agent] fallback = "local"``) on an in-memory call leg.

Two fake realtime servers in this process: the cloud model (which refuses the handshake, or
drops mid-call) and, standing in for the embedded engine's ``/v1/realtime``, a second one the
call fails over to. The local voice says each phrase as its own tone, so what the phone heard,
and in which order, is read from the frequencies.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from websockets.protocol import State

from config.schema import AgentSettings, ApiSettings, RealtimeSettings
from daemon.calls.conversation import Stage
from daemon.calls.inbound import InboundAgent, PhraseCache
from daemon.legs.memory import MediaClock, MemoryNetwork, MemoryPhone
from daemon.realtime.backends import endpoint
from daemon.realtime.client import Endpoint
from daemon.realtime.dialect import DIALECTS
from tests.audio import tone, tone_level_db
from tests.peers.realtime_server import FakeRealtime, FakeSession

RATE = 8000
BRIDGE = "Just a moment."
APOLOGY = "Sorry, nobody can help."
LOCAL_VOICE_HZ = {BRIDGE: 500, APOLOGY: 400}
CLOUD_HZ, ENGINE_HZ = 700, 600
TONES = (*LOCAL_VOICE_HZ.values(), CLOUD_HZ, ENGINE_HZ)


@dataclass
class Services:
    """The supervisor's side: each local phrase as its own 0.6 s tone; the reports."""

    reports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    synthesis_seconds: float = 0.0  # how long each synthesis takes
    synthesized: list[str] = field(default_factory=list)

    async def synthesize(self, text: str, rate: int) -> NDArray[np.int16]:
        self.synthesized.append(text)
        await asyncio.sleep(self.synthesis_seconds)
        return tone(LOCAL_VOICE_HZ[text], rate, 0.6, amplitude=8000)

    async def report(self, kind: str, body: dict[str, Any]) -> None:
        self.reports.append((kind, body))

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [body for k, body in self.reports if k == kind]


@dataclass
class Call:
    agent: InboundAgent
    phone: MemoryPhone
    services: Services
    task: asyncio.Task[None]

    async def ended(self, within: float = 20.0) -> str:
        async with asyncio.timeout(within):
            await self.task
        return self.agent.end_cause


@contextlib.asynccontextmanager
async def _network() -> AsyncIterator[MemoryNetwork]:
    async with MediaClock(speed=1.0) as clock:
        yield MemoryNetwork(clock, rate=RATE)


def _call(
    network: MemoryNetwork,
    cloud: FakeRealtime,
    engine: FakeRealtime,
    services: Services | None = None,
    phrases: PhraseCache | None = None,
    **agent: Any,
) -> Call:
    values = {"greeting": "Greet.", "bridge_phrase": BRIDGE, "apology": APOLOGY} | agent
    settings = AgentSettings(backend="url", url=cloud.url, fallback="local", **values)
    leg, phone = network.incoming("1001")
    services = services if services is not None else Services()
    fallback = Endpoint(engine.url, {}, DIALECTS["ga"])
    inbound = InboundAgent(
        leg,
        settings,
        endpoint(settings, ApiSettings()),
        RealtimeSettings(max_reconnects=0),
        services,
        fallback=fallback,
        phrases=phrases if phrases is not None else PhraseCache(),
    )
    return Call(inbound, phone, services, asyncio.create_task(inbound.run()))


def _tones(pcm: NDArray[np.int16]) -> list[int]:
    """The tones heard, in order (100 ms blocks, the loudest of :data:`TONES` in each loud
    block, repeats collapsed)."""
    block = RATE // 10
    heard: list[int] = []
    for start in range(0, len(pcm) - block + 1, block):
        part = pcm[start : start + block]
        if np.abs(part).max(initial=0) < 2000:
            continue
        loudest = max(TONES, key=lambda hz: tone_level_db(part, hz, RATE))
        if not heard or heard[-1] != loudest:
            heard.append(loudest)
    return heard


async def _heard(call: Call, tones: list[int], within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while _tones(call.phone.heard())[-len(tones) :] != tones:
            await asyncio.sleep(0.1)


async def test_a_refused_model_fails_over_at_connect_with_the_bridge_then_the_greeting() -> None:
    """The cloud refuses the handshake (HTTP 503): the phone hears the bridge phrase, then the
    engine's greeting (asked of it as of any first session), never the apology; the failover
    is reported and kept in the black box with phase connect; the call goes on."""

    async def greet(session: FakeSession) -> None:
        await session.wait_for("response.create")
        await session.respond(tone(ENGINE_HZ, session.output_rate, 1.0, amplitude=8000))

    async with (
        FakeRealtime("ga") as cloud,
        FakeRealtime("ga", greet) as engine,
        _network() as network,
    ):
        cloud.refuse = 503
        call = _call(network, cloud, engine)
        await _heard(call, [LOCAL_VOICE_HZ[BRIDGE], ENGINE_HZ])
        call.phone.hang_up()
        assert await call.ended() == "caller hung up"
        box = call.agent.black_box()
    assert cloud.refused == 1
    assert len(engine.sessions) == 1
    assert engine.sessions[0].session["instructions"]  # the same session settings
    assert _tones(call.phone.heard()) == [LOCAL_VOICE_HZ[BRIDGE], ENGINE_HZ]
    [failover] = call.services.of("agent_failover")
    assert (failover["phase"], failover["kind"], failover["to"]) == ("connect", "connect", "local")
    assert "HTTP 503" in failover["error"], failover
    assert call.services.of("agent_failed") == []
    assert box is not None
    [entry] = box["model"]["failovers"]
    assert (entry["at_s"], entry["phase"], entry["to"]) == (0.0, "connect", "local")
    assert engine.violations == []


async def test_a_model_lost_mid_call_fails_over_with_the_transcript_replayed() -> None:
    """The cloud drops mid-call with max_reconnects = 0: the engine gets the conversation so
    far as items, then a response request; the phone hears the bridge phrase, then the
    engine, and no apology; the black box keeps the failover (phase session) and the
    replacement (reason failover)."""

    async def cloud_script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        reply = tone(CLOUD_HZ, session.output_rate, 0.8, amplitude=8000)
        await session.respond(reply, "Hello, how can I help?")
        await session.caller_said("I need to move my appointment.")
        await asyncio.sleep(1.2)  # the reply is heard out
        session.drop()

    async def engine_script(session: FakeSession) -> None:
        await session.wait_for("response.create")
        await session.respond(tone(ENGINE_HZ, session.output_rate, 1.0, amplitude=8000))

    async with (
        FakeRealtime("ga", cloud_script) as cloud,
        FakeRealtime("ga", engine_script) as engine,
        _network() as network,
    ):
        call = _call(network, cloud, engine, greeting="")
        await _heard(call, [CLOUD_HZ, LOCAL_VOICE_HZ[BRIDGE], ENGINE_HZ], within=15)
        call.phone.hang_up()
        assert await call.ended() == "caller hung up"
        box = call.agent.black_box()
    [local] = engine.sessions
    replayed = [(e["type"], e.get("item", {})) for e in (r.event for r in local.events)]
    kinds = [kind for kind, _ in replayed if kind != "input_audio_buffer.append"]
    assert kinds == [
        "session.update",
        "conversation.item.create",
        "conversation.item.create",
        "response.create",
    ], kinds
    items = [item for kind, item in replayed if kind == "conversation.item.create"]
    assert [(i["role"], i["content"][0]["text"]) for i in items] == [
        ("assistant", "Hello, how can I help?"),
        ("user", "I need to move my appointment."),
    ]
    assert _tones(call.phone.heard()) == [CLOUD_HZ, LOCAL_VOICE_HZ[BRIDGE], ENGINE_HZ]
    [failover] = call.services.of("agent_failover")
    assert (failover["phase"], failover["kind"]) == ("session", "closed")
    assert failover["at"] > 1.0, failover
    assert call.services.of("agent_failed") == []
    assert box is not None
    assert [e["phase"] for e in box["model"]["failovers"]] == ["session"]
    assert [r["reason"] for r in box["model"]["replacements"]] == ["failover"]
    assert engine.violations == []
    assert cloud.violations == []


async def test_when_the_engine_fails_too_the_apology_follows_the_bridge() -> None:
    """Both refuse at connect: the phone hears the bridge phrase, then the apology, and is hung
    up; the failure reported for the record names both the engine's and the cloud's."""
    async with FakeRealtime("ga") as cloud, FakeRealtime("ga") as engine, _network() as network:
        cloud.refuse = engine.refuse = 503
        call = _call(network, cloud, engine)
        cause = await call.ended()
    assert cause == "", cause  # hung up after the apology, before any conversation
    assert (cloud.refused, engine.refused) == (1, 1)
    assert _tones(call.phone.heard()) == [LOCAL_VOICE_HZ[BRIDGE], LOCAL_VOICE_HZ[APOLOGY]]
    [failed] = call.services.of("agent_failed")
    assert failed["phase"] == "connect"
    assert engine.url in failed["error"], failed
    assert f"after connect: {cloud.url}: HTTP 503" in failed["error"], failed
    assert call.services.of("agent_failover") == []  # attempted, not done
    box = call.agent.black_box()
    assert box is not None
    assert box["model"]["failovers"] == []
    assert box["model"]["failures"] == [  # the cloud's, then the engine's
        {"kind": "connect", "phase": "connect"},
        {"kind": "connect", "phase": "connect"},
    ]


async def test_when_the_engine_cannot_take_over_mid_call_the_apology_follows_the_bridge() -> None:
    """The cloud drops mid-call and the engine refuses: the bridge phrase is heard out, then
    the apology, and the call ends with a failure naming both the engine's and the cloud's."""

    async def cloud_script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await asyncio.sleep(0.5)
        session.drop()

    async with (
        FakeRealtime("ga", cloud_script) as cloud,
        FakeRealtime("ga") as engine,
        _network() as network,
    ):
        engine.refuse = 503
        call = _call(network, cloud, engine, greeting="")
        cause = await call.ended()
    assert cause.startswith("model connect: "), cause
    assert engine.refused == 1
    assert _tones(call.phone.heard()) == [LOCAL_VOICE_HZ[BRIDGE], LOCAL_VOICE_HZ[APOLOGY]]
    heard = call.phone.heard()
    bridge = np.flatnonzero(np.abs(heard.astype(np.int32)) > 2000)
    assert (bridge[-1] - bridge[0]) / RATE >= 1.1  # both phrases whole: 0.6 s each
    assert call.services.of("agent_failover") == []  # attempted, not done
    [failed] = call.services.of("agent_failed")
    assert failed["phase"] == "session"
    assert engine.url in failed["error"], failed
    assert "after closed: the realtime socket closed: 1006" in failed["error"], failed


async def test_with_reject_the_engine_is_tried_before_the_answer() -> None:
    """on_connect_failure = "reject": the engine's session is opened before the call is
    answered, so the caller is answered and greeted by it (no bridge: nothing was heard)."""

    async def greet(session: FakeSession) -> None:
        await session.wait_for("response.create")
        await session.respond(tone(ENGINE_HZ, session.output_rate, 1.0, amplitude=8000))

    async with (
        FakeRealtime("ga") as cloud,
        FakeRealtime("ga", greet) as engine,
        _network() as network,
    ):
        cloud.refuse = 503
        call = _call(network, cloud, engine, on_connect_failure="reject")
        await _heard(call, [ENGINE_HZ])
        call.phone.hang_up()
        assert await call.ended() == "caller hung up"
        box = call.agent.black_box()
    assert _tones(call.phone.heard()) == [ENGINE_HZ]
    assert box is not None
    assert [(e["phase"], e["at_s"]) for e in box["model"]["failovers"]] == [("connect", 0.0)]


def _drop_after_first_audio(reply_seconds: float = 0.0) -> Any:
    """A cloud model that (optionally sends a reply all at once, then) drops the socket."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        if reply_seconds:
            reply = tone(CLOUD_HZ, session.output_rate, reply_seconds, amplitude=8000)
            await session.respond(reply, "Let me explain at length.")
        await asyncio.sleep(0.3)
        session.drop()

    return script


async def test_caller_audio_during_the_bridge_synthesis_is_not_counted_for_the_engine() -> None:
    """The bridge phrase takes 0.8 s to synthesise: the engine's session is swapped in only
    after it is queued, so the caller audio the conversation counts as sent to the engine
    (its timeline for barge-in) is the audio the engine received, not 0.8 s less."""
    services = Services(synthesis_seconds=0.8)
    async with (
        FakeRealtime("ga", _drop_after_first_audio()) as cloud,
        FakeRealtime("ga") as engine,
        _network() as network,
    ):
        call = _call(network, cloud, engine, services, greeting="")
        local = await engine.session(timeout=10.0)
        async with asyncio.timeout(10.0):  # replaced, and a second of audio on the engine
            while call.agent.conversation.stage is not Stage.ACTIVE or local.input_ms < 1000:
                await asyncio.sleep(0.05)
        sent_ms = call.agent.conversation._caller.sent_ms
        received_ms = local.input_ms
        call.phone.hang_up()
        assert await call.ended() == "caller hung up"
    assert services.synthesized == [BRIDGE]
    batch_ms = call.agent.agent.uplink_batch_ms
    assert abs(received_ms - sent_ms) <= 2 * batch_ms, (received_ms, sent_ms)


async def test_the_bridge_phrase_is_synthesised_once_for_all_calls() -> None:
    """Two calls failing over at once with one phrase cache: one synthesis of the bridge
    phrase, and both callers hear it."""
    services, phrases = Services(synthesis_seconds=0.3), PhraseCache()
    async with (
        FakeRealtime("ga") as cloud,
        FakeRealtime("ga") as engine,
        _network() as network,
    ):
        cloud.refuse = 503
        calls = [_call(network, cloud, engine, services, phrases) for _ in range(2)]
        for call in calls:
            await _heard(call, [LOCAL_VOICE_HZ[BRIDGE]])
            call.phone.hang_up()
            assert await call.ended() == "caller hung up"
    assert services.synthesized == [BRIDGE]
    assert len(services.of("agent_failover")) == 2


async def test_when_the_engine_cannot_take_over_a_cut_reply_and_the_bridge_are_heard_out() -> None:
    """The cloud sends 2.5 s of reply at once and drops; the engine refuses: what was queued
    of the reply plays, then the whole bridge phrase, then the apology (the apology waits for
    the audio queued ahead of the bridge, not only for the bridge's own length)."""
    async with (
        FakeRealtime("ga", _drop_after_first_audio(reply_seconds=2.5)) as cloud,
        FakeRealtime("ga") as engine,
        _network() as network,
    ):
        engine.refuse = 503
        call = _call(network, cloud, engine, greeting="")
        cause = await call.ended()
    assert cause.startswith("model connect: "), cause
    heard = call.phone.heard()
    assert _tones(heard) == [CLOUD_HZ, LOCAL_VOICE_HZ[BRIDGE], LOCAL_VOICE_HZ[APOLOGY]]
    block = RATE // 10
    bridge_blocks = [
        start
        for start in range(0, len(heard) - block + 1, block)
        if np.abs(heard[start : start + block]).max(initial=0) >= 2000
        and tone_level_db(heard[start : start + block], LOCAL_VOICE_HZ[BRIDGE], RATE)
        > tone_level_db(heard[start : start + block], CLOUD_HZ, RATE)
        and tone_level_db(heard[start : start + block], LOCAL_VOICE_HZ[BRIDGE], RATE)
        > tone_level_db(heard[start : start + block], LOCAL_VOICE_HZ[APOLOGY], RATE)
    ]
    assert len(bridge_blocks) >= 5, bridge_blocks  # 0.6 s: whole, give or take a block edge


async def test_a_hang_up_during_the_failover_leaves_no_engine_session_open() -> None:
    """The caller hangs up while the engine's session is open and the bridge phrase is still
    being synthesised (before the swap): that session is closed with the call."""
    services = Services(synthesis_seconds=3.0)
    async with (
        FakeRealtime("ga", _drop_after_first_audio(reply_seconds=0.4)) as cloud,
        FakeRealtime("ga") as engine,
        _network() as network,
    ):
        call = _call(network, cloud, engine, services, greeting="")
        local = await engine.session(timeout=10.0)
        await local.wait_for("conversation.item.create", timeout=5.0)  # replayed: not swapped
        assert services.synthesized == [BRIDGE]
        call.phone.hang_up()
        assert await call.ended() == "caller hung up"
        async with asyncio.timeout(5.0):
            while local.ws.state is not State.CLOSED:
                await asyncio.sleep(0.05)
