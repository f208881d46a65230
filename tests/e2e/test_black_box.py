"""A call's black box as the daemon records it: a clean and a lossy line, side by side.

The daemon answers two calls at once with a fake model; one caller's RTP reaches it through
a relay that drops every 20th packet (tests/peers/udp_relay.py). ``pytest -s`` prints the
figures of both records as the README's table shows them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from media.wav import write_wav
from sip.rtp_guard import parse_address
from tests.audio import tone
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.realtime_server import FakeRealtime, FakeSession
from tests.peers.udp_relay import UdpRelay
from tests.support import DaemonProcess, registered

pytestmark = pytest.mark.e2e

SECONDS = 4.0
RELAY_OFFSET = 50  # the lossy phone's SDP offers its RTP port + 50: the relay's
ROWS = [
    ("rtp.rx.packets", ("rtp", "rx", "packets")),
    ("rtp.rx.lost", ("rtp", "rx", "lost")),
    ("rtp.rx.loss_pct", ("rtp", "rx", "loss_pct")),
    ("rtp.rx.jitter_ms_mean", ("rtp", "rx", "jitter_ms_mean")),
    ("rtp.rx.jitter_ms_max", ("rtp", "rx", "jitter_ms_max")),
    ("rtp.tx.packets", ("rtp", "tx", "packets")),
    ("rtp.tx.reports", ("rtp", "tx", "reports")),
    ("rtp.jitter_buffer.avg_delay_ms", ("rtp", "jitter_buffer", "avg_delay_ms")),
    ("rtp.rtt_ms", ("rtp", "rtt_ms")),
    ("mos.one_way_ms", ("mos", "one_way_ms")),
    ("mos.r_rx", ("mos", "r_rx")),
    ("mos.rx", ("mos", "rx")),
    ("mos.tx", ("mos", "tx")),
    ("connect_seconds", ("connect_seconds",)),
]


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Kamailio]:
    async with running_kamailio(tmp_path / "k") as kamailio:
        yield kamailio


def _at(box: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = box
    for key in path:
        value = value[key] if value is not None else None
    return value


async def _records(api: str, callers: set[str]) -> dict[str, dict[str, Any]]:
    """The finished inbound record of each caller, as ``GET /call/{id}`` shows it."""
    async with httpx.AsyncClient() as client, asyncio.timeout(15):
        while True:
            listed = (await client.get(f"{api}/calls?direction=inbound")).json()["calls"]
            done = {c["caller"]: c["call_id"] for c in listed if c["caller"] in callers}
            if len(done) == len(callers):
                views = {
                    caller: (await client.get(f"{api}/call/{call_id}")).json()
                    for caller, call_id in done.items()
                }
                if all(v.get("black_box") for v in views.values()):
                    return views
            await asyncio.sleep(0.2)


async def test_the_record_shows_a_lossy_path(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """Two calls at once for 4 s, one through a relay dropping every 20th RTP packet on its
    way to the daemon: that call's record shows 4-6 % loss received and a MOS at least 0.3
    lower than the clean call's, whose record shows no loss."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await session.respond(tone(1000, session.output_rate, SECONDS + 2, amplitude=8000))

    env = daemon_env | {
        "SIPAI_SIP__REGISTRAR": pbx.uri,
        "SIPAI_SIP__PASSWORD": password("1000"),
        "SIPAI_AGENT__BACKEND": "url",
        "SIPAI_AGENT__GREETING": "",
    }
    wav = tmp_path / "caller.wav"
    write_wav(wav, 8000, tone(440, 8000, SECONDS + 2, amplitude=8000))
    phones: list[TestPhone] = []
    relay: UdpRelay | None = None
    async with FakeRealtime("ga", script) as fake:
        env["SIPAI_AGENT__URL"] = fake.url
        async with DaemonProcess(env, wait=registered) as daemon:
            try:
                calls = []
                for user, offset in (("1001", 0), ("1002", RELAY_OFFSET)):
                    phone = await TestPhone.start(f"caller-{user}", sdp_port_offset=offset)
                    phones.append(phone)
                    await phone.register(pbx, user)
                    dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
                    call = int(dialled["call"])
                    await phone.expect("media", call=call, status="active", timeout=15)
                    await phone.command("play", call=call, wav=str(wav))
                    calls.append(call)
                info = await phones[1].command("media_info", call=calls[1])
                real = parse_address(info["local_rtp"])
                assert real is not None, info
                relay = await UdpRelay.start(real[0], real[1] + RELAY_OFFSET, real[1])
                await asyncio.sleep(SECONDS)
                for phone, call in zip(phones, calls, strict=True):
                    await phone.command("hangup", call=call)
                views = await _records(daemon.base_url, {"1001", "1002"})
            finally:
                if relay is not None:
                    relay.close()
                for phone in phones:
                    with contextlib.suppress(Exception):
                        await phone.close()
    clean, lossy = views["1001"]["black_box"], views["1002"]["black_box"]
    print("\n| | clean | lossy |\n|---|---|---|")
    for name, path in ROWS:
        print(f"| `{name}` | {_at(clean, path)} | {_at(lossy, path)} |")
    assert relay is not None
    assert relay.rtp.dropped > 0, relay.rtp
    assert 4.0 <= lossy["rtp"]["rx"]["loss_pct"] <= 6.0, lossy["rtp"]
    assert clean["rtp"]["rx"]["loss_pct"] == 0.0, clean["rtp"]
    assert lossy["mos"]["rx"] <= clean["mos"]["rx"] - 0.3, (clean["mos"], lossy["mos"])
    assert views["1002"]["direction"] == "inbound", views["1002"]
    assert fake.violations == []
