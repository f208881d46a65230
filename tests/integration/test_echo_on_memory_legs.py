"""The echo guard on an in-memory call: a phone line that echoes the agent back.

The phone sends back what it hears 100 ms later at -10 dB through mu-law both ways
(:class:`tests.support.echo_line.EchoingPhone`); the fake realtime server says
``speech_started`` while that echo comes in, as a model's VAD does on such a line. The media
clock is paced at real time (the model is a real WebSocket server in this process).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from structlog.testing import capture_logs

from config.schema import AgentSettings, ApiSettings, RealtimeSettings
from daemon.calls.inbound import InboundAgent
from daemon.legs.memory import MediaClock, MemoryNetwork
from daemon.realtime.backends import endpoint
from media.resample import resample
from tests.peers.realtime_server import FakeRealtime, FakeSession
from tests.support.echo_line import AGENT_LINES, CALLER_LINES, RATE, EchoingPhone, sentence

TURNS = 20
TURN_SECONDS = 1.2


class Services:
    async def synthesize(self, text: str, rate: int) -> NDArray[np.int16]:
        return np.zeros(rate // 10, dtype=np.int16)

    async def report(self, kind: str, body: dict[str, Any]) -> None:
        return None


def _agent_turns() -> list[NDArray[np.int16]]:
    """TURNS different pieces of Piper speech of TURN_SECONDS each."""
    speech = np.concatenate([sentence(line) for line in AGENT_LINES])
    piece = round(TURN_SECONDS * RATE)
    step = (len(speech) - piece) // TURNS
    return [speech[n * step : n * step + piece] for n in range(TURNS)]


def _at_rate(pcm: NDArray[np.int16], rate: int) -> NDArray[np.int16]:
    return pcm if rate == RATE else resample(pcm, RATE, rate)


def _echo_coming(ms: int = 200) -> Callable[[NDArray[np.int16]], bool]:
    """The model's input has carried sound over its last ``ms`` (the echo is coming in)."""

    def check(pcm: NDArray[np.int16]) -> bool:
        tail = pcm[-ms * 8 :].astype(np.float64)
        return len(tail) == ms * 8 and float(np.sqrt(np.mean(tail * tail))) > 300

    return check


def _not_in(seen: list[dict[str, Any]]) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event not in seen


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def _run_call(
    script: Callable[[FakeSession, EchoingPhone], Awaitable[None]], within: float
) -> tuple[list[dict[str, Any]], FakeRealtime]:
    """One call from an echoing phone, the model running ``script``; hung up once the script
    is over."""
    finished = asyncio.Event()
    with capture_logs() as logs:
        async with MediaClock(speed=1.0) as clock:
            network = MemoryNetwork(clock, rate=RATE)
            leg, phone = network.incoming("1001")
            line = EchoingPhone(phone, delay_ms=100, gain_db=-10)

            async def run(session: FakeSession) -> None:
                try:
                    await script(session, line)
                finally:
                    finished.set()

            async with FakeRealtime("ga", run) as fake:
                settings = AgentSettings(backend="url", url=fake.url, greeting="")
                agent = InboundAgent(
                    leg, settings, endpoint(settings, ApiSettings()), RealtimeSettings(), Services()
                )
                task = asyncio.create_task(agent.run())
                async with asyncio.timeout(10):
                    await phone.connected.wait()
                line.start()
                async with asyncio.timeout(within):
                    await finished.wait()
                phone.hang_up()
                async with asyncio.timeout(10):
                    await task
                await line.stop()
    assert fake.errors == [], fake.errors
    assert fake.violations == [], fake.violations
    return logs, fake


async def _speak_into_the_echo(session: FakeSession, pcm: NDArray[np.int16], start: int) -> None:
    """One agent turn: ``pcm`` said; once its echo comes in, speech_started ``start`` ms
    before the input's end (past the 200 ms guard at 300, under it at 50), speech_stopped
    700 ms later; the turn ends when the echo of its end has come back."""
    speaking = asyncio.create_task(session.respond(_at_rate(pcm, session.output_rate), pace=0.5))
    await session.wait_for_input(_echo_coming(), 10)
    await session.speech_started(max(0, session.input_ms - start))
    await asyncio.sleep(0.7)  # the guard counts the uplink as sent, which may lag what arrived
    await session.send(
        {
            "type": "input_audio_buffer.speech_stopped",
            "audio_end_ms": session.input_ms,
            "item_id": "item_caller",
        }
    )
    await speaking  # sent at twice real time: the rest plays out, then its echo comes back
    await asyncio.sleep(len(pcm) / RATE / 2 + 0.3)


async def test_an_echoing_line_never_barges_in_over_20_agent_turns() -> None:
    """20 agent turns on a line that echoes them back at -10 dB after 100 ms, each with a
    speech_started on the echo (past the guard, or under it then past): no flush, no cancel,
    no truncate; each is logged once as echo, with the line's delay."""

    async def script(session: FakeSession, line: EchoingPhone) -> None:
        await session.wait_for("input_audio_buffer.append")
        for number, pcm in enumerate(_agent_turns()):
            await _speak_into_the_echo(session, pcm, 300 if number % 2 == 0 else 50)

    logs, fake = await _run_call(script, TURNS * (TURN_SECONDS + 2.0))
    [session] = fake.sessions
    ignored = _events(logs, "agent.echo_ignored")
    delays = [e["delay_ms"] for e in ignored]
    print(f"\n{len(ignored)} echoes ignored; delays {sorted(delays)}")
    print("lowest ERLE", min(e["erle_db"] for e in ignored), "dB")
    assert _events(logs, "agent.barge_in") == [], _events(logs, "agent.barge_in")
    assert session.of("conversation.item.truncate") == []
    assert session.cancels == 0
    assert len(ignored) == TURNS, (len(ignored), [e["window_ms"] for e in ignored])
    assert all(80 <= d <= 140 for d in delays), delays


async def test_the_caller_speaking_over_the_echo_still_barges_in() -> None:
    """On the same line the caller's own voice over the echo barges in: at once when the
    speech_started comes with it (stop_ms <= 40), and on the second uplink batch that
    carries it when the speech_started came on the echo before (stop_ms <= 80 counted from
    the first), each time truncated and cancelled once."""
    truncates: list[dict[str, Any]] = []

    async def script(session: FakeSession, line: EchoingPhone) -> None:
        await session.wait_for("input_audio_buffer.append")
        turns = _agent_turns()
        await _speak_into_the_echo(session, turns[0], 300)
        for index, speech_first in enumerate((False, True)):
            long_turn = np.concatenate(turns[1 + 2 * index : 3 + 2 * index])
            reply = _at_rate(long_turn, session.output_rate)
            speaking = asyncio.create_task(session.respond(reply, pace=0.5))
            await session.wait_for_input(_echo_coming(), 10)
            if speech_first:  # on the echo: ignored; then the caller talks over it
                await session.speech_started(max(0, session.input_ms - 300))
                await asyncio.sleep(0.3)
            line.say(sentence(CALLER_LINES[index]))
            await asyncio.sleep(0.4)  # 300 ms of the voice reach the model
            if not speech_first:
                await session.speech_started(max(0, session.input_ms - 300))
            received = await session.wait_for(
                "conversation.item.truncate", timeout=10, where=_not_in(list(truncates))
            )
            truncates.append(received.event)
            assert (await speaking)[2] is True  # cancelled
            while line.saying:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)

    logs, fake = await _run_call(script, 30)
    [session] = fake.sessions
    barge_ins = _events(logs, "agent.barge_in")
    print(f"\nbarge-ins {barge_ins}\nechoes ignored {_events(logs, 'agent.echo_ignored')}")
    assert len(barge_ins) == 2, barge_ins
    assert barge_ins[0]["stop_ms"] <= 40, barge_ins  # with the speech_started
    assert barge_ins[1]["stop_ms"] <= 80, barge_ins  # two batches after echo, then the flush
    assert all(b["cancelled"] for b in barge_ins), barge_ins
    assert len(truncates) == 2
    assert session.cancels == 2
    assert len(_events(logs, "agent.echo_ignored")) == 2  # the first turn's, the second's
