"""Helpers shared by every test layer: free ports, the repository root, a daemon process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
SIPAI = Path(sys.executable).parent / "sipai"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (AF_UNIX socket paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sipai-") as path:
        yield Path(path)


@pytest.fixture
def daemon_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a daemon subprocess with its own ports and state in ``tmp_path``."""
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("SIPAI_", "NOTIFY_", "WATCHDOG_"))
    }
    env.update(
        SIPAI_API__PORT=str(free_port()),
        SIPAI_SIP__PORT=str(free_port(socket.SOCK_DGRAM)),
        SIPAI_STORAGE__PATH=str(tmp_path / "sipai.db"),
        SIPAI_LOG__FORMAT="json",
    )
    return env


def wait_for_health(
    port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0
) -> httpx.Response:
    """Poll ``GET /health`` until it answers; fail early if the process died."""
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
