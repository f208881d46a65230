"""Recordings of calls on in-memory legs: what the file holds against what the media moved.

The memory network's pairs keep every frame each side received, so the recording's two
channels can be compared with them byte for byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from config.schema import AgentSettings, ApiSettings, RealtimeSettings, RecordingsSettings
from daemon.calls.outbound import OutboundCall
from daemon.legs.leg import CallLeg, Ended, LegError, LegEvent
from daemon.legs.memory import MediaClock, MemoryNetwork
from daemon.recording.dialer import RecordingDialer
from daemon.recording.writer import RecordingWriter
from daemon.worker.flows import FlowContext, agent, start_recording
from media.wav import read_wav_channels
from tests.audio import tone, tone_level_db
from tests.peers.realtime_server import FakeRealtime

RATE = 8000
FRAME = RATE // 50
FADE = round(8.0 * RATE / 1000)  # PlayoutBuffer's default fade-out, in samples
FULL = 20 * np.log10(10000)  # level of the test tones


async def test_channel_two_is_what_was_pulled_and_a_flush_cuts_it(tmp_path: Path) -> None:
    """Channel 2 is byte for byte the frames the daemon's playout handed out: the tone up to
    the flush at 1.0 s, one faded frame at the tick the flush was carried out, then silence;
    channel 1 is the phone's tone, as the daemon's leg received it."""
    writer = RecordingWriter()
    async with MediaClock(speed=None) as clock:
        network = MemoryNetwork(clock, rate=RATE)
        leg, phone = network.incoming("1001")
        media = await leg.media()
        recording = writer.start(media, "in-memory", tmp_path / "in-memory.wav")
        assert recording is not None
        await leg.answer()
        phone.play(tone(440, RATE, 2.0))
        media.playout.push("agent", tone(1000, RATE, 3.0))
        media.playout.end_item("agent")
        clock.later(1.0, media.playout.flush)
        await clock.sleep(2.0)
        pair = phone.call.pair if phone.call is not None else None
        assert pair is not None
        phone.hang_up()
        info = await writer.finish(recording)
    await writer.stop()

    assert info is not None
    rate, samples = read_wav_channels(tmp_path / "in-memory.wav")
    assert rate == RATE
    caller, played = samples[:, 0], samples[:, 1]
    assert played.tobytes() == b"".join(pair.heard_b)  # what the phone was sent
    assert caller.tobytes() == b"".join(pair.heard_a)  # what the daemon's leg received
    assert tone_level_db(caller[: 2 * RATE], 440, RATE) > FULL - 1
    assert tone_level_db(caller[: 2 * RATE], 1000, RATE) < FULL - 40
    frames = played.reshape(-1, FRAME)
    sent = tone(1000, RATE, 3.0).reshape(-1, FRAME)
    cut = next(i for i, frame in enumerate(frames) if not np.array_equal(frame, sent[i]))
    assert abs(cut * 0.02 - 1.0) <= 0.04, f"flush carried out at {cut * 0.02:.2f} s"
    assert frames[cut, 0] == sent[cut, 0]  # the faded frame starts at full level
    assert frames[cut, :FADE].any()
    assert not frames[cut, FADE:].any()
    assert not frames[cut + 1 :].any()  # then silence
    assert info.duration_seconds == len(frames) * 0.02
    assert (info.complete, info.dropped_frames) == (True, 0)


async def test_an_outbound_call_through_the_recording_dialer_is_recorded(tmp_path: Path) -> None:
    """The outbound flow dialling through a RecordingDialer is recorded from the answer on:
    channel 2 holds the message exactly as the callee heard it; a busy callee carried no
    audio and leaves no recording."""
    writer = RecordingWriter()
    message = (np.arange(RATE) % 2000 - 1000).astype(np.int16)  # 1 s, no silent frame
    sounds = {"message": message, "prompt": message, "closing": message}

    statuses: dict[str, list[str]] = {"2001": [], "2002": []}
    extension = ""

    async def report(status: str) -> None:
        statuses[extension].append(status)

    async def transcribe(pcm: Any, rate: int, hint: str) -> str:
        return ""

    async with MediaClock(speed=None) as clock:
        network = MemoryNetwork(clock, rate=RATE)
        phone = network.phone("2001", answer_after=0.3)
        network.phone("2002", on_incoming="busy", answer_after=0.3)
        results = {}
        for extension in ("2001", "2002"):
            dialer = RecordingDialer(network, writer, extension, tmp_path / f"{extension}.wav")
            request = {"extension": extension, "ring_timeout": 5}
            result = await OutboundCall(dialer, request, sounds, transcribe, report).run()
            results[extension] = (result["status"], await dialer.finish())
            if extension == "2001":
                heard = phone.heard()
    await writer.stop()

    status, info = results["2001"]
    assert status == "completed"
    assert info is not None
    assert info.complete
    _, samples = read_wav_channels(tmp_path / "2001.wav")
    assert samples[:, 1].tobytes() == heard.tobytes()
    assert message.tobytes() in samples[:, 1].tobytes()  # the whole message, intact
    assert results["2002"] == ("busy", None)
    assert not (tmp_path / "2002.wav").exists()
    assert statuses == {"2001": ["ringing", "answered"], "2002": ["ringing"]}, statuses


class SlowReader:
    """Reads a FIFO 1 KB every 100 ms through a 4 KB pipe: a disk 3 times slower than a
    recording at 8 kHz (32 KB/s)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a writer's open then succeeds
        fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, 4096)
        self.read = 0
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="slow-reader")
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.wait(0.1):
            with contextlib.suppress(BlockingIOError):  # nothing written yet
                self.read += len(os.read(self.fd, 1024))

    def close(self) -> None:
        """Stop reading; the writer's next write fails with a broken pipe."""
        self.stopping.set()
        self.thread.join(timeout=5)
        os.close(self.fd)


async def test_a_slow_disk_drops_frames_and_never_stalls_the_media(tmp_path: Path) -> None:
    """A recording whose file takes 10 KB/s of its 32 KB/s: the paced media clock still runs
    every tick in 2 s, the tap drops what the writer cannot take, and the recording is
    reported incomplete with its dropped frames and its full 2.0 s duration."""
    path = tmp_path / "slow.wav"
    reader = SlowReader(path)
    writer = RecordingWriter()
    try:
        async with MediaClock(speed=1.0) as clock:
            network = MemoryNetwork(clock, rate=RATE)
            leg, phone = network.incoming("1001")
            media = await leg.media()
            recording = writer.start(media, "slow", path, limit=10)
            assert recording is not None
            await leg.answer()
            phone.play(tone(440, RATE, 2.0))
            media.playout.push("agent", tone(1000, RATE, 2.0))
            started, ticks = time.monotonic(), clock.ticks
            await asyncio.sleep(2.0)
            ran, elapsed = clock.ticks - ticks, time.monotonic() - started
            phone.hang_up()
            info = await writer.finish(recording, within=0.3)
    finally:
        reader.close()
        await writer.stop()

    expected = round(elapsed / 0.02)
    assert abs(ran - expected) <= 2, f"{ran} ticks in {elapsed:.3f} s (expected {expected})"
    assert info is not None
    assert not info.complete
    assert info.dropped_frames > 0, info
    assert abs(info.duration_seconds - 2.0) <= 0.04, info
    assert reader.read < 32_000, reader.read  # the reader really was slower than the call


class GoneAfterEnd:
    """A call leg whose peer is gone once the call has ended: reading its end a second time
    fails (as a SIP leg whose call was torn down may), everything else is the memory leg."""

    def __init__(self, leg: CallLeg) -> None:
        self._leg = leg
        self._ended = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._leg, name)

    async def receive(self) -> LegEvent:
        if self._ended:
            raise LegError("call gone")
        event = await self._leg.receive()
        self._ended = isinstance(event, Ended)
        return event


@dataclass
class Reports:
    """The supervisor's side of a worker: the reports a flow sent."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def report(self, kind: str, body: dict[str, Any]) -> None:
        self.sent.append((kind, body))


async def test_the_inbound_outcome_is_sent_when_a_part_of_it_fails(tmp_path: Path) -> None:
    """An agent's recorded call whose leg fails when its end is read again still reports
    ``inbound_done``: the cause, the black box and the finished recording, the failed part
    logged as ``call.outcome_failed`` and left at its default."""
    reports = Reports()
    async with FakeRealtime("ga") as fake, MediaClock(speed=1.0) as clock:
        network = MemoryNetwork(clock, rate=RATE)
        memory_leg, phone = network.incoming("1001")
        leg = GoneAfterEnd(memory_leg)
        ctx = FlowContext(
            index=0,
            worker=None,  # type: ignore[arg-type]
            calls=None,  # type: ignore[arg-type]
            services=reports,  # type: ignore[arg-type]
            policy=None,
            agent=AgentSettings(backend="url", url=fake.url, greeting=""),
            api=ApiSettings(),
            realtime=RealtimeSettings(),
            recordings=RecordingsSettings(enabled=True, directory=tmp_path),
        )
        recording = await start_recording(ctx, leg, "in-parts")  # type: ignore[arg-type]
        task = asyncio.create_task(agent(ctx, leg, "in-parts", recording))  # type: ignore[arg-type]
        async with asyncio.timeout(10):
            await phone.connected.wait()
        phone.play(tone(440, RATE, 0.5))
        await asyncio.sleep(0.6)
        with capture_logs() as logs:
            phone.hang_up()
            async with asyncio.timeout(15):
                await task
        await ctx.recorder.stop()

    done = [body for kind, body in reports.sent if kind == "inbound_done"]
    assert len(done) == 1, reports.sent
    assert done[0]["cause"] == "caller hung up", done[0]
    assert done[0]["black_box"] is not None
    assert done[0]["recording"] is not None
    assert done[0]["recording"]["complete"], done[0]["recording"]
    assert done[0]["connect_seconds"] == 0.0  # the end could not be read again
    failed = [(e["part"], e["error"]) for e in logs if e["event"] == "call.outcome_failed"]
    assert failed == [("ended", "LegError('call gone')")], failed


class FailsToAnswer:
    """A call leg whose answer fails with an error nobody expects; the rest is the memory
    leg."""

    def __init__(self, leg: CallLeg) -> None:
        self._leg = leg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._leg, name)

    async def answer(self) -> None:
        raise RuntimeError("boom")


async def test_an_agent_that_fails_still_ends_its_record(tmp_path: Path) -> None:
    """An unexpected error inside the agent's run still sends ``inbound_done`` (cause
    ``error: ...``), so the record ends instead of staying in progress; the error then
    reaches the flow, which ends the call."""
    reports = Reports()
    async with FakeRealtime("ga") as fake, MediaClock(speed=1.0) as clock:
        network = MemoryNetwork(clock, rate=RATE)
        memory_leg, _phone = network.incoming("1001")
        ctx = FlowContext(
            index=0,
            worker=None,  # type: ignore[arg-type]
            calls=None,  # type: ignore[arg-type]
            services=reports,  # type: ignore[arg-type]
            policy=None,
            agent=AgentSettings(backend="url", url=fake.url, greeting=""),
            api=ApiSettings(),
            realtime=RealtimeSettings(),
            recordings=RecordingsSettings(enabled=False, directory=tmp_path),
        )
        leg = FailsToAnswer(memory_leg)
        with pytest.raises(RuntimeError, match="boom"):
            async with asyncio.timeout(15):
                await agent(ctx, leg, "in-fails")  # type: ignore[arg-type]
        await ctx.recorder.stop()

    done = [body for kind, body in reports.sent if kind == "inbound_done"]
    assert [body["cause"] for body in done] == ["error: RuntimeError('boom')"], reports.sent
