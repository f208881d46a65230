"""systemd notify messages and the watchdog's round-trip rule."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from daemon.sdnotify import Notifier, Watchdog, watchdog_interval


@pytest.fixture
def listener(short_tmp: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(short_tmp / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2.0)
    yield path, sock
    sock.close()


def test_notify_sends_one_datagram(listener: tuple[str, socket.socket]) -> None:
    """Fields go out newline-joined in a single datagram."""
    path, sock = listener
    assert Notifier(path).notify("READY=1", "STATUS=up")
    assert sock.recv(4096) == b"READY=1\nSTATUS=up"


def test_abstract_namespace_address() -> None:
    """An address starting with '@' is an abstract socket."""
    name = f"sipai-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        assert Notifier("@" + name).notify("STOPPING=1")
        assert sock.recv(64) == b"STOPPING=1"


def test_without_socket_notify_is_a_no_op(tmp_path: Path) -> None:
    """No $NOTIFY_SOCKET: nothing is sent; a dead socket is reported, not raised."""
    assert not Notifier.from_environ({}).enabled
    assert not Notifier(None).notify("READY=1")
    assert not Notifier(str(tmp_path / "gone")).notify("READY=1")


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    """WATCHDOG_USEC gives the ping interval; a WATCHDOG_PID of another process disables it."""
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}) == 1.0
    assert watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None


async def test_watchdog_pings_only_after_probe_round_trips(
    listener: tuple[str, socket.socket],
) -> None:
    """A probe that completes yields pings; a probe stuck on the loop yields none."""
    path, sock = listener
    sock.settimeout(0.0)
    healthy = True
    stuck = asyncio.Event()

    async def probe() -> None:
        if not healthy:
            await stuck.wait()  # never set: the round trip does not complete

    watchdog = Watchdog(Notifier(path), 0.1, asyncio.get_running_loop(), probe)
    watchdog.start()
    try:
        await asyncio.sleep(0.35)
        pings = _drain(sock)
        assert pings.count(b"WATCHDOG=1") >= 2

        healthy = False
        await asyncio.sleep(0.15)  # let a ping already on its way arrive
        _drain(sock)
        await asyncio.sleep(0.4)
        assert _drain(sock) == []
    finally:
        await asyncio.to_thread(watchdog.stop)
    assert not any(t.name == "sipai-watchdog" for t in threading.enumerate())


def _drain(sock: socket.socket) -> list[bytes]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(64))
        except BlockingIOError:
            return messages
