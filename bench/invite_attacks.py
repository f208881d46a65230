"""What hostile INVITEs achieve against the daemon (direct mode, the embedded engine).

``python -m bench.invite_attacks [--allow-from 127.0.0.1] [--skip-unacked | --only-unacked]``
starts
``sipai run`` and, from bare UDP user agents on 127.0.0.1 and 127.0.0.2 ("another host"):

- ``scanner_user``: statuses an INVITE for ``sip:100@`` got within 3 s;
- ``other_host``: the same for ``sip:1000@`` from 127.0.0.2;
- ``flood``: statuses of 30 INVITEs for ``sip:100@`` sent at once from one source;
- ``content_length``: statuses of INVITEs whose Content-Length is 40 bytes more or less than
  the body;
- ``unacked``: four INVITEs answered and never ACKed (nor their BYEs): how long a real INVITE
  from 127.0.0.1 kept getting 486, probed every second and CANCELled once it rings;
- ``metrics``: the refusal counters in ``/metrics`` at the end.

``--allow-from`` sets ``sip.allow_from`` (without it, the daemon's default: loopback in direct
mode, which 127.0.0.2 belongs to).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.report import emit
from tests.peers.sip_udp import UdpAgent, sdp
from tests.support import DaemonProcess, daemon_env, workers_up


def _statuses(agent: UdpAgent, call_id: str, seconds: float) -> list[int]:
    seen = []
    for reply in agent.receive(seconds):
        if reply.status and reply.header("Call-ID") == call_id and reply.status not in seen:
            seen.append(reply.status)
    return seen


def _attacks(port: int, unacked: str) -> dict[str, Any]:
    report: dict[str, Any] = {"benchmark": "invite_attacks"}
    if unacked == "only":  # on a fresh daemon: no earlier call holds a slot
        report["unacked"] = _unacked(port)
        return report
    local, other = UdpAgent(port), UdpAgent(port, source="127.0.0.2")
    try:
        call = local.invite(user="100")
        report["scanner_user"] = _statuses(local, call, 3)
        local.cancel(call)
        call = other.invite()
        report["other_host"] = _statuses(other, call, 3)
        other.cancel(call)
        time.sleep(1.5)
        ids = [local.invite(user="100") for _ in range(30)]
        finals = local.finals(ids, 5)
        histogram: dict[str, int] = {}
        for reply in finals.values():
            histogram[str(reply.status)] = histogram.get(str(reply.status), 0) + 1
        report["flood"] = histogram
        for call_id in ids:
            local.cancel(call_id)
        local.receive(1.5)
        body = sdp(local.port + 2)
        lengths: dict[str, list[int]] = {}
        for delta in (40, -40):
            call = local.invite(body=body, content_length=len(body) + delta)
            lengths[f"{delta:+d}"] = _statuses(local, call, 2)
            local.cancel(call)
        report["content_length"] = lengths
        time.sleep(2.5)  # the flood's tokens come back
        if unacked == "yes":
            report["unacked"] = _unacked(port)
    finally:
        local.close()
        other.close()
    return report


def _unacked(port: int) -> dict[str, Any]:
    scanner, caller = UdpAgent(port), UdpAgent(port)
    try:
        ids = [scanner.invite() for _ in range(4)]
        answered = scanner.finals(ids, 10)
        started = time.monotonic()
        busy = 0
        while time.monotonic() - started < 90:
            call = caller.invite()
            statuses = _statuses(caller, call, 1.0)
            if 180 in statuses or 200 in statuses:
                caller.cancel(call)
                caller.receive(0.5)
                break
            busy += 486 in statuses
        return {
            "answered": sorted({r.status for r in answered.values()}),
            "real_call_refused_for_s": round(time.monotonic() - started, 1),
            "probes_refused_486": busy,
        }
    finally:
        scanner.close()
        caller.close()


async def main(allow_from: str, unacked: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sipai-invites-") as tmp:
        env = daemon_env(Path(tmp))
        if allow_from:
            env["SIPAI_SIP__ALLOW_FROM"] = allow_from
        daemon = DaemonProcess(env, stdout="stderr", stderr="inherit", wait=workers_up, timeout=90)
        base = daemon.base_url
        try:
            await daemon.start()
            async with httpx.AsyncClient(timeout=10) as client:
                report = await asyncio.to_thread(_attacks, daemon.sip_port, unacked)
                metrics = (await client.get(f"{base}/metrics")).text
                report["metrics"] = [
                    line for line in metrics.splitlines() if line.startswith("sipai_sip_invites")
                ]
        finally:
            await daemon.stop(timeout=60)
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--allow-from", default="")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--skip-unacked", action="store_true")
    group.add_argument("--only-unacked", action="store_true")
    args = parser.parse_args()
    unacked = "no" if args.skip_unacked else "only" if args.only_unacked else "yes"
    sys.exit(emit(lambda: asyncio.run(main(args.allow_from, unacked))))
