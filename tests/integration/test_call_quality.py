"""A call's line quality as the black box reports it, over a clean and a lossy RTP path."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from daemon.calls.blackbox_meter import line
from media.wav import write_wav
from sip.events import CallAnswered, CallEnded, IncomingCall, RegistrationChanged
from sip.rtp_guard import parse_address
from tests.audio import tone
from tests.integration.conftest import Recorded, worker_settings
from tests.peers.kamailio import Kamailio
from tests.peers.phone import TestPhone
from tests.peers.udp_relay import UdpRelay

MakeWorker = Callable[..., Awaitable[Recorded]]
Phones = Callable[..., Awaitable[TestPhone]]
RATE = 8000
SECONDS = 4.0
RELAY_OFFSET = 50  # the lossy phone's SDP offers its RTP port + 50: the relay's


async def _call_in(
    worker: Recorded, phone: TestPhone, kamailio: Kamailio, user: str, tmp_path: Path
) -> tuple[str, int]:
    """The phone calls the worker, which answers; each side plays its tone."""
    await phone.register(kamailio, user)
    dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
    incoming = await worker.expect(IncomingCall, from_user=user)
    await worker.sip.answer(incoming.call)
    await worker.expect(CallAnswered, call=incoming.call)
    await phone.expect("media", call=dialled["call"], status="active")
    audio = await worker.sip.audio(incoming.call)
    audio.playout.push("agent", tone(1000, RATE, SECONDS + 2))
    audio.playout.end_item("agent")
    wav = tmp_path / f"{user}.wav"
    write_wav(wav, RATE, tone(440, RATE, SECONDS + 2))
    await phone.command("play", call=dialled["call"], wav=str(wav))
    return incoming.call, dialled["call"]


async def test_a_lossy_path_shows_as_loss_and_a_lower_mos(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """Two calls at once for 4 s, one through a relay that drops every 20th RTP packet on
    the way to the worker: its black box shows 4-6 % loss received and a MOS at least 0.3
    lower than the clean call's, which shows no loss; both show their jitter."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    clean_phone = await phones("clean")
    lossy_phone = await phones("lossy", sdp_port_offset=RELAY_OFFSET)
    clean, _ = await _call_in(worker, clean_phone, kamailio, "1001", tmp_path)
    lossy, lossy_call = await _call_in(worker, lossy_phone, kamailio, "1002", tmp_path)
    info = await lossy_phone.command("media_info", call=lossy_call)
    real = parse_address(info["local_rtp"])
    assert real is not None, info
    relay = await UdpRelay.start(real[0], real[1] + RELAY_OFFSET, real[1], drop_every=20)
    try:
        await asyncio.sleep(SECONDS)
        for call in (clean, lossy):
            await worker.sip.hangup(call)
        ended = {call: await worker.expect(CallEnded, call=call) for call in (clean, lossy)}
    finally:
        relay.close()
    boxes = {}
    for name, call in (("clean", clean), ("lossy", lossy)):
        stats = ended[call].stats
        assert stats is not None, ended[call]
        boxes[name] = line(stats)
    rows = {name: (box["rtp"], box["mos"]) for name, box in boxes.items()}
    print(f"\nrelay RTP {relay.rtp}, RTCP {relay.rtcp}")
    for name, (rtp, mos) in rows.items():
        print(f"{name}: rtp {rtp}\n{name}: mos {mos}")
    (clean_rtp, clean_mos), (lossy_rtp, lossy_mos) = rows["clean"], rows["lossy"]
    assert clean_rtp is not None
    assert lossy_rtp is not None
    assert clean_mos is not None
    assert lossy_mos is not None
    assert relay.rtp.dropped > 0, relay.rtp  # the lossy phone really went through the relay
    assert 4.0 <= lossy_rtp["rx"]["loss_pct"] <= 6.0, lossy_rtp["rx"]
    assert clean_rtp["rx"]["loss_pct"] == 0.0, clean_rtp["rx"]
    assert clean_rtp["rx"]["packets"] > 150, clean_rtp["rx"]
    assert clean_mos["rx"] is not None
    assert lossy_mos["rx"] is not None
    assert lossy_mos["rx"] <= clean_mos["rx"] - 0.3, (clean_mos, lossy_mos)
    for rtp in (clean_rtp, lossy_rtp):
        assert rtp["rx"]["jitter_ms_max"] > 0, rtp["rx"]
        assert rtp["rx"]["jitter_ms_max"] >= rtp["rx"]["jitter_ms_mean"], rtp["rx"]
