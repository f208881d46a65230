"""The daemon's own log output: levels that mean what they say, and reach journald.

The daemon runs in direct mode as a process with its stdout in a file, as systemd runs it
with the journal's stream on stdout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.support import DaemonProcess, workers_up

pytestmark = pytest.mark.e2e

PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}
# pjlib's start-up lines, printed by pjsua2 to fd 1 before the daemon's log writer is
# installed: no prefix, so journald files them at the unit's default priority (info).
PJLIB_CONSOLE = re.compile(r"\d\d:\d\d:\d\d\.\d{3} ")


@contextlib.asynccontextmanager
async def _daemon(env: dict[str, str], out: Path, journal: bool = False) -> AsyncIterator[str]:
    """The daemon in direct mode, stdout (and stderr) into ``out``; yields the API base URL.
    With ``journal``, JOURNAL_STREAM names ``out`` as systemd names the journal's stream."""
    env = env | {"SIPAI_SIP__REGISTRAR": ""}
    env.pop("JOURNAL_STREAM", None)
    out.touch()
    if journal:
        status = out.stat()
        env["JOURNAL_STREAM"] = f"{status.st_dev}:{status.st_ino}"
    async with DaemonProcess(env, log=out, wait=workers_up, timeout=90) as daemon:
        yield daemon.base_url


def _json_lines(out: Path) -> list[dict[str, Any]]:
    events = []
    for line in out.read_text().splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events


async def _until_logged(out: Path, *events: str) -> None:
    """Wait until one of ``events`` is logged."""
    async with asyncio.timeout(20):
        while not any(e["event"] in events for e in _json_lines(out)):
            await asyncio.sleep(0.1)


async def _drop_mid_response(base: str) -> None:
    """Open /v1/realtime, ask for the greeting, and cut the TCP connection while it streams."""
    url = base.replace("http://", "ws://") + "/v1/realtime?model=sipai-local"
    ws = await websockets.connect(url)
    assert json.loads(await ws.recv())["type"] == "session.created"
    await ws.send(json.dumps({"type": "response.create"}))
    async with asyncio.timeout(30):
        while json.loads(await ws.recv())["type"] != "response.output_audio.delta":
            pass
    ws.transport.abort()  # no close frame, no FIN: a reset, as a crashed client leaves it


async def test_a_dropped_realtime_socket_is_an_info_event(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """A client that drops /v1/realtime mid-response is logged as engine.client_disconnected
    at info; the daemon logs no error for it and writes nothing more into the dead socket."""
    out = tmp_path / "stdout"
    async with _daemon(daemon_env, out) as base:
        await _drop_mid_response(base)
        # Closed, or (before the fix) the disconnect escaped the route as an ASGI error.
        await _until_logged(out, "engine.session_closed", "Exception in ASGI application\n")
    events = _json_lines(out)
    errors = [e["event"] for e in events if e["level"] in ("error", "critical")]
    assert errors == [], f"{len(errors)} error events: {errors[:3]}"
    # asyncio warns of each write into a socket known to be dead, from the fifth on.
    dead_writes = [e for e in events if e["event"] == "socket.send() raised exception."]
    assert dead_writes == [], f"{len(dead_writes)} writes into the dropped socket"
    dropped = [e for e in events if e["event"] == "engine.client_disconnected"]
    assert [e["level"] for e in dropped] == ["info"], dropped


async def test_every_line_on_the_journal_stream_carries_its_priority(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """With JOURNAL_STREAM naming its stdout, each line of the daemon and of its SIP worker
    (pjsip's records too) starts with <N>, N the syslog priority of the line's level."""
    out = tmp_path / "stdout"
    async with _daemon(daemon_env, out, journal=True):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:  # pjsip warns of it
            udp.sendto(
                b"INVITE sip:x SIP/2.0\r\nVia: garbage\r\n\r\n",
                ("127.0.0.1", int(daemon_env["SIPAI_SIP__PORT"])),
            )
        async with asyncio.timeout(20):
            while "Dropping" not in out.read_text():
                await asyncio.sleep(0.1)
    levels: dict[str, int] = {}
    for line in out.read_text().splitlines():
        if PJLIB_CONSOLE.match(line):
            continue
        match = re.fullmatch(r"<(\d)>(\{.*\})", line)
        assert match, f"line without a priority prefix: {line!r}"
        event = json.loads(match[2])
        assert int(match[1]) == PRIORITY[event["level"]], line
        levels[event["level"]] = levels.get(event["level"], 0) + 1
    assert levels.get("info", 0) > 5, levels
    assert levels.get("warning", 0) >= 1, levels
    print(f"lines by level: {levels}")
