"""The browser call leg against a real aiortc peer on 127.0.0.1: media, signalling, stats."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiortc import RTCRtpSender

from daemon.calls.blackbox_meter import line
from daemon.legs.leg import Answered, CallInfo, Ended, LegError
from daemon.legs.media import LegMedia
from daemon.legs.webrtc import BadOffer, WebRtcLeg, use_ice_addresses
from tests.audio import tone, tone_level_db
from tests.peers.webrtc_client import WebRtcClient

RATE = 8000
WITHIN = 10.0  # seconds for anything a connected pair does


@pytest.fixture(autouse=True)
def loopback_only() -> AsyncIterator[None]:
    use_ice_addresses(["127.0.0.1"])
    yield
    use_ice_addresses([])


def _info(n: int = 1) -> CallInfo:
    return CallInfo(
        f"web-{n}", True, f"webrtc:{n}", "web:local", headers={"user-agent": "test"}, kind="web"
    )


async def _connected(client: WebRtcClient, connect_timeout: float = WITHIN) -> WebRtcLeg:
    leg = await WebRtcLeg.accept(await client.offer(), _info(), RATE, connect_timeout)
    await client.accept(leg.answer_sdp)
    async with asyncio.timeout(WITHIN):
        assert isinstance(await leg.receive(), Answered)
    return leg


async def _uplink(media: LegMedia, count: int) -> list[bytes]:
    frames: list[bytes] = []
    async with asyncio.timeout(WITHIN):
        async for frame in media.frames():
            frames.append(frame)
            if len(frames) == count:
                break
    return frames


def _others(pcm: np.ndarray, freq: float, rate: int) -> float:
    """The loudest of a few other tones in ``pcm``, in dB."""
    return max(tone_level_db(pcm, f, rate) for f in (250.0, 700.0, 1500.0, 2500.0) if f != freq)


async def test_a_peer_and_the_leg_exchange_audio_at_the_leg_rate() -> None:
    """The peer's 440 Hz reaches the flow as 320-byte 8 kHz frames, the flow's 1000 Hz reaches
    the peer, ``Answered`` comes once connected, and every ICE candidate is on 127.0.0.1."""
    client = WebRtcClient(freq=440.0)
    leg = await _connected(client)
    try:
        assert client.candidates() == (["127.0.0.1"], ["127.0.0.1"])
        media = await leg.media()
        frames = await _uplink(media, 75)
        assert {len(f) for f in frames} == {320}
        heard = np.frombuffer(b"".join(frames[25:]), dtype=np.int16)  # past Opus's start-up
        at_440, other = tone_level_db(heard, 440.0, RATE), _others(heard, 440.0, RATE)
        print(f"uplink: 440 Hz {at_440:.1f} dB, loudest other {other:.1f} dB")
        assert at_440 - other > 30, f"440 Hz {at_440:.1f} dB vs {other:.1f} dB"

        client.heard.clear()
        media.playout.push("reply", tone(1000.0, RATE, 1.0))
        async with asyncio.timeout(WITHIN):
            while media.playout.depth_samples:
                await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)  # the last frames through the peer's jitter buffer
        played = client.heard_pcm()
        at_1k, other = tone_level_db(played, 1000.0, 48000), _others(played, 1000.0, 48000)
        print(f"downlink: 1000 Hz {at_1k:.1f} dB, loudest other {other:.1f} dB")
        assert at_1k - other > 30, f"1000 Hz {at_1k:.1f} dB vs {other:.1f} dB"
    finally:
        await leg.hangup()
        await client.close()
        await leg.wait_closed()


async def test_closing_the_peer_ends_the_leg_once_and_hangup_is_idempotent() -> None:
    """The peer's close ends the leg with one ``Ended(200)`` that ``receive`` repeats; two
    hang-ups after it are no-ops and no task of the leg is left."""
    client = WebRtcClient()
    leg = await _connected(client)
    await client.close()
    async with asyncio.timeout(WITHIN):
        ended = await leg.receive()
    assert isinstance(ended, Ended)
    assert (ended.code, ended.answered, ended.local_cause) == (200, True, "")
    assert await leg.receive() is ended
    await leg.hangup()
    await leg.hangup()
    await leg.wait_closed()
    with pytest.raises(LegError):
        await leg.media()
    async with asyncio.timeout(WITHIN):
        while left := [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
            await asyncio.sleep(0.05)
    assert not left


async def test_a_peer_that_never_connects_ends_with_408() -> None:
    """An offer answered but never completed by the peer ends the leg with 408 after the
    connect timeout."""
    client = WebRtcClient()
    leg = await WebRtcLeg.accept(await client.offer(), _info(), RATE, connect_timeout=1.0)
    try:
        async with asyncio.timeout(WITHIN):
            ended = await leg.receive()
        assert isinstance(ended, Ended)
        assert (ended.code, ended.reason, ended.answered) == (408, "browser never connected", False)
    finally:
        await client.close()
        await leg.wait_closed()


async def test_transfer_and_dtmf_raise_and_the_stats_say_opus() -> None:
    """DTMF and transfer raise ``LegError``; a hang-up tells the page on its channel and ends
    with Opus stats (packets received) whose black box claims no G.711 MOS."""
    client = WebRtcClient()
    leg = await _connected(client)
    try:
        with pytest.raises(LegError, match="browser"):
            await leg.send_dtmf("1")
        with pytest.raises(LegError, match="browser"):
            await leg.transfer("1001")
        await _uplink(await leg.media(), 50)
        await leg.hangup()
        async with asyncio.timeout(WITHIN):
            ended = await leg.receive()
            await client.hangup_received.wait()
        assert isinstance(ended, Ended)
        assert (ended.code, ended.local_cause, ended.answered) == (200, "hangup", True)
        stats = ended.stats
        assert stats is not None
        print(f"rx_packets {stats.rx_packets}, tx_packets {stats.tx_packets}")
        assert stats.codec == "opus"
        assert stats.rx_packets > 40, f"{stats.rx_packets} packets received"
        assert stats.uplink_frames >= 50
        box = line(stats)
        assert box["codec"] == "opus"
        assert box["mos"] is None
    finally:
        await client.close()
        await leg.wait_closed()


async def test_an_offer_without_opus_or_not_sdp_is_refused_with_the_reason() -> None:
    """An offer with no audio, without ICE credentials, or whose audio has no Opus raises
    ``BadOffer`` naming why."""
    with pytest.raises(BadOffer, match="no audio"):
        await WebRtcLeg.accept("hello", _info(), RATE)
    client = WebRtcClient()
    pcmu = [c for c in RTCRtpSender.getCapabilities("audio").codecs if c.mimeType == "audio/PCMU"]
    client.pc.getTransceivers()[0].setCodecPreferences(pcmu)
    try:
        offer = await client.offer()
        with pytest.raises(BadOffer, match="cannot answer the offer: ICE username"):
            await WebRtcLeg.accept(offer.replace("a=ice-ufrag", "a=x"), _info(), RATE)
        with pytest.raises(BadOffer, match="no Opus"):
            await WebRtcLeg.accept(offer, _info(), RATE)
    finally:
        await client.close()
