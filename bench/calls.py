"""Concurrent calls on this machine: knee, CPU per call and RSS per worker.

For 1, 2, 4, 8, 12 and 16 SIP workers the daemon (supervisor + worker processes, direct SIP mode)
takes 4 calls per worker at once from SIPp, which plays 7 s of recorded G.711 speech as RTP
into each call. Every call is bridged with mu-law passthrough to a fake model on loopback (a
WebSocket server in this process that sends each frame straight back), and the model's audio
is played out to the caller. Per level it reports:

- calls completed, and the share of 20 ms frames that were late (> 60 ms behind the call's
  clock when they reached the event loop) or missing, and playout underruns;
- CPU of the supervisor and the workers over a window with every call up, per call, in % of
  one core; RSS per worker process.

The knee is the first level with late/missing frames or underruns above 0.5 %. SIPp and the
fake model run on the same two cores and are not counted in the CPU figures.

Run: .venv/bin/python -m bench.calls [--workers 1 2 4 8 12 16]   (needs sipp: apt-get install
sip-tester). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

ROOT = Path(__file__).resolve().parent.parent
PCAP = Path("/usr/share/sip-tester/g711a.pcap")
CALLS_PER_WORKER = 4
KNEE_SHARE = 0.005


def _free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _fake_model(connection: Any) -> None:
    """Send every frame straight back, until the call's side closes."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async for message in connection:
            await connection.send(message)


async def _health(port: int, workers: int) -> dict[str, Any]:
    async with httpx.AsyncClient() as client, asyncio.timeout(60):
        while True:
            try:
                body: dict[str, Any] = (await client.get(f"http://127.0.0.1:{port}/health")).json()
                if len(body["workers"]) == workers and all(w["up"] for w in body["workers"]):
                    return body
            except httpx.TransportError:
                pass  # not listening yet
            await asyncio.sleep(0.2)


async def run_level(workers: int) -> dict[str, Any]:
    calls = workers * CALLS_PER_WORKER
    with tempfile.TemporaryDirectory(prefix="sipai-bench-") as tmp:
        directory = Path(tmp)
        (directory / "g711a.pcap").symlink_to(PCAP)
        results = directory / "results.jsonl"
        sip_port = _free_port(socket.SOCK_DGRAM)
        api_port = _free_port()
        async with websockets.serve(_fake_model, "127.0.0.1", 0, compression=None) as model:
            model_port = next(iter(model.sockets)).getsockname()[1]
            env = {
                **os.environ,
                "SIPAI_SIP__WORKERS": str(workers),
                "SIPAI_SIP__PORT": str(sip_port),
                "SIPAI_SIP__RTP_PORT_MIN": "30000",
                "SIPAI_SIP__RTP_PORT_MAX": str(30000 + 100 * workers - 1),
                "SIPAI_API__PORT": str(api_port),
                "SIPAI_LOG__LEVEL": "warning",
                "SIPAI_LOG__FORMAT": "json",
                "SIPAI_STORAGE__PATH": str(directory / "sipai.db"),
                "SIPAI_BENCH_MODEL_URL": f"ws://127.0.0.1:{model_port}",
                "SIPAI_BENCH_RESULTS": str(results),
            }
            daemon = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.calls",
                "--serve",
                env=env,
                cwd=ROOT,
                stdout=asyncio.subprocess.DEVNULL,
            )
            try:
                health = await _health(api_port, workers)
                pids = [daemon.pid, *(w["pid"] for w in health["workers"])]
                callers = [
                    await asyncio.create_subprocess_exec(
                        "sipp",
                        f"127.0.0.1:{sip_port + i}",
                        "-sf",
                        str(ROOT / "bench" / "scenarios" / "uac_pcma.xml"),
                        "-s",
                        "1000",
                        "-i",
                        "127.0.0.1",
                        "-mi",
                        "127.0.0.1",
                        "-p",
                        str(_free_port(socket.SOCK_DGRAM)),
                        "-mp",
                        str(40000 + 20 * i),
                        "-m",
                        str(CALLS_PER_WORKER),
                        "-l",
                        str(CALLS_PER_WORKER),
                        "-r",
                        str(CALLS_PER_WORKER),
                        "-nostdin",
                        "-timeout",
                        "60s",
                        cwd=directory,
                        stdout=asyncio.subprocess.DEVNULL,
                        stderr=asyncio.subprocess.DEVNULL,
                    )
                    for i in range(workers)
                ]
                await asyncio.sleep(2.0)  # every call answered and streaming
                up = (await _health(api_port, workers))["active_calls"]
                cpu_before = sum(_cpu_seconds(pid) for pid in pids)
                window_start = time.monotonic()
                await asyncio.sleep(4.0)
                window = time.monotonic() - window_start
                cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu_before
                rss = [round(_rss_mib(pid), 1) for pid in pids[1:]]
                supervisor_rss = round(_rss_mib(pids[0]), 1)
                codes = [await c.wait() for c in callers]
            finally:
                daemon.send_signal(signal.SIGTERM)
                await asyncio.wait_for(daemon.wait(), 60)
        lines = results.read_text().splitlines() if results.exists() else []
    rows = [json.loads(line) for line in lines]
    frames = sum(r["frames"] for r in rows)
    expected = sum(r["expected_frames"] for r in rows)
    late = sum(r["late_frames"] for r in rows)
    missing = max(0, expected - frames)
    underruns = sum(r["underruns"] for r in rows)
    bad = (late + missing + underruns) / max(1, expected)
    return {
        "workers": workers,
        "concurrent_calls": calls,
        "calls_up_in_window": up,
        "calls_completed": len(rows),
        "sipp_exit_codes": codes,
        "frames": frames,
        "late_frames": late,
        "missing_frames": missing,
        "playout_underruns": underruns,
        "bad_frame_share": round(bad, 4),
        "cpu_percent_of_one_core": round(100 * cpu / window, 1),
        "cpu_percent_per_call": round(100 * cpu / window / max(1, up), 2),
        "rss_mib_per_worker": rss,
        "rss_mib_supervisor": supervisor_rss,
    }


def _serve() -> int:
    from config import load_settings  # noqa: PLC0415 - only in the daemon process
    from daemon.logs import configure_logging  # noqa: PLC0415
    from daemon.supervisor import Supervisor  # noqa: PLC0415

    loaded = load_settings(None)
    configure_logging(loaded.settings.log.level, loaded.settings.log.format)
    policy = "bench.policies:model_echo"
    return asyncio.run(Supervisor(loaded, inbound_policy=policy).run())


async def _main(levels: list[int]) -> dict[str, Any]:
    assert shutil.which("sipp"), "sipp is missing: apt-get install sip-tester"
    assert PCAP.exists(), f"{PCAP} is missing (package sip-tester)"
    runs = [await run_level(w) for w in levels]
    knee = next((r["concurrent_calls"] for r in runs if r["bad_frame_share"] > KNEE_SHARE), None)
    return {
        "benchmark": "concurrent_calls",
        "cpu_count": os.cpu_count(),
        "mode": "mu-law passthrough to a loopback echo model, 7 s speech per call",
        "levels": runs,
        "knee_concurrent_calls": knee,
        "knee_rule": f"first level with late+missing+underrun frames > {KNEE_SHARE:.1%}",
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4, 8, 12, 16])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return _serve()
    json.dump(asyncio.run(_main(args.workers)), sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
