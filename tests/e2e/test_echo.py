"""The echo guard through SIP: Kamailio, the pjsua2 test phone on a line that echoes, a fake
model that says speech_started on that echo, and then the caller really interrupting."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from media.resample import resample
from media.wav import read_wav, write_wav
from tests.audio import tone
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.realtime_server import FakeRealtime, FakeSession
from tests.support import DaemonProcess, registered
from tests.support.echo_line import AGENT_LINES, CALLER_LINES, RATE, sentence

pytestmark = pytest.mark.e2e

TURNS = 8
TURN_SECONDS = 1.5


def _went_on_for(session: FakeSession, ms: int) -> Any:
    """The model's input has gone on for ``ms`` from now (the agent's echo has come in by
    then: the daemon sends echo alone as silence, so the input's sound cannot tell)."""
    start = session.input_ms
    return lambda pcm: len(pcm) // 8 >= start + ms


def _at_rate(pcm: NDArray[np.int16], rate: int) -> NDArray[np.int16]:
    return pcm if rate == RATE else resample(pcm, RATE, rate)


@pytest.mark.realtime
async def test_an_echoing_phone_never_barges_in_but_its_caller_does(
    tmp_path: Path, daemon_env: dict[str, str]
) -> None:
    """The phone (no silence suppression) sends back what it hears 100 ms later at -10 dB;
    over 8 agent turns the model says speech_started on that echo and nothing is cut (each
    logged as echo once); then the caller speaks over the echo of a long reply and it is cut:
    cancelled, truncated, and the phone hears silence within 60 ms of the speech_started."""
    state: dict[str, Any] = {}
    speaking_now = asyncio.Event()

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        speech = np.concatenate([sentence(line) for line in AGENT_LINES])
        piece = round(TURN_SECONDS * RATE)
        for number in range(TURNS):
            pcm = speech[number * piece : (number + 1) * piece]
            reply = _at_rate(pcm, session.output_rate)
            coming = _went_on_for(session, 500)
            speaking = asyncio.create_task(session.respond(reply, pace=0.5))
            await session.wait_for_input(coming, 10)
            await session.speech_started(max(0, session.input_ms - 300))
            await asyncio.sleep(0.4)
            await session.send(
                {
                    "type": "input_audio_buffer.speech_stopped",
                    "audio_end_ms": session.input_ms,
                    "item_id": "item_caller",
                }
            )
            await speaking
            await asyncio.sleep(TURN_SECONDS / 2 + 0.4)  # the rest plays, its echo comes back
        state["echo_turns_done"] = len(session.of("conversation.item.truncate"))
        state["echo_input"] = session.input_pcm
        long_reply = tone(600, session.output_rate, 10.0, amplitude=8000)
        coming = _went_on_for(session, 500)
        speaking = asyncio.create_task(session.respond(long_reply, pace=0.5))
        await session.wait_for_input(coming, 10)
        state["talk"] = True
        speaking_now.set()
        await asyncio.sleep(0.8)  # the caller's voice has reached the model
        state["event_at"] = await session.speech_started(max(0, session.input_ms - 300))
        state["spoken"] = await speaking

    env = daemon_env | {"SIPAI_AGENT__GREETING": ""}
    async with running_kamailio(tmp_path / "k") as pbx, FakeRealtime("ga", script) as fake:
        env = env | {
            "SIPAI_AGENT__URL": fake.url,
            "SIPAI_SIP__REGISTRAR": pbx.uri,
            "SIPAI_SIP__PASSWORD": password("1000"),
            "SIPAI_AGENT__BACKEND": "url",
            "SIPAI_AGENT__DIALECT": "ga",
        }
        async with DaemonProcess(env, wait=registered) as daemon:
            phone, call = await _dial(pbx)
            try:
                await phone.command("echo", call=call, gain_db=-10, delay_ms=100)
                await phone.command("tap", call=call)
                wav = tmp_path / "caller.wav"
                write_wav(wav, RATE, sentence(CALLER_LINES[0]))
                async with asyncio.timeout(TURNS * (TURN_SECONDS + 3) + 20):
                    await speaking_now.wait()
                await phone.command("play", call=call, wav=str(wav))
                session = await fake.session()
                truncate = (await session.wait_for("conversation.item.truncate", timeout=20)).event
                await asyncio.sleep(0.5)
                tapped = await phone.command("tap_stop", call=call, wav=str(tmp_path / "t.wav"))
                await phone.command("hangup", call=call)
                await asyncio.sleep(1.0)
            finally:
                await phone.close()
            events = daemon.log_events()
    assert fake.violations == []
    assert fake.errors == []
    ignored = [e for e in events if e.get("event") == "agent.echo_ignored"]
    barge_ins = [e for e in events if e.get("event") == "agent.barge_in"]
    print(f"\nechoes ignored: {[(e['delay_ms'], e['erle_db']) for e in ignored]}")
    print(f"barge-ins: {barge_ins}")
    assert state["echo_turns_done"] == 0, "an echo turn was cut"
    frames = state["echo_input"][: len(state["echo_input"]) // 160 * 160].reshape(-1, 160)
    loud_ms = 20 * int(np.count_nonzero(np.abs(frames.astype(np.int32)).max(axis=1) > 300))
    print(f"model input over the echo turns with sound: {loud_ms} ms of {len(frames) * 20}")
    assert loud_ms <= 2000, loud_ms  # the echo (about -27 dBFS) went as silence
    assert len(ignored) == TURNS, ignored
    assert len(barge_ins) == 1, barge_ins
    assert state["spoken"][2] is True  # the long reply was cancelled
    assert session.cancels == 1
    assert truncate["audio_end_ms"] > 0
    heard = read_wav(tmp_path / "t.wav").samples
    times = tapped["times"]
    tail = heard[-len(heard) // 3 :]  # the long reply's tone, then the cut
    loud = np.flatnonzero(np.abs(tail.astype(np.int32)) > 800)
    last = len(heard) - len(tail) + int(loud[-1])
    silent_at = times[last // 160] + (last % 160 + 1) / 8000
    print(f"speech_started -> phone silent: {(silent_at - state['event_at']) * 1000:.0f} ms")
    assert silent_at - state["event_at"] <= 0.060, silent_at - state["event_at"]


async def _dial(pbx: Kamailio) -> tuple[TestPhone, int]:
    # The line loops every frame back: with the phone's VAD on, silence is not sent, and the
    # first frames of each talk spurt after it reach the daemon altered by its jitter buffer
    # (one turn of the 8, the same every run, was then judged the caller: see README, Echo).
    phone = await TestPhone.start("caller", short_jitter_buffer=True, vad=False)
    await phone.register(pbx, "1003")
    dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
    await phone.expect("media", call=dialled["call"], status="active", timeout=15)
    return phone, int(dialled["call"])
