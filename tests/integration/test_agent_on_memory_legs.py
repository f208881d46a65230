"""The inbound agent on an in-memory call leg, talking to the fake realtime server.

The phone is a :class:`daemon.legs.memory.MemoryPhone` on a media clock paced at real time
(the model is a real WebSocket server in this process); what the phone heard is exactly what
the agent's playout buffer handed out, frame by frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from structlog.testing import capture_logs

from config.schema import AgentSettings, ApiSettings, RealtimeSettings
from daemon.calls.inbound import InboundAgent
from daemon.legs.memory import MediaClock, MemoryNetwork, MemoryPhone, PhoneEvent
from daemon.realtime.backends import endpoint
from tests.audio import tone, tone_level_db
from tests.peers.realtime_server import RATE_LIMITED, FakeRealtime, FakeSession

RATE = 8000
APOLOGY_HZ = 400


@dataclass
class Services:
    """The supervisor's side of a worker, for one agent: a tone for the apology, and the
    reports it received."""

    reports: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def synthesize(self, text: str, rate: int) -> NDArray[np.int16]:
        return tone(APOLOGY_HZ, rate, 1.0, amplitude=8000)

    async def report(self, kind: str, body: dict[str, Any]) -> None:
        self.reports.append((kind, body))


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
async def _network(**options: Any) -> AsyncIterator[MemoryNetwork]:
    async with MediaClock(speed=1.0) as clock:
        yield MemoryNetwork(clock, rate=RATE, **options)


def _call(network: MemoryNetwork, fake: FakeRealtime, **agent: Any) -> Call:
    settings = AgentSettings(backend="url", url=fake.url, **{"greeting": ""} | agent)
    leg, phone = network.incoming("1001")
    services = Services()
    inbound = InboundAgent(
        leg, settings, endpoint(settings, ApiSettings()), RealtimeSettings(), services
    )
    return Call(inbound, phone, services, asyncio.create_task(inbound.run()))


def _loud(pcm: NDArray[np.int16], level: int = 800) -> tuple[int, int]:
    """First and last sample louder than ``level`` (a tone, not a fade tail)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > level)
    assert len(loud), "nothing loud was heard"
    return int(loud[0]), int(loud[-1])


def _tone_db(pcm: NDArray[np.int16], freq: float) -> float:
    """The level of ``freq`` over the loud part of ``pcm`` (dB re 1: 8000 peak is 78 dB)."""
    first, last = _loud(pcm)
    return tone_level_db(pcm[first : last + 1], freq, RATE)


def _has_tone(freq: float) -> Callable[[NDArray[np.int16]], bool]:
    return lambda pcm: bool(np.abs(pcm).max(initial=0) > 800) and _tone_db(pcm, freq) > 70


async def _connected(call: Call) -> None:
    async with asyncio.timeout(10):
        await call.phone.connected.wait()


async def test_audio_goes_both_ways() -> None:
    """The model's reply reaches the phone and the phone's voice reaches the model."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await session.respond(tone(600, session.output_rate, 1.0, amplitude=8000))

    async with FakeRealtime("ga", script) as fake, _network() as network:
        call = _call(network, fake)
        await _connected(call)
        call.phone.play(tone(1000, RATE, 1.0, amplitude=8000))
        session = await fake.session()
        await session.wait_for_input(_has_tone(1000), 10)
        await asyncio.sleep(1.5)
        call.phone.hang_up()
        assert await call.ended() == "caller hung up"
    heard = call.phone.heard()
    levels = (_tone_db(heard, 600), _tone_db(heard, 1000))
    print(f"phone heard 600 Hz at {levels[0]:.0f} dB, 1000 Hz at {levels[1]:.0f} dB")
    assert levels[0] > 70 > levels[1], levels
    assert fake.violations == []
    assert fake.errors == []


async def test_barge_in_truncates_at_what_the_phone_heard() -> None:
    """Caller speech over a long reply: the reply is cancelled once, and the truncate's
    audio_end_ms is what the phone heard of the item, within 40 ms."""
    spoken: dict[str, Any] = {}

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        reply = tone(600, session.output_rate, 12.0, amplitude=8000)
        speaking = asyncio.create_task(session.respond(reply, pace=0.5))
        await asyncio.sleep(1.5)
        await session.speech_started(max(0, session.input_ms - 300))  # 300 ms heard of 200
        spoken["result"] = await speaking

    async with FakeRealtime("ga", script) as fake, _network() as network:
        call = _call(network, fake)
        session = await fake.session()
        truncate = (await session.wait_for("conversation.item.truncate", timeout=20)).event
        await asyncio.sleep(0.5)
        call.phone.hang_up()
        await call.ended()
    first, last = _loud(call.phone.heard())
    heard_ms = (last - first + 1) / 8
    error_ms = abs(heard_ms - truncate["audio_end_ms"])
    print(f"barge-in: heard {heard_ms:.1f} ms, truncated at {truncate['audio_end_ms']} ms")
    assert error_ms <= 40, (heard_ms, truncate)
    assert spoken["result"][2] is True  # still streaming: cancelled
    assert session.cancels == 1
    assert fake.violations == []


async def test_dtmf_reaches_the_model_then_end_call_after_the_goodbye() -> None:
    """Keys pressed reach the model as text; end_call hangs up only once the goodbye said
    before it has been heard to its end."""
    goodbye_s = 1.5

    async def script(session: FakeSession) -> None:
        await session.wait_for(
            "conversation.item.create",
            timeout=10,
            where=lambda e: "12#" in json.dumps(e["item"].get("content")),
        )
        goodbye = tone(500, session.output_rate, goodbye_s, amplitude=8000)
        await session.respond(goodbye, "Goodbye.")
        await session.call_tool("end_call", {})

    async with FakeRealtime("ga", script) as fake, _network() as network:
        call = _call(network, fake)
        await _connected(call)
        await asyncio.sleep(0.3)
        call.phone.press("12#")
        assert await call.ended() == "end_call"
    first, last = _loud(call.phone.heard())
    heard_s = (last - first + 1) / RATE
    print(f"goodbye: {goodbye_s} s said, {heard_s:.3f} s heard before the hang-up")
    assert heard_s >= goodbye_s - 0.02, heard_s
    assert call.phone.events[-1] == PhoneEvent("hung_up")
    session = fake.sessions[0]
    (output,) = session.of("conversation.item.create")[1:]  # after the keys: the tool's
    assert output["item"]["type"] == "function_call_output"
    [(kind, turn)] = call.services.reports
    assert (kind, turn["role"], turn["text"]) == ("transcript", "agent", "Goodbye.")
    assert fake.violations == []


async def test_end_call_hangs_up_once_while_the_bye_is_answered() -> None:
    """A call whose hang-up takes 0.5 s to end it (a BYE awaiting its answer) is hung up
    once by end_call, not again when the agent finishes."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await session.respond(tone(500, session.output_rate, 0.3, amplitude=8000))
        await session.call_tool("end_call", {})

    async with FakeRealtime("ga", script) as fake, _network(bye_seconds=0.5) as network:
        call = _call(network, fake)
        assert await call.ended() == "end_call"
        async with asyncio.timeout(5):
            await call.phone.done.wait()
    hang_ups = [e for e in call.phone.events if e.kind == "hung_up"]
    assert len(hang_ups) == 1, f"{len(hang_ups)} hang-ups: {call.phone.events}"
    assert fake.violations == []


async def test_transfer_refers_the_phone_after_the_announcement() -> None:
    """transfer_call REFERs the phone to the extension asked for, once the announcement was
    heard, and a 2xx ends the call as transferred."""
    announcement_s = 1.0
    heard_at_refer: list[int] = []

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await session.respond(tone(500, session.output_rate, announcement_s, amplitude=8000))
        await session.call_tool("transfer_call", {"extension": "1005"})

    async with FakeRealtime("ga", script) as fake, _network() as network:
        call = _call(network, fake, transfer_extensions=["1005"])
        async with asyncio.timeout(20):  # what the phone had heard when the REFER came
            while not any(e.kind == "refer" for e in call.phone.events):
                await asyncio.sleep(0.005)
        heard_at_refer.append(len(call.phone.heard()))
        assert await call.ended() == "transferred"
    assert PhoneEvent("refer", "1005") in call.phone.events
    first, last = _loud(call.phone.heard())
    assert heard_at_refer[0] > last, (heard_at_refer, last)  # all of it heard before the REFER
    assert (last - first + 1) / RATE >= announcement_s - 0.02
    assert fake.violations == []


async def test_a_refused_refer_is_logged_and_a_named_error_for_the_model() -> None:
    """A REFER the leg refuses (a LegError with no text) logs agent.tool_failed, and the model
    gets a non-empty error as the transfer's output while the call stays up."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await session.call_tool("transfer_call", {"extension": "1005"})

    with capture_logs() as logs:
        async with FakeRealtime("ga", script) as fake, _network(refer_refused="") as network:
            call = _call(network, fake, transfer_extensions=["1005"])
            session = await fake.session()
            received = await session.wait_for(
                "conversation.item.create",
                where=lambda e: e["item"]["type"] == "function_call_output",
            )
            assert not call.task.done()
            call.phone.hang_up()
            assert await call.ended() == "caller hung up"
    output = json.loads(received.event["item"]["output"])
    assert output == {"error": "LegError"}, output
    failed = [e for e in logs if e["event"] == "agent.tool_failed"]
    assert [(e["tool"], e["error"]) for e in failed] == [("transfer_call", "")], logs
    assert fake.violations == []


async def test_a_rate_limit_ends_the_call_politely() -> None:
    """A rate-limit error: reported as agent_failed, the phone hears the apology, the call
    ends with the model's failure as its cause, and nothing reconnects."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await session.send(RATE_LIMITED)

    async with FakeRealtime("ga", script) as fake, _network() as network:
        call = _call(network, fake)
        cause = await call.ended()
    assert cause.startswith("model rate_limit"), cause
    [(_, body)] = [r for r in call.services.reports if r[0] == "agent_failed"]
    assert body["kind"] == "rate_limit"
    assert len(fake.sessions) == 1
    heard = call.phone.heard()
    assert _tone_db(heard, APOLOGY_HZ) > 70
    first, last = _loud(heard)
    assert (last - first + 1) / RATE >= 0.98  # the whole apology
    assert call.phone.events[-1] == PhoneEvent("hung_up")


async def test_calls_in_a_row_leave_no_task() -> None:
    """Five calls one after another (the caller hangs up, or the model ends the call): no
    task outlives its call and every model session is closed."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        if len(fake.sessions) % 2 == 0:
            await session.call_tool("end_call", {})

    async with FakeRealtime("ga", script) as fake, _network() as network:
        baseline = len(asyncio.all_tasks())
        for number in range(5):
            call = _call(network, fake)
            await _connected(call)
            if number % 2 == 0:
                await asyncio.sleep(0.3)
                call.phone.hang_up()
            cause = await call.ended()
            assert cause == ("caller hung up" if number % 2 == 0 else "end_call"), cause
        async with asyncio.timeout(3):  # the fake server's connection handlers finish
            while len(asyncio.all_tasks()) > baseline:
                await asyncio.sleep(0.02)
        left = len(asyncio.all_tasks()) - baseline
        assert left == 0, f"{left} tasks left after 5 calls"
        assert len(fake.sessions) == 5
        assert all(s.ws.state.name == "CLOSED" for s in fake.sessions)


def _quiet_after_sound(quiet_ms: int) -> Callable[[NDArray[np.int16]], bool]:
    """The caller has made a sound and has been quiet for ``quiet_ms`` since (8 kHz input)."""

    def check(pcm: NDArray[np.int16]) -> bool:
        loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > 800)
        return bool(len(loud)) and len(pcm) - int(loud[-1]) > quiet_ms * 8

    return check


@pytest.mark.realtime
async def test_the_black_box_times_each_turn() -> None:
    """A model that answers 300 ms after the caller's audio went quiet shows a turn latency
    of 300-650 ms in the black box (the caller's end measured by the daemon's own VAD, the
    answer at its first frame out), and a barge-in over the answer is flushed within 40 ms."""

    async def script(session: FakeSession) -> None:
        await session.wait_for_input(_quiet_after_sound(200), 10)
        await session.send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": session.input_ms - 200,
                "item_id": "item_caller_1",
            }
        )
        await asyncio.sleep(0.3)
        reply = tone(600, session.output_rate, 6.0, amplitude=8000)
        speaking = asyncio.create_task(session.respond(reply, pace=0.5))
        await asyncio.sleep(1.5)
        await session.speech_started(max(0, session.input_ms - 300))  # past the 200 ms guard
        await speaking

    async with FakeRealtime("ga", script) as fake, _network() as network:
        call = _call(network, fake)
        await _connected(call)
        await asyncio.sleep(0.2)
        call.phone.play(tone(1000, RATE, 1.0, amplitude=8000))
        session = await fake.session()
        await session.wait_for("conversation.item.truncate", timeout=20)
        await asyncio.sleep(0.3)
        call.phone.hang_up()
        assert await call.ended() == "caller hung up"
    box = call.agent.black_box()
    assert box is not None
    [turn] = box["turns"]
    [barge_in] = box["barge_ins"]
    print(f"\nturn {turn}\nbarge-in {barge_in}\nlatency {box['turn_latency_ms']}")
    assert turn["latency_ms"] is not None, box
    assert 300 <= turn["latency_ms"] <= 650, turn
    assert barge_in["stop_ms"] <= 40, barge_in
    assert barge_in["cancelled"] is True, barge_in
    assert box["turn_latency_ms"]["count"] == 1, box["turn_latency_ms"]
    assert box["model"]["connect_ms"] is not None, box["model"]
    assert box["media"] is not None, box
    assert box["media"]["flushes"] == 1, box["media"]
    assert fake.violations == []
