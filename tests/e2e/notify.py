"""A stand-in for systemd's notify socket: a datagram socket that records what it receives."""

from __future__ import annotations

import socket
import time
from pathlib import Path


class NotifySocket:
    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self.path)
        self.received: list[tuple[float, str]] = []  # (monotonic arrival time, message)

    def close(self) -> None:
        self._sock.close()

    def wait_for(self, message: str, timeout: float) -> float:
        """Collect datagrams until ``message`` arrives; return its arrival time."""
        deadline = time.monotonic() + timeout
        while True:
            for arrived, text in self.received:
                if message in text.split("\n"):
                    return arrived
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{message!r} not received; got {self.received}")
            self._sock.settimeout(remaining)
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            self.received.append((time.monotonic(), data.decode()))

    def messages(self) -> list[str]:
        return [text for _, text in self.received]
