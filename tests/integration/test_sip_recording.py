"""A recorded SIP call: a real worker process, Kamailio and a pjsua2 test phone on loopback."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from config import Settings
from config.schema import RecordingsSettings
from daemon.workers import WorkerPool
from media.wav import read_wav_channels, write_wav
from sip.events import CallEnded, SipEvent
from tests.audio import tone, tone_level_db
from tests.integration.conftest import worker_settings
from tests.peers.kamailio import Kamailio
from tests.peers.phone import TestPhone

Phones = Callable[..., Awaitable[TestPhone]]
RATE = 8000
POLICY = "tests.integration.tone_policy:play_1000_hz"  # plays 1000 Hz


async def _finished(directory: Path, within: float = 10.0) -> Path:
    """The one recording under ``directory`` once its header has been patched."""
    async with asyncio.timeout(within):
        while True:
            found = sorted(directory.glob("*/in-*.wav"))
            if found and found[0].stat().st_size > 44:
                riff = struct.unpack_from("<4xI", found[0].read_bytes()[:8])[0]
                if riff != 0xFFFFFFFF:
                    return found[0]
            await asyncio.sleep(0.05)


async def test_a_sip_call_records_what_each_side_sent(
    kamailio: Kamailio, phones: Phones, tmp_path: Path
) -> None:
    """With ``[recordings] enabled`` an inbound call is written as a 2-channel WAV: the
    phone's 440 Hz on channel 1 at least 20 dB above the daemon's 1000 Hz, the reverse on
    channel 2, and as long as the call was connected (within 0.2 s)."""
    directory = tmp_path / "recordings"
    settings = Settings(
        sip=worker_settings(kamailio, workers=1),
        recordings=RecordingsSettings(enabled=True, directory=directory),
    )
    events: list[SipEvent] = []
    pool = WorkerPool(settings, POLICY, lambda _, e: events.append(e))
    await pool.start()
    try:
        async with asyncio.timeout(20):
            while not all(w.registered for w in pool.workers):
                await asyncio.sleep(0.05)
        phone = await phones("caller")
        await phone.register(kamailio, "1001")
        write_wav(tmp_path / "440.wav", RATE, tone(440, RATE, 2.0))
        dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
        await phone.expect("media", call=dialled["call"], status="active")
        await phone.command("play", call=dialled["call"], wav=str(tmp_path / "440.wav"))
        await phone.expect("played", timeout=5)
        await phone.command("hangup", call=dialled["call"])
        path = await _finished(directory)
    finally:
        await pool.stop()

    [ended] = [e for e in events if isinstance(e, CallEnded)]
    connected = ended.connect_seconds  # pjsua's, from the ACK to the BYE
    rate, samples = read_wav_channels(path)
    assert rate == RATE
    duration = len(samples) / RATE
    assert abs(duration - connected) <= 0.2, f"{duration:.3f} s recorded, {connected:.3f} s up"
    both = samples[int(0.3 * RATE) : int(1.8 * RATE)]  # both tones sound here
    caller = {f: tone_level_db(both[:, 0], f, RATE) for f in (440, 1000)}
    played = {f: tone_level_db(both[:, 1], f, RATE) for f in (440, 1000)}
    assert caller[440] > caller[1000] + 20, caller
    assert played[1000] > played[440] + 20, played
    print(f"recorded {duration:.3f} s of a call up {connected:.3f} s; {caller=} {played=}")
