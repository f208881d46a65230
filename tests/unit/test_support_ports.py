"""Test ports: each test process has a slot of its own, below the kernel's ephemeral range."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT, free_port, phone_rtp_base, rtp_range
from tests.support.paths import SLOT_PORTS, slot_base

SHOW_SLOT = (
    "import sys; from tests.support.paths import slot_base, free_port;"
    " print(slot_base(), free_port(), flush=True); sys.stdin.read()"
)


def _ephemeral_low() -> int:
    return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_concurrent_processes_get_disjoint_slots() -> None:
    """A second test process alive at the same time gets another slot, and its ports with it."""
    mine = slot_base()
    other = subprocess.Popen(
        [sys.executable, "-c", SHOW_SLOT],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout is not None
        line = other.stdout.readline()
    finally:
        other.communicate(timeout=10)
    assert len(line.split()) == 2, f"the other process printed {line!r}"
    base, port = map(int, line.split())
    print(f"this process: slot {mine}; the other: slot {base}, free_port {port}")
    assert base != mine, (mine, base)
    assert base <= port < base + SLOT_PORTS, (base, port)


def test_every_port_is_in_the_slot_below_the_ephemeral_range() -> None:
    """free_port, phone_rtp_base and rtp_range hand out ports of this process's slot only,
    all below the first ephemeral port, so no outgoing connection can take one."""
    base, low = slot_base(), _ephemeral_low()
    ports = [free_port(), free_port(socket.SOCK_DGRAM, 4), phone_rtp_base(), *rtp_range(200)]
    print(f"slot {base}: {ports}, ephemeral from {low}")
    assert all(base <= port < base + SLOT_PORTS < low for port in ports), (base, ports, low)


def test_free_port_passes_over_a_port_in_use() -> None:
    """free_port never returns a port something is bound to: it moves on to the next one."""
    first = free_port(socket.SOCK_DGRAM)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", first + 1))
        second = free_port(socket.SOCK_DGRAM)
    assert second not in (first, first + 1), (first, second)


def test_consecutive_ranges_do_not_overlap() -> None:
    """Consecutive RTP ranges and phone RTP blocks share no port."""
    ranges = [rtp_range(100), rtp_range(200), rtp_range(100)]
    ports = [set(range(low, high + 1)) for low, high in ranges]
    assert all(len(p) == n for p, n in zip(ports, (100, 200, 100), strict=True)), ranges
    assert len(ports[0] | ports[1] | ports[2]) == 400, ranges
    phones = [phone_rtp_base(), phone_rtp_base()]
    assert abs(phones[1] - phones[0]) >= 100, phones
