"""Only the signalled peer's media enters a call: a kernel filter on each call's RTP sockets.

pjmedia (2.15) follows the source of incoming RTP: after a few packets from a new address its
stream takes that address as the remote one, and the UDP transport sends the call's audio
there (``PJMEDIA_RTP_NAT_PROBATION_CNT``). pjsua creates its UDP media transports with no
options (so never ``PJMEDIA_UDP_NO_SRC_ADDR_CHECKING``, which would only stop the sending
side anyway) and pjsua2 offers no setting for it: any host that floods a call's RTP port
takes the call's audio over and talks into it. Here every
call's RTP and RTCP sockets get a classic BPF socket filter (``SO_ATTACH_FILTER``) that lets
through only datagrams from the peer the SDP negotiated: everything else is dropped by the
kernel before pjmedia reads it, so it can neither redirect the call nor be heard.

With ``sip.rtp_latching`` (symmetric RTP for peers behind NAT, whose packets come from
another port than the one they signal) the filter first admits the signalled peer's IP on any
port, lets pjmedia latch on to where that peer really sends from, and after the call's first
packets locks to the address latched on.

:class:`Latch` and :func:`filter_program` are pure; :class:`MediaGuard` applies them to a
call's sockets and runs on the SIP thread only.
"""

from __future__ import annotations

import ctypes
import enum
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass

from daemon.logs import get_logger

log = get_logger(__name__)

SO_ATTACH_FILTER = 26  # asm-generic/socket.h; the socket module does not export it
_SKF_NET_OFF = -0x100000  # BPF offsets from the IP header (linux/filter.h)
_LD_W_ABS, _LD_H_ABS, _JEQ_K, _RET_K = 0x20, 0x28, 0x15, 0x06
_ACCEPT, _DROP = 0xFFFFFFFF, 0

# With latching: lock once this many packets were received, or this long after the media
# started, whichever comes first. pjmedia latches on to a new source at its first packet
# when nothing came from the signalled address yet.
LATCH_PACKETS = 10
LATCH_SECONDS = 3.0
LATCH_POLL_SECONDS = 0.1
_MAX_QUEUED = 4096  # datagrams dropped at most when a filter is set (a few receive buffers)


@dataclass(frozen=True)
class Allow:
    """Datagrams admitted: from ``ip`` (None: none at all) and ``port`` (None: any port)."""

    ip: str | None
    port: int | None = None


DROP_ALL = Allow(None)


def parse_address(text: str) -> tuple[str, int] | None:
    """``"127.0.0.1:4000"`` or ``"[::1]:4000"`` as (ip, port); None for no address."""
    host, sep, port = text.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not port.isdigit() or int(port) == 0:
        return None
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if ip.is_unspecified:
        return None
    return str(ip), int(port)


def filter_program(allow: Allow) -> bytes:
    """The classic BPF program (``struct sock_filter`` array) for a UDP socket."""

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)

    if allow.ip is None:
        return op(_RET_K, _DROP)
    ip = ipaddress.ip_address(allow.ip)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket sees it with an IPv4 header
    if isinstance(ip, ipaddress.IPv4Address):
        words = [(12, int(ip))]
    else:
        packed = ip.packed
        words = [(8 + 4 * i, int.from_bytes(packed[4 * i : 4 * i + 4], "big")) for i in range(4)]
    checks: list[tuple[int, int, int]] = [(_LD_W_ABS, _SKF_NET_OFF + off, v) for off, v in words]
    if allow.port is not None:
        checks.append((_LD_H_ABS, 0, allow.port))  # the UDP header's source port
    program: list[bytes] = []
    for index, (load, offset, value) in enumerate(checks):
        to_drop = 2 * (len(checks) - index - 1) + 1  # skip the other checks and the accept
        program += [op(load, offset), op(_JEQ_K, value, 0, to_drop)]
    program += [op(_RET_K, _ACCEPT), op(_RET_K, _DROP)]
    return b"".join(program)


class LatchState(enum.Enum):
    OPEN = "open"  # the signalled peer's IP on any port
    LOCKED = "locked"  # one address each for RTP and RTCP


@dataclass(frozen=True)
class Rules:
    rtp: Allow
    rtcp: Allow


class Latch:
    """Which sources a call's RTP and RTCP sockets admit, as its media goes on."""

    def __init__(self, rtp: tuple[str, int], rtcp: tuple[str, int] | None, latching: bool) -> None:
        self.signalled_rtp = rtp
        self.signalled_rtcp = rtcp or (rtp[0], rtp[1] + 1)
        self.state = LatchState.OPEN if latching else LatchState.LOCKED

    def initial(self) -> Rules:
        ip = self.signalled_rtp[0]
        if self.state is LatchState.OPEN:
            return Rules(Allow(ip), Allow(self.signalled_rtcp[0]))
        return Rules(Allow(*self.signalled_rtp), Allow(*self.signalled_rtcp))

    def check(
        self,
        received: int,
        elapsed: float,
        rtp_source: tuple[str, int] | None,
        rtcp_source: tuple[str, int] | None,
    ) -> Rules | None:
        """While open: the rules to lock to once the first packets are in, else None."""
        if self.state is LatchState.LOCKED:
            return None
        if received < LATCH_PACKETS and elapsed < LATCH_SECONDS:
            return None
        self.state = LatchState.LOCKED
        rtp = _same_ip(rtp_source, self.signalled_rtp) if received else self.signalled_rtp
        if rtcp_source is None and rtp != self.signalled_rtp:
            # No RTCP yet (it comes every few seconds): expect it next to the latched RTP,
            # as pjmedia does when it latches.
            rtcp_source = (rtp[0], rtp[1] + 1)
        rtcp = _same_ip(rtcp_source, self.signalled_rtcp)
        return Rules(Allow(*rtp), Allow(*rtcp))


def _same_ip(source: tuple[str, int] | None, signalled: tuple[str, int]) -> tuple[str, int]:
    if source is not None and source[0] == signalled[0]:
        return source
    return signalled


def attach(sock: socket.socket, allow: Allow) -> None:
    code = filter_program(allow)
    buffer = ctypes.create_string_buffer(code, len(code))  # the kernel copies it in setsockopt
    program = struct.pack("HL", len(code) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)


def _discard_queued(sock: socket.socket) -> int:
    """Drop what reached the socket before its filter did (the kernel filters arrivals, not
    the queue): a flood queued during call set-up would otherwise still be read by pjmedia,
    which latches on to the first source it hears. Bounded by the receive buffer."""
    dropped = 0
    for _ in range(_MAX_QUEUED):
        try:
            sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_TRUNC)
        except (BlockingIOError, InterruptedError):
            break
        dropped += 1
    return dropped


def udp_socket(local: tuple[str, int]) -> socket.socket | None:
    """A duplicate of this process's UDP socket bound to ``local`` (the caller closes it).

    pjsua2 tells a call's local RTP address but not its socket: it is found among the
    process's file descriptors. A filter attached through the duplicate applies to the socket.
    """
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # closed meanwhile
        try:
            if sock.type == socket.SOCK_DGRAM and sock.family in (
                socket.AF_INET,
                socket.AF_INET6,
            ):
                bound = sock.getsockname()
                if bound[1] == local[1] and _same_host(bound[0], local[0]):
                    return sock
        except OSError:
            pass  # closed meanwhile, or not bound: not the one
        sock.close()
    return None


def _same_host(bound: str, wanted: str) -> bool:
    try:
        left, right = ipaddress.ip_address(bound), ipaddress.ip_address(wanted)
    except ValueError:
        return False
    return left == right or left.is_unspecified


class MediaGuard:
    """Keeps one call's RTP and RTCP sockets filtered to its peer (SIP thread only)."""

    def __init__(self, latching: bool) -> None:
        self.latching = latching
        self.latch: Latch | None = None
        self.local: tuple[tuple[str, int] | None, tuple[str, int] | None] = (None, None)
        self.applied: Rules | None = None
        self.started = 0.0  # monotonic time the current latch began

    def update(
        self,
        local_rtp: str,
        local_rtcp: str,
        remote_rtp: str,
        remote_rtcp: str,
        now: float,
    ) -> bool:
        """The media (re)started with these addresses; True when a latch opened just now
        (then :meth:`check` is due every ``LATCH_POLL_SECONDS`` until it returns False)."""
        rtp = parse_address(remote_rtp)
        local = (parse_address(local_rtp), parse_address(local_rtcp))
        if local[0] is None:
            log.error("rtp.filter_failed", local=local_rtp, error="no local RTP address")
        if rtp is None:
            # No usable peer (c=0.0.0.0 on hold, say): nothing may enter.
            self.latch = None
            self._apply(local, Rules(DROP_ALL, DROP_ALL))
            return False
        latch = Latch(rtp, parse_address(remote_rtcp), self.latching)
        old = self.latch
        signalled = (latch.signalled_rtp, latch.signalled_rtcp)
        if (
            old is not None
            and local == self.local
            and (old.signalled_rtp, old.signalled_rtcp) == signalled
        ):
            return False  # a re-INVITE that changed no address: keep what was latched
        self.latch = latch
        self.started = now
        self._apply(local, latch.initial())
        return latch.state is LatchState.OPEN

    def check(self, received: int, src_rtp: str, src_rtcp: str, now: float) -> bool:
        """Lock once the first packets are in; True while the latch is still open."""
        if self.latch is None:
            return False
        rules = self.latch.check(
            received, now - self.started, parse_address(src_rtp), parse_address(src_rtcp)
        )
        if rules is not None:
            self._apply(self.local, rules)
            log.info("rtp.latched", rtp=f"{rules.rtp.ip}:{rules.rtp.port}", received=received)
        return self.latch.state is LatchState.OPEN

    def _apply(
        self, local: tuple[tuple[str, int] | None, tuple[str, int] | None], rules: Rules
    ) -> None:
        self.local = local
        for address, allow in zip(local, (rules.rtp, rules.rtcp), strict=True):
            if address is None:
                continue
            where = f"{address[0]}:{address[1]}"
            sock = udp_socket(address)
            if sock is None:
                log.error("rtp.filter_failed", local=where, error="no socket bound there")
                continue
            try:
                attach(sock, allow)
                _discard_queued(sock)
            except OSError as exc:
                log.error("rtp.filter_failed", local=where, error=str(exc))
            finally:
                sock.close()
        self.applied = rules
