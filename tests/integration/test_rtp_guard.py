"""Stray and hostile RTP during a real call: it neither redirects the call nor reaches the agent."""

from __future__ import annotations

import asyncio
import contextlib
import random
import select
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from media.g711 import ulaw_encode
from media.wav import read_wav, write_wav
from sip.audio_port import CallAudio
from sip.events import CallAnswered, CallEnded, IncomingCall, RegistrationChanged
from sip.rtp_guard import DROP_ALL, Allow, MediaGuard, attach, parse_address
from tests.audio import tone, tone_level_db
from tests.integration.conftest import Recorded, worker_settings
from tests.peers.kamailio import Kamailio
from tests.peers.phone import TestPhone

MakeWorker = Callable[..., Awaitable[Recorded]]
Phones = Callable[..., Awaitable[TestPhone]]
FULL = 20 * np.log10(10000)  # level of the test tones
PHONE_HZ, AGENT_HZ, INJECTED_HZ = 600, 1000, 1700  # no harmonics of each other
RATE = 8000


class Uplink:
    """Collects the caller audio the agent receives, with arrival times, in a task."""

    def __init__(self, audio: CallAudio) -> None:
        self.frames: list[tuple[float, bytes]] = []
        self._task = asyncio.create_task(self._collect(audio))

    async def _collect(self, audio: CallAudio) -> None:
        async for stamped in audio.stamped_frames():
            self.frames.append(stamped)

    def between(self, start: float, end: float) -> NDArray[np.int16]:
        data = b"".join(frame for at, frame in self.frames if start <= at <= end)
        return np.frombuffer(data, dtype="<i2")

    def stop(self) -> None:
        self._task.cancel()


def _rtp(seq: int, ssrc: int, payload: bytes, pt: int = 0) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq & 0xFFFF, (seq * 160) & 0xFFFFFFFF, ssrc) + payload


def _tone_packets(count: int) -> list[bytes]:
    """PCMU RTP of the injected tone, 20 ms a packet."""
    pcm = tone(INJECTED_HZ, RATE, count * 0.02)
    coded = ulaw_encode(pcm).tobytes()
    return [_rtp(n, 0x5EED, coded[160 * n : 160 * (n + 1)]) for n in range(count)]


def _drain(sock: socket.socket) -> int:
    """Datagrams waiting on a non-blocking socket, read and counted (bounded)."""
    received = 0
    for _ in range(100_000):
        try:
            sock.recv(2048)
        except BlockingIOError:
            break
        received += 1
    return received


def _settled(sock: socket.socket, expected: int, quiet: float = 0.05) -> int:
    """Datagrams read from ``sock`` once ``expected`` of them have arrived (each waited for
    by readiness, 2 s at most) and no more came within ``quiet`` seconds after."""
    received = 0
    while True:
        wait = 2.0 if received < expected else quiet
        readable, _, _ = select.select([sock], [], [], wait)
        if not readable:
            return received
        received += _drain(sock)


async def _flood(target: tuple[str, int], packets: list[bytes], per_10ms: int) -> socket.socket:
    """Send ``packets`` from a fresh local port at ``per_10ms`` every 10 ms; return the socket."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    for start in range(0, len(packets), per_10ms):
        for packet in packets[start : start + per_10ms]:
            with contextlib.suppress(OSError):  # ICMP from a closed port, on the next send
                sock.sendto(packet, target)
        await asyncio.sleep(0.01)
    return sock


async def _call_in(
    worker: Recorded, phone: TestPhone, kamailio: Kamailio, tmp_path: Path
) -> tuple[str, int, CallAudio]:
    """The phone calls the agent; both play their tone for the whole test."""
    await worker.expect(RegistrationChanged, registered=True)
    await phone.register(kamailio, "1001")
    dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
    incoming = await worker.expect(IncomingCall)
    await worker.sip.answer(incoming.call)
    await worker.expect(CallAnswered, call=incoming.call)
    await phone.expect("media", call=dialled["call"], status="active")
    audio = await worker.sip.audio(incoming.call)
    audio.playout.push("agent", tone(AGENT_HZ, RATE, 12.0))
    audio.playout.end_item("agent")
    wav = tmp_path / "phone.wav"
    write_wav(wav, RATE, tone(PHONE_HZ, RATE, 12.0))
    await phone.command("play", call=dialled["call"], wav=str(wav))
    await phone.command("tap", call=dialled["call"])
    return incoming.call, dialled["call"], audio


@dataclass
class Injection:
    to_injector: int  # RTP packets the worker sent to the injecting socket
    to_phone: int  # RTP packets the phone received while the injection went on
    expected_to_phone: int  # what 50 packets a second over that time make
    injected_db: float  # level of the injected tone in what the agent heard, dB
    phone_db: float  # level of the phone's tone in what the agent heard, dB
    agent_db: float  # level of the agent's tone in what the phone heard, dB

    def __str__(self) -> str:
        return (
            f"packets to the injector {self.to_injector}, packets to the real peer "
            f"{self.to_phone} of {self.expected_to_phone}, injected tone in the agent's audio "
            f"{self.injected_db:.1f} dB (phone's tone {self.phone_db:.1f} dB, full scale "
            f"{FULL:.1f} dB), agent's tone at the phone {self.agent_db:.1f} dB"
        )


async def _inject(
    phone: TestPhone, phone_call: int, uplink: Uplink, tmp_path: Path, packets: int = 1500
) -> Injection:
    """Flood the call's RTP port from another local port (1,500 packets/s) and measure."""
    info = await phone.command("media_info", call=phone_call)
    target = parse_address(info["remote_rtp"])
    assert target is not None, info
    started = time.monotonic()
    injector = await _flood(target, _tone_packets(packets), per_10ms=15)
    await asyncio.sleep(0.5)  # what the injection set off goes on after it
    ended = time.monotonic()
    after = await phone.command("media_info", call=phone_call)
    heard = await phone.command("tap_stop", call=phone_call, wav=str(tmp_path / "heard.wav"))
    to_injector = _drain(injector)
    injector.close()
    samples = read_wav(tmp_path / "heard.wav").samples
    at_phone = np.concatenate(
        [samples[160 * i : 160 * (i + 1)] for i, t in enumerate(heard["times"]) if t >= started]
        or [np.zeros(160, dtype=np.int16)]
    )
    agent_heard = uplink.between(started + 0.3, ended)  # after the jitter buffer's delay
    return Injection(
        to_injector=to_injector,
        to_phone=after["rx_packets"] - info["rx_packets"],
        expected_to_phone=round(50 * (ended - started)),
        injected_db=tone_level_db(agent_heard, INJECTED_HZ, RATE),
        phone_db=tone_level_db(agent_heard, PHONE_HZ, RATE),
        agent_db=tone_level_db(at_phone, AGENT_HZ, RATE),
    )


def _assert_not_hijacked(result: Injection) -> None:
    assert result.to_injector == 0, f"the call's media went to the injector: {result}"
    assert result.to_phone >= 0.8 * result.expected_to_phone, f"the phone lost audio: {result}"
    assert result.agent_db > FULL - 6, f"the phone no longer hears the agent: {result}"
    assert result.injected_db < FULL - 40, f"the injected audio reached the agent: {result}"
    assert result.phone_db > FULL - 6, f"the agent no longer hears the phone: {result}"


async def test_rtp_from_another_port_neither_redirects_nor_enters_the_call(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """RTP flooded mid-call from another local port: the phone keeps hearing the agent, none
    of it goes to the injector, and the agent hears only the phone."""
    worker = await make_worker(worker_settings(kamailio))
    phone = await phones("caller")
    call, phone_call, audio = await _call_in(worker, phone, kamailio, tmp_path)
    uplink = Uplink(audio)
    await asyncio.sleep(1.0)  # the call is well under way
    result = await _inject(phone, phone_call, uplink, tmp_path)
    uplink.stop()
    print(f"\nrtp injection, sip.rtp_latching off: {result}")
    _assert_not_hijacked(result)
    await worker.sip.hangup(call)
    await worker.expect(CallEnded, call=call)


async def test_rtp_flooded_while_the_call_is_set_up_never_gets_in(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """A flood at the RTP port a call is about to use, from before the INVITE until the call
    runs, takes none of its media: the filter is in place before pjmedia's stream starts."""
    settings = worker_settings(kamailio)
    worker = await make_worker(settings)
    phone = await phones("caller")
    target = ("127.0.0.1", settings.rtp_port_min)  # the first call's RTP port
    packets = _tone_packets(1000)
    stop = asyncio.Event()

    async def flood() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        for tick in range(2000):  # at most 20 s
            if stop.is_set():
                break
            for packet in packets[(15 * tick) % 990 :][:15]:
                with contextlib.suppress(OSError):  # nothing bound there yet: ICMP
                    sock.sendto(packet, target)
            await asyncio.sleep(0.01)
        return sock

    flooding = asyncio.create_task(flood())
    await asyncio.sleep(0.2)
    call, phone_call, audio = await _call_in(worker, phone, kamailio, tmp_path)
    info = await phone.command("media_info", call=phone_call)
    assert parse_address(info["remote_rtp"]) == target, info
    uplink = Uplink(audio)
    started = time.monotonic()
    await asyncio.sleep(1.5)
    stop.set()
    injector = await flooding
    after = await phone.command("media_info", call=phone_call)
    to_injector = _drain(injector)
    injector.close()
    heard = uplink.between(started + 0.3, time.monotonic())
    uplink.stop()
    figures = {
        "to_injector": to_injector,
        "to_phone": after["rx_packets"] - info["rx_packets"],
        "injected_db": round(tone_level_db(heard, INJECTED_HZ, RATE), 1),
        "phone_db": round(tone_level_db(heard, PHONE_HZ, RATE), 1),
    }
    print(f"\nrtp flood during call set-up: {figures}")
    assert to_injector == 0, figures
    assert figures["to_phone"] >= 60, figures
    assert figures["injected_db"] < FULL - 40, figures
    assert figures["phone_db"] > FULL - 6, figures
    await worker.sip.hangup(call)
    await worker.expect(CallEnded, call=call)


async def test_rtp_injected_into_an_outbound_call_is_dropped(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """The same flood into a call the worker placed: the callee keeps hearing the agent and
    the agent hears only the callee."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    phone = await phones("callee")
    await phone.register(kamailio, "1002")
    call = await worker.sip.make_call("1002", ring_timeout=10)
    await worker.expect(CallAnswered, call=call)
    incoming = await phone.expect("incoming")
    await phone.expect("media", call=incoming["call"], status="active")
    audio = await worker.sip.audio(call)
    audio.playout.push("agent", tone(AGENT_HZ, RATE, 12.0))
    audio.playout.end_item("agent")
    write_wav(tmp_path / "phone.wav", RATE, tone(PHONE_HZ, RATE, 12.0))
    await phone.command("play", call=incoming["call"], wav=str(tmp_path / "phone.wav"))
    await phone.command("tap", call=incoming["call"])
    uplink = Uplink(audio)
    await asyncio.sleep(1.0)
    result = await _inject(phone, incoming["call"], uplink, tmp_path)
    uplink.stop()
    print(f"\nrtp injection into an outbound call: {result}")
    _assert_not_hijacked(result)
    await worker.sip.hangup(call)
    await worker.expect(CallEnded, call=call)


async def test_latching_follows_a_peer_behind_nat_then_locks(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """With sip.rtp_latching a phone whose RTP comes from another port than it signals is
    heard and hears the agent; an injection from its IP once the call is under way is not."""
    worker = await make_worker(worker_settings(kamailio, rtp_latching=True))
    phone = await phones("behind-nat", sdp_port_offset=60)
    call, phone_call, audio = await _call_in(worker, phone, kamailio, tmp_path)
    uplink = Uplink(audio)
    await asyncio.sleep(1.0)
    result = await _inject(phone, phone_call, uplink, tmp_path)
    uplink.stop()
    print(f"\nrtp injection, sip.rtp_latching on, phone behind NAT: {result}")
    _assert_not_hijacked(result)
    await worker.sip.hangup(call)
    await worker.expect(CallEnded, call=call)


async def test_without_latching_a_peer_sending_from_elsewhere_is_not_heard(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """With sip.rtp_latching off (the default) RTP from another port than the SDP's is
    dropped: the agent hears nothing of such a phone and sends it nothing."""
    worker = await make_worker(worker_settings(kamailio))
    phone = await phones("behind-nat", sdp_port_offset=60)
    call, phone_call, audio = await _call_in(worker, phone, kamailio, tmp_path)
    uplink = Uplink(audio)
    before = await phone.command("media_info", call=phone_call)
    started = time.monotonic()
    await asyncio.sleep(1.5)
    after = await phone.command("media_info", call=phone_call)
    heard = uplink.between(started, time.monotonic())
    uplink.stop()
    level = tone_level_db(heard, PHONE_HZ, RATE)
    received = after["rx_packets"] - before["rx_packets"]
    assert level < FULL - 40, f"phone's tone at the agent: {level:.1f} dB"
    assert received == 0, f"{received} packets reached the phone's real port"
    await worker.sip.hangup(call)
    await worker.expect(CallEnded, call=call)


def _filtered_socket(family: socket.AddressFamily, host: str, allow: Allow) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    attach(sock, allow)
    return sock


def test_filter_admits_only_the_allowed_source() -> None:
    """The socket filter lets through exactly the allowed IP and port (IPv4 and IPv6), the
    allowed IP on any port when no port is given, and nothing when no IP is given."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        senders = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(2)]
        for sender in senders:
            sender.bind((host, 0))
        good = senders[0].getsockname()[1]
        cases = {
            "exact": (Allow(host, good), 1),
            "ip_only": (Allow(host), 2),
            "other_ip": (Allow("127.0.0.2" if family == socket.AF_INET else "::2", good), 0),
            "none": (DROP_ALL, 0),
        }
        for name, (allow, expected) in cases.items():
            with _filtered_socket(family, host, allow) as receiver:
                for sender in senders:
                    sender.sendto(b"x", receiver.getsockname())
                assert _settled(receiver, expected) == expected, (host, name)
        for sender in senders:
            sender.close()


def test_datagrams_queued_before_the_filter_are_dropped_with_it() -> None:
    """What a stranger queued on a call's RTP socket before the guard filtered it is gone
    once the filter is set (the kernel filters arrivals only): only the peer's next packet is
    read."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stranger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        peer.bind(("127.0.0.1", 0))
        stranger.bind(("127.0.0.1", 0))
        for _ in range(50):
            stranger.sendto(b"queued", receiver.getsockname())
        # The stranger's datagrams are queued before the filter goes on.
        assert select.select([receiver], [], [], 2.0)[0], "nothing queued"
        local, remote = receiver.getsockname(), peer.getsockname()
        guard = MediaGuard(latching=False)
        guard.update(f"{local[0]}:{local[1]}", "", f"{remote[0]}:{remote[1]}", "", 0.0)
        peer.sendto(b"peer", local)
        stranger.sendto(b"late", local)
        assert _settled(receiver, 1) == 1
    finally:
        for sock in (receiver, peer, stranger):
            sock.close()


def _mutations(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """Malformed datagrams for an RTP or RTCP port, each labelled with its kind."""
    pcmu = bytes(rng.randrange(256) for _ in range(160))

    def header(first: int, pt: int = 0) -> bytes:
        return struct.pack("!BBHII", first, pt, rng.randrange(65536), rng.getrandbits(32), 7)

    kinds: list[Callable[[], tuple[str, bytes]]] = [
        lambda: ("random", rng.randbytes(rng.randrange(1, 1500))),
        lambda: ("truncated", header(0x80)[: rng.randrange(1, 12)]),
        lambda: ("version", header(rng.choice([0x00, 0x40, 0xC0])) + pcmu),
        # CC = 15 CSRCs announced, few or none present
        lambda: ("csrc", header(0x8F) + rng.randbytes(rng.randrange(0, 60))),
        # X bit with an extension length far beyond the packet
        lambda: (
            "extension",
            header(0x90) + struct.pack("!HH", 0xBEDE, rng.randrange(0x100, 0x10000)) + pcmu[:8],
        ),
        # P bit with a padding count larger than the payload
        lambda: ("padding", header(0xA0) + pcmu[:-1] + bytes([255])),
        lambda: ("payload_type", header(0x80, rng.randrange(1, 128)) + pcmu),
        lambda: ("huge", header(0x80) + rng.randbytes(rng.randrange(1500, 9000))),
    ]
    return [rng.choice(kinds)() for _ in range(count)]


def _rtcp_garbage(rng: random.Random) -> bytes:
    choice = rng.randrange(3)
    if choice == 0:  # SR claiming many report blocks
        return struct.pack("!BBHI", 0x9F, 200, rng.randrange(65536), 7) + rng.randbytes(20)
    if choice == 1:  # SDES with a length beyond the packet
        return struct.pack("!BBH", 0x81, 202, 0xFFFF) + rng.randbytes(rng.randrange(0, 40))
    return rng.randbytes(rng.randrange(1, 400))


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _options(port: int) -> bool:
    """An OPTIONS to the worker's SIP port is answered 200 within 2 s."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        local = sock.getsockname()[1]
        branch = f"z9hG4bK{random.getrandbits(48):x}"
        request = (
            f"OPTIONS sip:1000@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:probe@127.0.0.1>;tag={random.getrandbits(32):x}\r\n"
            f"To: <sip:1000@127.0.0.1:{port}>\r\n"
            f"Call-ID: {random.getrandbits(64):x}@127.0.0.1\r\n"
            "CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        )
        await loop.sock_sendto(sock, request.encode(), ("127.0.0.1", port))
        async with asyncio.timeout(2):
            reply = await loop.sock_recv(sock, 65536)
    return reply.startswith(b"SIP/2.0 200")


async def test_malformed_datagrams_on_the_rtp_range_leave_the_call_intact(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """5,000 malformed datagrams during a call (random bytes, truncated headers, wrong version,
    huge CSRC counts, bad extension lengths; to the whole RTP range, RTCP garbage to the RTCP
    port, a quarter from the phone's own RTP address): no crash, the call keeps its audio
    both ways, OPTIONS is answered, the process's memory and fds are back to their baseline."""
    settings = worker_settings(kamailio)
    worker = await make_worker(settings)
    phone = await phones("caller")
    call, phone_call, audio = await _call_in(worker, phone, kamailio, tmp_path)
    uplink = Uplink(audio)
    await asyncio.sleep(1.0)
    info = await phone.command("media_info", call=phone_call)
    rtp = parse_address(info["remote_rtp"])
    assert rtp is not None
    rng = random.Random(14)
    mutated = _mutations(rng, 5000)
    rtcp_garbage = [_rtcp_garbage(rng) for _ in range(5000)]
    baseline_fds, baseline_rss = len(list(Path("/proc/self/fd").iterdir())), _rss_kib()
    ports = list(range(settings.rtp_port_min, settings.rtp_port_max + 1))
    sent: dict[str, int] = {}
    from_phone: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        for number, (mutation, datagram) in enumerate(mutated):
            kind, packet = mutation, datagram
            if number % 4 == 0:  # a quarter from the peer's own address: past the filter
                from_phone.append(packet.hex())
                kind = f"peer_{kind}"
            else:
                port = rtp[1] + 1 if number % 4 == 1 else rng.choice(ports)
                if number % 4 == 1:
                    kind, packet = "rtcp", rtcp_garbage[number]
                with contextlib.suppress(OSError):  # ICMP from an unused port, on a later send
                    sock.sendto(packet, ("127.0.0.1", port))
            sent[kind] = sent.get(kind, 0) + 1
            if number % 50 == 49:
                await asyncio.sleep(0.005)
            if len(from_phone) == 125:
                await phone.command("send_raw", call=phone_call, packets=from_phone)
                from_phone = []
    await asyncio.sleep(1.0)

    started = time.monotonic()
    before = await phone.command("media_info", call=phone_call)
    await asyncio.sleep(1.0)
    after = await phone.command("media_info", call=phone_call)
    heard_by_agent = uplink.between(started + 0.2, time.monotonic())
    answered = await _options(settings.port)
    heard = await phone.command("tap_stop", call=phone_call, wav=str(tmp_path / "heard.wav"))
    samples = read_wav(tmp_path / "heard.wav").samples
    frames_after = [i for i, t in enumerate(heard["times"]) if t >= started]
    at_phone = samples[160 * frames_after[0] : 160 * (frames_after[-1] + 1)]
    fds, rss = len(list(Path("/proc/self/fd").iterdir())), _rss_kib()
    uplink.stop()
    figures: dict[str, Any] = {
        "sent": sent,
        "phone_rx_packets_in_1s": after["rx_packets"] - before["rx_packets"],
        "phone_tone_at_agent_db": round(tone_level_db(heard_by_agent, PHONE_HZ, RATE), 1),
        "agent_tone_at_phone_db": round(tone_level_db(at_phone, AGENT_HZ, RATE), 1),
        "fds": (baseline_fds, fds),
        "rss_kib": (baseline_rss, rss),
        "options_answered": answered,
    }
    print(f"\nrtp fuzz: {figures}")
    assert answered, figures
    assert figures["phone_rx_packets_in_1s"] >= 40, figures
    assert figures["phone_tone_at_agent_db"] > FULL - 6, figures
    assert figures["agent_tone_at_phone_db"] > FULL - 6, figures
    assert fds <= baseline_fds, figures
    assert rss - baseline_rss < 4 * 1024, figures  # 4 MiB: allocator noise, not a leak
    assert (await worker.sip.diagnostics())["calls"] == 1
    await worker.sip.hangup(call)
    await worker.expect(CallEnded, call=call)
