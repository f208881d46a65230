"""A lossy media path for tests: a UDP relay between a test phone and the far end of its call.

The phone is started with ``sdp_port_offset`` so its SDP offers ports the relay listens on
(RTP and RTP + 1) instead of the ones it really sends from. The far end therefore sends its
RTP and RTCP to the relay, which hands them to the phone's real ports from its own sockets;
nothing reaches the phone from the far end's signalled address, so the phone's pjmedia
latches its sending address onto the relay. From then on the phone's media comes to the relay
too, and goes on to the far end from the port the SDP signalled, with every ``drop_every``-th
RTP packet dropped (RTCP is never dropped): an exact loss rate on the phone-to-far-end
direction only.

Everything runs on the test's event loop; the counters are read there.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import cast


@dataclass
class Counters:
    """Datagrams seen by one of the relay's sockets."""

    from_phone: int = 0  # datagrams that came from the phone's real port
    to_far: int = 0  # ... of them sent on to the far end
    dropped: int = 0  # ... of them dropped on purpose
    unrouted: int = 0  # ... of them that came before the far end was known (discarded)
    from_far: int = 0  # datagrams from anyone else (the far end), all sent on to the phone


class _Leg(asyncio.DatagramProtocol):
    """One relayed socket: RTP or RTCP."""

    def __init__(self, phone: tuple[str, int], drop_every: int) -> None:
        self.phone = phone
        self.drop_every = drop_every  # 0: drop nothing
        self.far: tuple[str, int] | None = None  # learnt from the first datagram not the phone's
        self.counters = Counters()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        source = (str(addr[0]), int(addr[1]))
        counters = self.counters
        assert self.transport is not None
        if source == self.phone:
            counters.from_phone += 1
            if self.far is None:
                counters.unrouted += 1
            elif self.drop_every and counters.from_phone % self.drop_every == 0:
                counters.dropped += 1
            else:
                counters.to_far += 1
                self.transport.sendto(data, self.far)
            return
        self.far = source
        counters.from_far += 1
        self.transport.sendto(data, self.phone)

    def error_received(self, exc: Exception) -> None:
        """An ICMP error from a send (the phone or far end has gone): nothing to do."""


class UdpRelay:
    """Relays a phone's RTP (``phone_port``) and RTCP (``phone_port + 1``) through
    ``listen_port`` and ``listen_port + 1`` on ``host``, dropping every ``drop_every``-th RTP
    packet the phone sends."""

    def __init__(self, rtp: _Leg, rtcp: _Leg) -> None:
        self._rtp = rtp
        self._rtcp = rtcp

    @classmethod
    async def start(
        cls, host: str, listen_port: int, phone_port: int, drop_every: int = 20
    ) -> UdpRelay:
        loop = asyncio.get_running_loop()
        rtp = _Leg((host, phone_port), drop_every)
        rtcp = _Leg((host, phone_port + 1), 0)
        await loop.create_datagram_endpoint(lambda: rtp, local_addr=(host, listen_port))
        try:
            await loop.create_datagram_endpoint(lambda: rtcp, local_addr=(host, listen_port + 1))
        except OSError:
            assert rtp.transport is not None
            rtp.transport.close()
            raise
        return cls(rtp, rtcp)

    @property
    def rtp(self) -> Counters:
        return self._rtp.counters

    @property
    def rtcp(self) -> Counters:
        return self._rtcp.counters

    def close(self) -> None:
        for leg in (self._rtp, self._rtcp):
            if leg.transport is not None:
                leg.transport.close()
