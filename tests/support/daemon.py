"""The daemon as a process, for e2e tests and benchmarks.

``DaemonProcess`` starts ``sipai run`` (or a test supervisor script, or any command), optionally
behind a wrapper such as ``prlimit`` or ``tests.sandbox``, waits for ``/health`` and stops it
with a signal. Its stdout and stderr go to a log file next to the store by default, so that a
daemon that dies before serving ``/health`` fails the test with its last log lines. The same object
serves async tests (``await start()``, ``async with``) and sync ones (``start_sync()``,
``with``); both poll the process and ``/health`` with bounded waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

import httpx

from tests.support.paths import ROOT, SIP_SPAN, SIPAI, free_port, rtp_range

Health = dict[str, Any]
# "health": /health answers; "healthy": it says so; a callable: it holds for the report.
Wait = Literal["health", "healthy"] | Callable[[Health], bool] | None
Output = Literal["log", "devnull", "pipe", "stderr"]

LAST_LINES = 20
POLL_SECONDS = 0.1


def daemon_env(tmp: Path) -> dict[str, str]:
    """Environment for a daemon subprocess with its own ports and its state in ``tmp``."""
    rtp_min, rtp_max = rtp_range(200)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SIPAI_", "NOTIFY_", "WATCHDOG_"))
    }
    env.update(
        SIPAI_API__PORT=str(free_port()),
        SIPAI_SIP__PORT=str(free_port(socket.SOCK_DGRAM, SIP_SPAN)),
        SIPAI_SIP__RTP_PORT_MIN=str(rtp_min),
        SIPAI_SIP__RTP_PORT_MAX=str(rtp_max),
        SIPAI_STORAGE__PATH=str(tmp / "sipai.db"),
        SIPAI_LOG__FORMAT="json",
    )
    return env


def registered(health: Health) -> bool:
    """A ``wait`` predicate: at least one worker is registered."""
    return bool(health["sip_registered"])


def workers_up(health: Health) -> bool:
    """A ``wait`` predicate: every SIP worker is up (direct mode: ready for calls)."""
    return all(w["up"] for w in health["workers"])


class DaemonExited(AssertionError):
    """The daemon exited (or never answered) before it was ready; carries its last log lines."""


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml(config: Mapping[str, Mapping[str, Any]]) -> str:
    """``{"section": {"key": value}}`` as TOML; a list of tables becomes ``[[section.key]]``."""
    lines: list[str] = []
    for section, keys in config.items():
        tables = {
            k: v
            for k, v in keys.items()
            if isinstance(v, list) and v and all(isinstance(t, Mapping) for t in v)
        }
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in keys.items() if k not in tables]
        for key, rows in tables.items():
            for row in rows:
                lines.append(f"[[{section}.{key}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in row.items()]
    return "\n".join(lines) + "\n"


class DaemonProcess:
    """One daemon process: started with ``env`` (see :func:`daemon_env`), its files (log,
    written config) in the directory of ``env``'s store."""

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        config: Mapping[str, Mapping[str, Any]] | Path | None = None,
        script: str | None = None,
        command: Sequence[str] | None = None,
        wrapper: Sequence[str] = (),
        stdout: Output = "log",
        stderr: Literal["log", "inherit", "devnull"] = "log",
        log: Path | None = None,
        wait: Wait = "health",
        timeout: float = 60.0,
        cwd: Path = ROOT,
    ) -> None:
        """``script``: a module run with ``python -m`` instead of ``sipai run`` (the e2e test
        supervisors); ``command``: the whole command line instead of either."""
        self.env = dict(env)
        self.directory = Path(self.env["SIPAI_STORAGE__PATH"]).parent
        if config is not None:
            if not isinstance(config, Path):
                path = self.directory / "sipai.toml"
                path.write_text(toml(config))
                config = path
            self.env["SIPAI_CONFIG"] = str(config)
        if command is None:
            command = [sys.executable, "-m", script] if script else [str(SIPAI), "run"]
        self.command = [*wrapper, *command]
        self.stdout: Output = stdout
        self.stderr = stderr
        self.log = log if log is not None else self.directory / "daemon.log"
        self.wait_for: Wait = wait
        self.timeout = timeout
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def api_port(self) -> int:
        return int(self.env["SIPAI_API__PORT"])

    @property
    def sip_port(self) -> int:
        return int(self.env["SIPAI_SIP__PORT"])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def pid(self) -> int:
        return self._running.pid

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def _running(self) -> subprocess.Popen[bytes]:
        assert self.process is not None, "the daemon was not started"
        return self.process

    def log_lines(self) -> list[str]:
        """What the daemon wrote to its log file so far (stdout and stderr, as configured)."""
        if "log" not in (self.stdout, self.stderr) or not self.log.exists():
            return []
        return self.log.read_text(errors="replace").splitlines()

    def log_events(self) -> list[dict[str, Any]]:
        """The JSON log lines, parsed (other lines, such as pjlib's start-up, are skipped)."""
        events = []
        for line in self.log_lines():
            if line.startswith("{"):
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    events.append(event)
        return events

    def _spawn(self) -> None:
        assert self.process is None, "the daemon was started already"
        files: list[IO[bytes]] = []
        if "log" in (self.stdout, self.stderr):
            files.append(self.log.open("ab"))
        log_file: IO[bytes] | int | None = files[0] if files else None
        outputs: dict[str, IO[bytes] | int | None] = {
            "log": log_file,
            "devnull": subprocess.DEVNULL,
            "pipe": subprocess.PIPE,
            "stderr": sys.stderr.fileno(),
            "inherit": None,
        }
        try:
            self.process = subprocess.Popen(
                self.command,
                env=self.env,
                cwd=self.cwd,
                stdout=outputs[self.stdout],
                stderr=outputs[self.stderr],
            )
        finally:
            for file in files:
                file.close()

    @staticmethod
    def _ready(wait: Wait, response: httpx.Response) -> bool:
        if wait == "health":
            return True
        body: Health = response.json()
        if wait == "healthy":
            return body["status"] == "healthy"
        assert callable(wait)
        return wait(body)

    def _failure(self, what: str) -> DaemonExited:
        lines = self.log_lines()[-LAST_LINES:]
        tail = "\n".join(lines) if lines else f"(none: stdout {self.stdout}, stderr {self.stderr})"
        return DaemonExited(f"{what}; last log lines:\n{tail}")

    def _exited(self) -> DaemonExited:
        return self._failure(f"daemon {self.command} exited with {self.returncode} before ready")

    def _timed_out(self, timeout: float, last: object) -> DaemonExited:
        self.kill()
        return self._failure(f"daemon not ready within {timeout} s (last: {last!r})")

    async def start(self) -> httpx.Response | None:
        """Start the process and wait as told; return the last ``/health`` response."""
        self._spawn()
        if self.wait_for is None:
            return None
        return await self.ready(self.wait_for, self.timeout)

    async def ready(
        self,
        wait: Wait = "health",
        timeout: float = 60.0,
        client: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        """Poll ``/health`` until ``wait`` holds; the daemon is killed if it does not within
        ``timeout``, and :class:`DaemonExited` raised with its last log lines either way.
        ``client``: one made beforehand (making one blocks the event loop for 15-30 ms)."""
        deadline = time.monotonic() + timeout
        last: object = None
        async with contextlib.AsyncExitStack() as stack:
            if client is None:
                client = await stack.enter_async_context(httpx.AsyncClient(timeout=5.0))
            while time.monotonic() < deadline:
                if self.returncode is not None:
                    raise self._exited()
                try:
                    response = await client.get(f"{self.base_url}/health")
                    if self._ready(wait, response):
                        return response
                    last = response.json()
                except httpx.TransportError as exc:
                    last = exc
                await asyncio.sleep(POLL_SECONDS)
        raise self._timed_out(timeout, last)

    def start_sync(self) -> httpx.Response | None:
        """:meth:`start` for tests without an event loop."""
        self._spawn()
        if self.wait_for is None:
            return None
        return self.ready_sync(self.wait_for, self.timeout)

    def ready_sync(self, wait: Wait = "health", timeout: float = 60.0) -> httpx.Response:
        deadline = time.monotonic() + timeout
        last: object = None
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                try:
                    response = client.get(f"{self.base_url}/health")
                    if self._ready(wait, response):
                        return response
                    last = response.json()
                except httpx.TransportError as exc:
                    last = exc
                try:  # doubles as the pause between polls
                    self._running.wait(timeout=POLL_SECONDS)
                except subprocess.TimeoutExpired:
                    continue
                raise self._exited()
        raise self._timed_out(timeout, last)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            self._running.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        """The exit status once the process exits; TimeoutError if it is still up after
        ``timeout``."""
        deadline = time.monotonic() + timeout
        while (code := self.returncode) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"daemon still running after {timeout} s")
            await asyncio.sleep(0.05)
        return code

    def wait_sync(self, timeout: float) -> int:
        try:
            return self._running.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"daemon still running after {timeout} s") from None

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` and return the exit status; killed, and an error, if it takes longer."""
        self.send_signal(sig)
        try:
            return await self.wait(timeout)
        except TimeoutError:
            raise self._not_stopped(sig, timeout) from None

    def stop_sync(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.send_signal(sig)
        try:
            return self.wait_sync(timeout)
        except TimeoutError:
            raise self._not_stopped(sig, timeout) from None

    def _not_stopped(self, sig: int, timeout: float) -> DaemonExited:
        self.kill()
        return self._failure(f"daemon did not exit within {timeout} s of {sig!r}")

    def kill(self) -> None:
        """SIGKILL, as a power cut would; returns once the process is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def _check_exit(self, code: int, failed: bool) -> None:
        if code != 0 and not failed:
            raise self._failure(f"daemon exited with {code} when stopped")

    async def __aenter__(self) -> DaemonProcess:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop the daemon (if still up); a non-zero exit fails unless the body failed."""
        if self.returncode is None:
            self._check_exit(await self.stop(timeout=60), exc_type is not None)

    def __enter__(self) -> DaemonProcess:
        self.start_sync()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.returncode is None:
            self._check_exit(self.stop_sync(timeout=60), exc_type is not None)


def wait_for_health(
    port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0
) -> httpx.Response:
    """Poll ``GET /health`` until it answers; fail early if ``proc`` died. For launchers that
    are not the daemon itself (``make run``)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1.0)
        except httpx.TransportError as exc:
            last_error = exc
        try:  # doubles as the pause between polls
            proc.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"daemon exited with {proc.returncode} before serving /health")
    raise AssertionError(f"/health did not answer within {timeout} s: {last_error!r}")
