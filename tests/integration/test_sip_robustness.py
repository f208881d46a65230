"""A worker under SIPp load and under malformed traffic on its SIP port."""

from __future__ import annotations

import asyncio
import csv
import os
import random
import shutil
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

from sip.events import CallEnded
from tests.integration.conftest import Recorded, worker_settings
from tests.support import free_port

MakeWorker = Callable[..., Awaitable[Recorded]]


async def _sipp(port: int, directory: Path, *args: str) -> dict[str, str]:
    binary = shutil.which("sipp")
    assert binary, "sipp is missing: `make test` installs it (apt-get install sip-tester)"
    stats = directory / "stats.csv"
    process = await asyncio.create_subprocess_exec(
        binary,
        f"127.0.0.1:{port}",
        "-i",
        "127.0.0.1",
        "-p",
        str(free_port(socket.SOCK_DGRAM)),
        "-s",
        "1000",
        "-nostdin",
        "-trace_stat",
        "-stf",
        str(stats),
        "-fd",
        "1",
        "-timeout",
        "60s",
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        cwd=directory,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode in (0, 1), stderr.decode()[-2000:]  # 1: some calls failed
    with stats.open() as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return rows[-1]


async def test_invite_flood_is_served_up_to_capacity(
    make_worker: MakeWorker, tmp_path: Path
) -> None:
    """60 calls, 12 at a time, at 30/s: every INVITE gets a final answer, 4 at most at once."""
    worker = await make_worker(worker_settings(None))  # direct mode, SIPp calls it directly
    worker.answer_all()
    stats = await _sipp(
        worker.sip.settings.port,
        tmp_path,
        "-sn",
        "uac",
        "-m",
        "60",
        "-l",
        "12",
        "-r",
        "30",
        "-d",
        "300",
    )
    successful = int(stats["SuccessfulCall(C)"])
    failed = int(stats["FailedCall(C)"])
    assert successful + failed == 60
    assert successful >= 20  # answered as capacity frees up
    assert failed >= 1  # the rest got 486 at once rather than waiting
    assert int(stats["FailedCallRejected(C)"]) + int(stats["FailedUnexpectedMessage(C)"]) == failed
    for _ in range(successful):  # the last BYE may still be on its way when SIPp exits
        assert (await worker.expect(CallEnded)).answered
    assert (await worker.sip.diagnostics())["calls"] == 0


async def test_garbage_on_the_sip_port_does_not_hurt(
    make_worker: MakeWorker, tmp_path: Path
) -> None:
    """Random bytes, truncated and oversized requests: the worker still takes a real call."""
    worker = await make_worker(worker_settings(None))
    port = worker.sip.settings.port
    rng = random.Random(4)
    junk = [
        os.urandom(200),
        b"INVITE sip:1000@127.0.0.1 SIP/2.0\r\nVia: broken\r\n\r\n",
        b"OPTIONS sip:x SIP/2.0\r\n" + b"X-Long: " + b"a" * 60000 + b"\r\n\r\n",
        b"SIP/2.0 200 OK\r\nCSeq: nonsense\r\n\r\n",
        b"\r\n\r\n",
        bytes(rng.randrange(256) for _ in range(1400)),
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _ in range(20):
            for packet in junk:
                s.sendto(packet[:65000], ("127.0.0.1", port))
    await asyncio.sleep(0.5)
    assert (await worker.sip.diagnostics())["calls"] == 0
    worker.answer_all()
    stats = await _sipp(port, tmp_path, "-sn", "uac", "-m", "1", "-d", "100")
    assert int(stats["SuccessfulCall(C)"]) == 1
