"""The repository root, the installed ``sipai`` script, and loopback ports for tests.

Test processes run side by side (pytest-xdist workers, other runs on the same machine), so each
one takes a port slot: an exclusive ``flock`` on ``/tmp/sipai-test-ports-{k}.lock`` held for the
life of the process. Slot ``k`` owns 5000 ports from ``12000 + 5000 k``, below the kernel's
ephemeral range (32768-60999), so no outgoing connection is ever handed one of them: the first
1000 for ``free_port``, the next 2000 for test phones' RTP, the last 2000 for daemons' and SIP
workers' RTP ranges. Within a slot each helper cycles through its part, so a port comes back
only after the others of that part have been handed out.
"""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
SIPAI = Path(sys.executable).parent / "sipai"

SLOTS = 4
SLOT_PORTS = 5000
FIRST_SLOT = 12000
LOCK = "/tmp/sipai-test-ports-{}.lock"
FREE_PORTS = 1000  # free_port: SLOT_BASE .. SLOT_BASE + 999
PHONE_RTP = 1000  # phone_rtp_base: the next 2000, one block of PHONE_RTP_BLOCK per phone
PHONE_RTP_BLOCK = 100
RTP_RANGES = 3000  # rtp_range: the last 2000
SIP_SPAN = 4  # consecutive SIP ports a daemon or worker pool may take (one per worker)

_slot: tuple[int, int] | None = None  # (slot base, fd of its lock: held until exit)
_cursor = {"free": 0, "phone": 0, "rtp": 0}


def slot_base() -> int:
    """The first port of this process's slot; takes the first free slot on first use."""
    global _slot
    if _slot is None:
        for k in range(SLOTS):
            fd = os.open(LOCK.format(k), os.O_RDONLY | os.O_CREAT, 0o644)  # flock needs no write
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            _slot = (FIRST_SLOT + SLOT_PORTS * k, fd)
            return _slot[0]
        raise RuntimeError(
            f"all {SLOTS} test port slots are held by other test processes "
            f"({LOCK.format('0..' + str(SLOTS - 1))}): run fewer at once"
        )
    return _slot[0]


def _next(part: str, start: int, size: int, step: int) -> int:
    """The next block of ``step`` ports in ``[start, start + size)`` of the slot, cycling."""
    offset = _cursor[part]
    if offset + step > size:
        offset = 0
    _cursor[part] = offset + step
    return slot_base() + start + offset


def _bindable(port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(kind: int = socket.SOCK_STREAM, count: int = 1) -> int:
    """The first of ``count`` consecutive ports of this slot that bind on 127.0.0.1 just now."""
    for _ in range(FREE_PORTS // count + 1):
        port = _next("free", 0, FREE_PORTS, count)
        if all(_bindable(p, kind) for p in range(port, port + count)):
            return port
    raise RuntimeError(f"no {count} free consecutive ports in the slot from {slot_base()}")


def phone_rtp_base() -> int:
    """The first RTP port of a test phone: a block of 100 of its own in this slot."""
    return _next("phone", PHONE_RTP, RTP_RANGES - PHONE_RTP, PHONE_RTP_BLOCK)


def rtp_range(size: int = 200) -> tuple[int, int]:
    """``(min, max)`` of ``size`` RTP ports in this slot for a daemon or a SIP worker."""
    assert 0 < size <= SLOT_PORTS - RTP_RANGES, size
    first = _next("rtp", RTP_RANGES, SLOT_PORTS - RTP_RANGES, size)
    return first, first + size - 1
