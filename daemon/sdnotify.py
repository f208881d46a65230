"""systemd's notify protocol (``READY=1``, ``WATCHDOG=1``, ``STOPPING=1``) and the watchdog.

The protocol is one datagram per message on the AF_UNIX socket named by ``$NOTIFY_SOCKET``
(a leading ``@`` means the abstract namespace). Without that variable every call is a no-op,
so the daemon runs the same under systemd, in a terminal and in tests.

The watchdog pings only after a round trip through the event loop succeeded: a thread asks
the loop to run the probe coroutine (which, with workers, also round-trips through each of
them) and sends ``WATCHDOG=1`` only if it finished in time. A stuck loop or worker therefore
stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from daemon.logs import get_logger

log = get_logger(__name__)


class Notifier:
    """Sends notify messages to systemd; silent when not run under a notify-type unit."""

    def __init__(self, address: str | None) -> None:
        self._address: str | None = None
        if address:
            self._address = "\0" + address[1:] if address.startswith("@") else address
        self._failed = False  # set once, so a broken socket is reported once, not per ping
        self._lock = threading.Lock()  # the loop thread and the watchdog thread both send

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (e.g. ``"READY=1"``, ``"STATUS=..."``) as one message."""
        if self._address is None:
            return False
        payload = "\n".join(fields).encode()
        with self._lock:
            try:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                    s.connect(self._address)
                    s.sendall(payload)
            except OSError as exc:
                if not self._failed:
                    self._failed = True
                    log.warning("sdnotify.failed", socket=self._address, error=str(exc))
                return False
        return True


def watchdog_interval(environ: Mapping[str, str] | None = None) -> float | None:
    """Seconds between pings (half of ``$WATCHDOG_USEC``), or None when no watchdog is set."""
    env = os.environ if environ is None else environ
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog is meant for another process
    return int(usec) / 1_000_000 / 2


Probe = Callable[[], Coroutine[Any, Any, None]]


class Watchdog:
    """A thread that pings systemd after each successful probe round trip through the loop.

    Threads: ``start``/``stop`` are called from the loop thread; the probe runs on the loop;
    the pings are sent from the ``sipai-watchdog`` thread.
    """

    def __init__(
        self,
        notifier: Notifier,
        interval: float,
        loop: asyncio.AbstractEventLoop,
        probe: Probe,
    ) -> None:
        self._notifier = notifier
        self._interval = interval
        self._loop = loop
        self._probe = probe
        self._stop = threading.Event()  # set by stop() on the loop thread, read by the thread
        self._thread = threading.Thread(target=self._run, name="sipai-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval + 1)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                future = asyncio.run_coroutine_threadsafe(self._probe(), self._loop)
                try:
                    # Half an interval for the probe keeps the ping cadence at one interval.
                    future.result(timeout=self._interval / 2)
                finally:
                    future.cancel()
            except Exception as exc:
                failures += 1
                log.error("watchdog.probe_failed", error=repr(exc), failures=failures)
            else:
                if failures:
                    log.info("watchdog.probe_recovered", failures=failures)
                failures = 0
                self._notifier.notify("WATCHDOG=1")
            self._stop.wait(max(0.0, started + self._interval - time.monotonic()))
