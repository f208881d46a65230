"""The in-memory phone network moves audio and signals calls as a SIP call would."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from daemon.legs.leg import Answered, CallLeg, Ended, LegError, LegEvent, Ringing
from daemon.legs.memory import MediaClock, MemoryNetwork, PhoneEvent

RATE = 8000
FRAME = RATE // 50


async def _receive(leg: CallLeg, within: float = 5.0) -> LegEvent:
    async with asyncio.timeout(within):
        return await leg.receive()


async def test_audio_crosses_in_order_one_frame_per_tick() -> None:
    """Each tick moves exactly one frame each way: the phone's frames reach the daemon's
    uplink in order, 20 ms apart on the clock, and the daemon's playout reaches the phone."""
    async with MediaClock(speed=None) as clock:
        network = MemoryNetwork(clock, rate=RATE)
        phone = network.phone("2001")
        leg = await network.dial("2001", ring_timeout=5)
        assert await _receive(leg) == Ringing(180)
        assert await _receive(leg) == Answered()
        media = await leg.media()
        frames = 10
        phone.play(np.arange(frames * FRAME, dtype=np.int16))
        ours = -np.arange(1, frames * FRAME + 1, dtype=np.int16)  # no zero: found by its start
        media.playout.push("ours", ours)
        media.playout.end_item("ours")
        got: list[tuple[float, bytes]] = []
        async with asyncio.timeout(5):
            while len(got) < frames:
                if media.uplink:
                    got.append(media.uplink.popleft())
                else:
                    await clock.sleep(0.02)
        received = np.frombuffer(b"".join(f for _, f in got), dtype="<i2")
        assert np.array_equal(received, np.arange(frames * FRAME)), "phone audio out of order"
        stamps = np.diff([t for t, _ in got])
        assert np.allclose(stamps, 0.02), f"frames not one per tick: {stamps}"
        assert await media.until_played("ours", len(ours), within=1.0)
        heard = phone.heard()
        start = int(np.flatnonzero(heard)[0])
        assert np.array_equal(heard[start : start + len(ours)], ours)


async def test_a_hang_up_ends_both_sides() -> None:
    """The daemon's hang-up ends the phone's call and gives the leg Ended (local cause
    "hangup"); the phone's hang-up gives the leg Ended; media closes on both ends."""
    async with MediaClock(speed=None) as clock:
        network = MemoryNetwork(clock)
        phone = network.phone("2001")
        leg = await network.dial("2001", ring_timeout=5)
        await _receive(leg)
        await _receive(leg)
        media = await leg.media()
        await leg.hangup()
        ended = await _receive(leg)
        assert isinstance(ended, Ended), ended
        assert (ended.code, ended.local_cause, ended.answered) == (200, "hangup", True)
        assert phone.done.is_set()
        assert phone.ended == Ended(200, "Normal call clearing", answered=True)
        assert PhoneEvent("hung_up") in phone.events
        assert media.closed
        assert phone.media.closed
        await leg.hangup()  # idempotent once ended
        assert await _receive(leg) == ended  # Ended stays the last event

        inbound, caller = network.incoming(caller="1001")
        await inbound.answer()
        assert await _receive(inbound) == Answered()
        caller.hang_up()
        ended = await _receive(inbound)
        assert ended == Ended(200, "Normal call clearing", answered=True)
        assert caller.done.is_set()
        with pytest.raises(LegError):  # no media for an ended call
            await inbound.media()


async def test_busy_decline_and_ring_timeout() -> None:
    """A busy phone ends the dial with 486, a declining one with 603, and one that never
    answers rings until the ring timeout (487, local cause "ring_timeout") on the clock."""
    async with MediaClock(speed=None) as clock:
        network = MemoryNetwork(clock)
        network.phone("busy", on_incoming="busy")
        network.phone("no", on_incoming="decline")
        network.phone("away", on_incoming="ignore")
        busy = await network.dial("busy", ring_timeout=5)
        assert await _receive(busy) == Ringing(180)
        assert await _receive(busy) == Ended(486, "Busy Here")
        declined = await network.dial("no", ring_timeout=5)
        assert await _receive(declined) == Ringing(180)
        assert await _receive(declined) == Ended(603, "Decline")
        started = clock.now()
        away = await network.dial("away", ring_timeout=3)
        assert await _receive(away) == Ringing(180)
        ended = await _receive(away)
        assert isinstance(ended, Ended), ended
        assert (ended.code, ended.local_cause) == (487, "ring_timeout")
        waited = clock.now() - started
        assert 3.0 <= waited <= 3.1, f"ring timeout after {waited:.2f} s on the clock"


@pytest.mark.realtime
async def test_virtual_clock_runs_ten_seconds_of_audio_in_under_a_second() -> None:
    """On the virtual clock, 10 s of audio is played out to its last sample in < 1 s."""
    async with MediaClock(speed=None) as clock:
        network = MemoryNetwork(clock)
        phone = network.phone("2001")
        leg = await network.dial("2001", ring_timeout=5)
        await _receive(leg)
        await _receive(leg)
        media = await leg.media()
        pcm = np.full(10 * RATE, 1000, dtype=np.int16)
        began = time.monotonic()
        media.playout.push("long", pcm)
        media.playout.end_item("long")
        assert await media.until_played("long", len(pcm), within=12.0)
        wall = time.monotonic() - began
        heard = int(np.count_nonzero(phone.heard() == 1000))
        print(f"10 s of audio played in {wall:.3f} s wall, {clock.now():.2f} s on the clock")
        assert heard == len(pcm)
        assert wall < 1.0, f"10 s of audio took {wall:.3f} s wall"
