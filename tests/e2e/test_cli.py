"""``sipai call`` and ``sipai calls`` against the real daemon, Kamailio and a test phone."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.peers.kamailio import password, running_kamailio
from tests.support import DaemonProcess, callee, registered

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
MESSAGE = "This is a test call from the command line."


async def _cli(env: dict[str, str], *args: str) -> tuple[int, list[str], str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, out.decode().splitlines(), err.decode()


async def test_sipai_call_wait_follows_a_real_call_and_calls_lists_it(
    tmp_path: Path, daemon_env: dict[str, str]
) -> None:
    """`python -m daemon call 1001 "..." --wait` (API port and token from the daemon's own
    settings) prints queued, ringing, answered and completed for a call the phone answers,
    exits 0, and `python -m daemon calls` lists it."""
    async with running_kamailio(tmp_path / "k") as pbx:
        env = daemon_env | {
            "SIPAI_SIP__REGISTRAR": pbx.uri,
            "SIPAI_SIP__PASSWORD": password("1000"),
            "SIPAI_API__TOKEN": "e2e-cli-token",
        }
        async with (
            DaemonProcess(env, wait=registered),
            callee(pbx, "1001", answer_after_ms=3000) as phone,  # rings over ~6 polls
        ):
            cli_env = os.environ | env | {"PYTHONPATH": str(REPO)}
            code, lines, err = await _cli(cli_env, "call", "1001", MESSAGE, "--wait")
            print("\n".join(lines))
            assert (code, err) == (0, ""), (code, lines, err)
            assert [line.split()[1] for line in lines] == [
                "queued",
                "ringing",
                "answered",
                "completed",
            ], lines
            assert "message_played=yes" in lines[-1], lines
            call_id = lines[0].split()[0]
            await phone.expect("call", state="DISCONNECTED", timeout=20)
            code, table, err = await _cli(cli_env, "calls", "--limit", "5")
            print("\n".join(table))
            assert (code, err) == (0, ""), (code, table, err)
            row = table[1].split()
            assert row[2:6] == [call_id, "outbound", "1001", "completed"], table
