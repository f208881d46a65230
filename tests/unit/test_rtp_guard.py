"""Which RTP sources a call admits: the signalled peer only, or a short NAT latch."""

from __future__ import annotations

from sip.rtp_guard import (
    LATCH_PACKETS,
    LATCH_SECONDS,
    Allow,
    Latch,
    LatchState,
    Rules,
    filter_program,
    parse_address,
)

PEER = ("192.0.2.10", 4000)


def test_addresses_as_pjsua2_prints_them() -> None:
    """IPv4 and bracketed IPv6 with port parse; no address, port 0 or 0.0.0.0 mean none."""
    assert parse_address("127.0.0.1:4000") == ("127.0.0.1", 4000)
    assert parse_address("[::1]:4002") == ("::1", 4002)
    assert parse_address("") is None
    assert parse_address("0.0.0.0:4000") is None
    assert parse_address("127.0.0.1:0") is None
    assert parse_address("not an address:12") is None


def test_without_latching_only_the_signalled_addresses_are_admitted() -> None:
    """Latching off: RTP from the SDP's address and port, RTCP from port + 1, never changed."""
    latch = Latch(PEER, None, latching=False)
    assert latch.initial() == Rules(Allow("192.0.2.10", 4000), Allow("192.0.2.10", 4001))
    assert latch.check(500, 60.0, ("192.0.2.10", 5555), ("192.0.2.10", 5556)) is None
    assert latch.state is LatchState.LOCKED


def test_latching_admits_the_peer_ip_then_locks_on_the_port_it_used() -> None:
    """Latching on: the signalled IP on any port until the first packets, then the port the
    peer really sent from; a source on another IP is never taken."""
    latch = Latch(PEER, ("192.0.2.10", 4009), latching=True)
    assert latch.initial() == Rules(Allow("192.0.2.10"), Allow("192.0.2.10"))
    assert latch.check(LATCH_PACKETS - 1, 0.5, ("192.0.2.10", 6000), None) is None
    locked = latch.check(LATCH_PACKETS, 0.6, ("192.0.2.10", 6000), ("198.51.100.1", 7))
    assert locked == Rules(Allow("192.0.2.10", 6000), Allow("192.0.2.10", 4009))
    assert latch.check(1000, 9.0, ("192.0.2.10", 7000), None) is None  # locked for good


def test_latched_rtcp_without_rtcp_yet_is_expected_next_to_the_latched_rtp() -> None:
    """No RTCP arrived by the time RTP latched on another port: RTCP is expected at its + 1."""
    latch = Latch(PEER, None, latching=True)
    locked = latch.check(LATCH_PACKETS, 0.2, ("192.0.2.10", 6000), None)
    assert locked == Rules(Allow("192.0.2.10", 6000), Allow("192.0.2.10", 6001))


def test_latch_closes_after_its_time_even_without_packets() -> None:
    """A silent peer does not keep the latch open: after LATCH_SECONDS it locks to the SDP."""
    latch = Latch(PEER, None, latching=True)
    assert latch.check(0, LATCH_SECONDS, None, None) == Rules(
        Allow("192.0.2.10", 4000), Allow("192.0.2.10", 4001)
    )


def test_filter_programs_are_whole_instructions() -> None:
    """Each program is a list of 8-byte BPF instructions ending in a return."""
    for allow in (Allow(None), Allow("10.0.0.1"), Allow("10.0.0.1", 5), Allow("::1", 5)):
        program = filter_program(allow)
        assert len(program) % 8 == 0
        assert program[-8:-6] == b"\x06\x00"  # BPF_RET | BPF_K
