"""The echo guard on an in-memory call: a phone line that echoes the agent back.

The phone sends back what it hears 100 ms later at -10 dB through mu-law both ways
(:class:`tests.support.echo_line.EchoingPhone`); the fake realtime server says
``speech_started`` while that echo comes in, as a model's VAD does on such a line. The media
clock is paced at real time (the model is a real WebSocket server in this process).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
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


def _echo_coming(ms: int = 400) -> Callable[[FakeSession], Callable[[NDArray[np.int16]], bool]]:
    """The model's input has gone on for ``ms`` since the agent began (the echo is coming
    in: the guard sends it as silence, so the input's sound cannot tell)."""

    def since(session: FakeSession) -> Callable[[NDArray[np.int16]], bool]:
        start = session.input_ms
        return lambda pcm: len(pcm) // 8 >= start + ms

    return since


def _loud_ms(pcm: NDArray[np.int16], dbfs: float) -> int:
    """How many 20 ms frames of ``pcm`` (8 kHz) are louder than ``dbfs``, in ms."""
    frames = pcm[: len(pcm) - len(pcm) % 160].reshape(-1, 160).astype(np.float64)
    level = 10 * np.log10(np.maximum(np.mean(frames * frames, axis=1), 1e-9) / 32768**2)
    return int(np.count_nonzero(level > dbfs)) * 20


def _not_in(seen: list[dict[str, Any]]) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event not in seen


def _events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


async def _run_call(
    script: Callable[[FakeSession, EchoingPhone], Awaitable[None]],
    within: float,
    noise_dbfs: float | None = None,
) -> tuple[list[dict[str, Any]], FakeRealtime]:
    """One call from an echoing phone (with the line's noise at ``noise_dbfs``), the model
    running ``script``; hung up once the script is over."""
    finished = asyncio.Event()
    with capture_logs() as logs:
        async with MediaClock(speed=1.0) as clock:
            network = MemoryNetwork(clock, rate=RATE)
            leg, phone = network.incoming("1001")
            line = EchoingPhone(phone, delay_ms=100, gain_db=-10, noise_dbfs=noise_dbfs)

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
    once the model has received 700 ms of audio from that start (the judgements on it made:
    the daemon feeds each batch to the guard as it sends it); the turn ends when the echo
    of its end has come back."""
    echo_coming = _echo_coming()(session)
    speaking = asyncio.create_task(session.respond(_at_rate(pcm, session.output_rate), pace=0.5))
    await session.wait_for_input(echo_coming, 10)
    audio_start = max(0, session.input_ms - start)
    await session.speech_started(audio_start)
    await session.wait_for_input(lambda pcm: len(pcm) // 8 >= audio_start + 700, 10)
    await session.send(
        {
            "type": "input_audio_buffer.speech_stopped",
            "audio_end_ms": session.input_ms,
            "item_id": "item_caller",
        }
    )
    await speaking  # sent at twice real time: the rest plays out, then its echo comes back
    await asyncio.sleep(len(pcm) / RATE / 2 + 0.3)


@pytest.mark.parametrize("noise_dbfs", [-60, -50])
async def test_an_echoing_line_never_barges_in_over_20_agent_turns(noise_dbfs: int) -> None:
    """20 agent turns on a line that echoes them back at -10 dB after 100 ms, with the
    line's noise (-60 or -50 dBFS, a speakerphone's room) on top, each with a speech_started
    on the echo (past the guard, or under it then past) that lasts over the agent's pauses:
    no flush, no cancel, no truncate; each is logged once as echo, with the line's delay
    (or, the window then in a pause of the echo, as nothing above the line's noise)."""

    async def script(session: FakeSession, line: EchoingPhone) -> None:
        await session.wait_for("input_audio_buffer.append")
        for number, pcm in enumerate(_agent_turns()):
            await _speak_into_the_echo(session, pcm, 300 if number % 2 == 0 else 50)

    logs, fake = await _run_call(script, TURNS * (TURN_SECONDS + 2.0), noise_dbfs)
    [session] = fake.sessions
    ignored = _events(logs, "agent.echo_ignored")
    delays = [e["delay_ms"] for e in ignored if e["reason"] != "silent"]
    print(f"\n{len(ignored)} echoes ignored; delays {sorted(delays)}")
    print("lowest ERLE", min(e["erle_db"] for e in ignored if e["reason"] != "silent"), "dB")
    print("barge-ins", _events(logs, "agent.barge_in"))
    assert _events(logs, "agent.barge_in") == [], _events(logs, "agent.barge_in")
    assert session.of("conversation.item.truncate") == []
    assert session.cancels == 0
    assert len(ignored) == TURNS, (len(ignored), [e["window_ms"] for e in ignored])
    assert all(80 <= d <= 140 for d in delays), delays
    assert len(delays) >= TURNS - 4, ignored  # the rest: only noise in the window, watched
    # The echo (about -27 dBFS) went to the model as silence, the line's noise as it came.
    loud = _loud_ms(session.input_pcm, noise_dbfs + 12)
    [muted] = _events(logs, "agent.echo_muted")
    print(f"model input louder than the noise + 12 dB: {loud} ms; muted {muted}")
    assert loud <= 1000, loud  # of about 40 s of echo
    assert muted["batches"] >= TURNS * 10


@pytest.mark.parametrize("noise_dbfs", [None, -50])
async def test_the_caller_speaking_over_the_echo_still_barges_in(noise_dbfs: int | None) -> None:
    """On the same line (noiseless, or with -50 dBFS of noise) the caller's own voice over the
    echo barges in: at once when the speech_started comes with it (stop_ms <= 40), and once
    it has been judged the caller for the guard's 200 ms when the speech_started came on the
    echo before (stop_ms, counted from the first batch judged the caller, <= 200 + 80), each
    time truncated and cancelled once. The voice's onset to the truncate's arrival is printed (wall
    time: the loop's stalls are in it)."""
    truncates: list[dict[str, Any]] = []
    onsets: list[float] = []

    async def script(session: FakeSession, line: EchoingPhone) -> None:
        await session.wait_for("input_audio_buffer.append")
        turns = _agent_turns()
        await _speak_into_the_echo(session, turns[0], 300)
        for index, speech_first in enumerate((False, True)):
            long_turn = np.concatenate(turns[1 + 2 * index : 3 + 2 * index])
            reply = _at_rate(long_turn, session.output_rate)
            echo_coming = _echo_coming()(session)
            speaking = asyncio.create_task(session.respond(reply, pace=0.5))
            await session.wait_for_input(echo_coming, 10)
            if speech_first:  # on the echo: ignored; then the caller talks over it
                await session.speech_started(max(0, session.input_ms - 300))
                await asyncio.sleep(0.3)
            line.say(sentence(CALLER_LINES[index]))
            said = time.monotonic()
            await asyncio.sleep(0.4)  # 300 ms of the voice reach the model
            if not speech_first:
                await session.speech_started(max(0, session.input_ms - 300))
            received = await session.wait_for(
                "conversation.item.truncate", timeout=10, where=_not_in(list(truncates))
            )
            truncates.append(received.event)
            onsets.append(round((received.at - said) * 1000))
            assert (await speaking)[2] is True  # cancelled
            while line.saying:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)

    logs, fake = await _run_call(script, 30, noise_dbfs)
    [session] = fake.sessions
    barge_ins = _events(logs, "agent.barge_in")
    print(f"\nbarge-ins {barge_ins}\nechoes ignored {_events(logs, 'agent.echo_ignored')}")
    print(f"voice onset to truncate received (ms): {onsets}")
    assert len(barge_ins) == 2, barge_ins
    assert barge_ins[0]["stop_ms"] <= 40, barge_ins  # with the speech_started
    assert 160 <= barge_ins[1]["stop_ms"] <= 280, barge_ins  # the guard's 200 ms judged
    assert barge_ins[1]["echo_voice_ms"] >= 200, barge_ins
    assert all(b["cancelled"] for b in barge_ins), barge_ins
    assert len(truncates) == 2
    assert session.cancels == 2
    assert len(_events(logs, "agent.echo_ignored")) == 2  # the first turn's, the second's
    # The caller's voice (about -20 dBFS) reached the model in full, over the echo muted.
    voice_ms = _loud_ms(session.input_pcm, -35)
    print(f"model input louder than -35 dBFS: {voice_ms} ms")
    assert voice_ms >= 1500, voice_ms
