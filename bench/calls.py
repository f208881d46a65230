"""Concurrent calls on this machine: knee, CPU per call, RSS and PSS per worker.

For each level of ``--calls`` (default 4, 8, 16, 32, 48 and 64) the daemon (supervisor + one SIP
worker per 4 calls, direct SIP mode) takes that many calls at once from SIPp, which plays
``--seconds`` (default 7) of recorded G.711 speech as RTP into each call (the 7 s recording
shipped with SIPp, played again as often as the duration needs). Every call is bridged with
mu-law passthrough to a fake model on loopback (a WebSocket server in this process that sends
each frame straight back), and the model's audio is played out to the caller. Per level it
reports:

- calls up and completed; 20 ms frames that were late (> 60 ms behind the call's clock when
  they reached the event loop) or missing;
- playout underruns (silent frames while the echo was streaming), split in two: start-up
  underruns, in the first 500 ms after a call's first echoed audio was queued for playout
  (``bench.policies.STARTUP_MS``; the echo's first frames arrive just in time, with nothing
  queued behind them, and the buffer then keeps a frame ahead), and steady-state underruns,
  every one after that;
- ``clean``: every call up in the CPU window and completed, every SIPp exit code 0, and late +
  missing frames + steady-state underruns <= 0.5 % of the expected frames (start-up
  underruns do not count);
- CPU of the supervisor and the workers over a window with every call up (from 2 s after the
  calls start to 1 s before the first ends), per call, in % of one core;
- memory per process: RSS (every resident page the process maps, shared ones included, so
  RSS summed over processes counts the shared libraries once per process) and PSS
  (proportional set size from /proc/PID/smaps_rollup: each shared page divided among the
  processes that map it, so PSS sums to what the daemon really costs), per worker and for the
  supervisor, and the PSS total of the daemon.

The knee is the largest level at which that level and every smaller one measured is clean.
SIPp and the fake model run on the same cores and are not counted in the CPU figures.

Needs sipp (apt-get install sip-tester). Prints one JSON object on stdout, logs on stderr.
The full sweep, on an otherwise idle machine (a few minutes):

    .venv/bin/python -m bench.calls --calls 4 8 16 32 48 64 --seconds 7 > calls.json

A short check of the script itself: ``.venv/bin/python -m bench.calls --calls 4 --seconds 4``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import websockets

from bench.capacity import KNEE_SHARE, STARTUP_MS, is_clean, knee
from bench.report import emit
from tests.support import ROOT, DaemonProcess, free_port, phone_rtp_base, rtp_range

PCAP = Path("/usr/share/sip-tester/g711a.pcap")
PCAP_MS = 7050  # the recording's length (236 RTP packets of 30 ms)
TAIL_MS = 500  # after the speech, before BYE: the echo of the last frames is played
CALLS_PER_WORKER = 4
WARM_UP_SECONDS = 2.0  # calls answered and streaming before the CPU window opens
MIN_SECONDS = 4.0


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _pss_mib(pid: int) -> float:
    """Proportional set size: each shared page counted once, split among its processes."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _sizes(size: Callable[[int], float], pids: list[int]) -> list[float]:
    return [round(size(pid), 1) for pid in pids]


def scenario(directory: Path, seconds: float) -> Path:
    """The SIPp caller with ``seconds`` of speech: the recording played as often as needed."""
    template = (ROOT / "bench" / "scenarios" / "uac_pcma.xml").read_text()
    play = '<nop><action><exec play_pcap_audio="g711a.pcap"/></action></nop>'
    steps = []
    left = round(seconds * 1000)
    while left > 0:
        steps += [play, f'<pause milliseconds="{min(left, PCAP_MS)}"/>']
        left -= PCAP_MS
    steps.append(f'<pause milliseconds="{TAIL_MS}"/>')
    path = directory / "uac_pcma.xml"
    path.write_text(template.replace("<!-- speech -->", "\n  ".join(steps)))
    return path


async def _fake_model(connection: Any) -> None:
    """Send every frame straight back, until the call's side closes."""
    with contextlib.suppress(websockets.ConnectionClosed):
        async for message in connection:
            await connection.send(message)


async def start_sipp(
    target: str, scenario_file: Path, calls: int, sipp_timeout: str, directory: Path
) -> asyncio.subprocess.Process:
    """SIPp placing ``calls`` calls at once to ``target`` with ``scenario_file`` (RTP from a
    test port block), output discarded; the caller waits for its exit code."""
    return await asyncio.create_subprocess_exec(
        "sipp",
        target,
        "-sf",
        str(scenario_file),
        "-s",
        "1000",
        "-i",
        "127.0.0.1",
        "-mi",
        "127.0.0.1",
        "-p",
        str(free_port(socket.SOCK_DGRAM)),
        "-mp",
        str(phone_rtp_base()),
        "-m",
        str(calls),
        "-l",
        str(calls),
        "-r",
        str(calls),
        "-nostdin",
        "-timeout",
        sipp_timeout,
        cwd=directory,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _health(daemon: DaemonProcess, client: httpx.AsyncClient, workers: int) -> dict[str, Any]:
    """/health once every worker is up. ``client`` is made before the calls start: making one
    blocks the event loop for 15-30 ms (TLS context), and the fake model shares that loop."""

    def up(body: dict[str, Any]) -> bool:
        return len(body["workers"]) == workers and all(w["up"] for w in body["workers"])

    body: dict[str, Any] = (await daemon.ready(up, timeout=60, client=client)).json()
    return body


async def run_level(calls: int, seconds: float) -> dict[str, Any]:
    workers = -(-calls // CALLS_PER_WORKER)
    per_worker = [min(CALLS_PER_WORKER, calls - CALLS_PER_WORKER * i) for i in range(workers)]
    with tempfile.TemporaryDirectory(prefix="sipai-bench-") as tmp:
        directory = Path(tmp)
        (directory / "g711a.pcap").symlink_to(PCAP)
        caller = scenario(directory, seconds)
        results = directory / "results.jsonl"
        sip_port = free_port(socket.SOCK_DGRAM, workers)
        api_port = free_port()
        rtp_min, rtp_max = rtp_range(100 * workers)
        async with (
            httpx.AsyncClient() as client,
            websockets.serve(_fake_model, "127.0.0.1", 0, compression=None) as model,
        ):
            model_port = next(iter(model.sockets)).getsockname()[1]
            env = {
                **os.environ,
                "SIPAI_SIP__WORKERS": str(workers),
                "SIPAI_SIP__PORT": str(sip_port),
                "SIPAI_SIP__RTP_PORT_MIN": str(rtp_min),
                "SIPAI_SIP__RTP_PORT_MAX": str(rtp_max),
                "SIPAI_API__PORT": str(api_port),
                "SIPAI_LOG__LEVEL": "warning",
                "SIPAI_LOG__FORMAT": "json",
                "SIPAI_STORAGE__PATH": str(directory / "sipai.db"),
                "SIPAI_BENCH_MODEL_URL": f"ws://127.0.0.1:{model_port}",
                "SIPAI_BENCH_RESULTS": str(results),
            }
            command = [sys.executable, "-m", "bench.calls", "--serve"]
            daemon = DaemonProcess(
                env, command=command, stdout="devnull", stderr="inherit", wait=None
            )
            try:
                await daemon.start()
                health = await _health(daemon, client, workers)
                pids = [daemon.pid, *(w["pid"] for w in health["workers"])]
                callers = [
                    await start_sipp(
                        f"127.0.0.1:{sip_port + i}", caller, n, f"{round(seconds) + 60}s", directory
                    )
                    for i, n in enumerate(per_worker)
                ]
                await asyncio.sleep(WARM_UP_SECONDS)  # every call answered and streaming
                up = (await _health(daemon, client, workers))["active_calls"]
                cpu_before = sum(_cpu_seconds(pid) for pid in pids)
                window_start = time.monotonic()
                await asyncio.sleep(seconds - WARM_UP_SECONDS - 1.0)
                window = time.monotonic() - window_start
                cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu_before
                # Off the loop: reading smaps_rollup takes 10-20 ms per large process, and the
                # fake model shares this loop.
                supervisor_rss, *rss = await asyncio.to_thread(_sizes, _rss_mib, pids)
                supervisor_pss, *pss = await asyncio.to_thread(_sizes, _pss_mib, pids)
                codes = [await c.wait() for c in callers]
            finally:
                await daemon.stop(timeout=60)
        lines = results.read_text().splitlines() if results.exists() else []
    rows = [json.loads(line) for line in lines]
    frames = sum(r["frames"] for r in rows)
    expected = sum(r["expected_frames"] for r in rows)
    late = sum(r["late_frames"] for r in rows)
    missing = max(0, expected - frames)
    startup = sum(r["startup_underruns"] for r in rows)
    steady = sum(r["steady_underruns"] for r in rows)
    bad = (late + missing + steady) / max(1, expected)
    level: dict[str, Any] = {
        "workers": workers,
        "concurrent_calls": calls,
        "calls_up_in_window": up,
        "calls_completed": len(rows),
        "sipp_exit_codes": codes,
        "frames": frames,
        "late_frames": late,
        "missing_frames": missing,
        "playout_underruns_startup": startup,
        "playout_underruns_steady": steady,
        "bad_frame_share": round(bad, 4),
        "cpu_percent_of_one_core": round(100 * cpu / window, 1),
        "cpu_percent_per_call": round(100 * cpu / window / max(1, up), 2),
        "rss_mib_per_worker": rss,
        "pss_mib_per_worker": pss,
        "rss_mib_supervisor": supervisor_rss,
        "pss_mib_supervisor": supervisor_pss,
        "pss_mib_daemon": round(supervisor_pss + sum(pss), 1),
    }
    level["clean"] = is_clean(level)
    return level


def _serve() -> int:
    from config import load_settings  # noqa: PLC0415 - only in the daemon process
    from daemon.logs import configure_logging  # noqa: PLC0415
    from daemon.supervisor import Supervisor  # noqa: PLC0415

    loaded = load_settings(None)
    configure_logging(loaded.settings.log.level, loaded.settings.log.format)
    policy = "bench.policies:model_echo"
    return asyncio.run(Supervisor(loaded, inbound_policy=policy).run())


async def _main(levels: list[int], seconds: float) -> dict[str, Any]:
    assert shutil.which("sipp"), "sipp is missing: apt-get install sip-tester"
    assert PCAP.exists(), f"{PCAP} is missing (package sip-tester)"
    runs = [await run_level(calls, seconds) for calls in sorted(set(levels))]
    return {
        "benchmark": "concurrent_calls",
        "cpu_count": os.cpu_count(),
        "mode": f"mu-law passthrough to a loopback echo model, {seconds:g} s speech per call",
        "call_seconds": seconds,
        "levels": runs,
        "knee_concurrent_calls": knee(runs),
        "knee_rule": "largest level that is clean, with every smaller level clean too",
        "clean_rule": (
            "every call up and completed, SIPp exit 0, and late + missing frames + steady-state"
            f" underruns <= {KNEE_SHARE:.1%} of the expected frames"
        ),
        "startup_rule": (
            f"underruns in the first {STARTUP_MS:g} ms after a call's first echoed audio was"
            " queued for playout are start-up underruns (not counted against clean); every"
            " later one is a steady-state underrun"
        ),
        "pss_rule": "PSS from /proc/PID/smaps_rollup: shared pages split among their processes",
    }


def _seconds(text: str) -> float:
    value = float(text)
    if value < MIN_SECONDS:
        raise argparse.ArgumentTypeError(f"at least {MIN_SECONDS:g} s (the CPU window needs it)")
    return value


def main() -> int:
    parser = argparse.ArgumentParser(description="Concurrent calls: knee, CPU, RSS and PSS.")
    parser.add_argument(
        "--calls",
        type=int,
        nargs="+",
        default=[4, 8, 16, 32, 48, 64],
        help="levels: concurrent calls (one worker per 4 calls)",
    )
    parser.add_argument(
        "--seconds", type=_seconds, default=7.0, help="speech per call, at least 4 s"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        return _serve()
    return emit(lambda: asyncio.run(_main(args.calls, args.seconds)))


if __name__ == "__main__":
    sys.exit(main())
