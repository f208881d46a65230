"""Outbound calls queued far beyond the call slots, to an extension whose phone went silent.

Runs the daemon (``--workers`` SIP workers of 4 slots, ``calls.max_concurrent`` =
``--in-flight``) registered at a Kamailio on loopback. A pjsua2 test phone registers the
extension and is then killed (its binding stays with Kamailio, which forwards every INVITE
to a port where nothing answers; a new phone re-registers before the binding expires).
``--calls`` calls are posted at once with ``--ring-timeout``; the report counts the final
statuses and errors. Every call should end ``no_answer``: pjsua holds each hung-up call's
slot until Kamailio gives up on the silent branch (about 30 s), and a queued call waits for
a slot that is really free.

Run: .venv/bin/python -m bench.slots [--calls 64 --in-flight 64 --workers 2]
Prints one JSON object on stdout, logs on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.report import emit
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.support import DaemonProcess, daemon_env

EXTENSION = "1011"
REREGISTER_SECONDS = 40.0  # the test phone registers for 60 s


async def _vanish(pbx: Kamailio) -> None:
    phone = await TestPhone.start("vanished")
    try:
        await phone.register(pbx, EXTENSION)
    finally:
        await phone.kill()


async def _keep_binding(pbx: Kamailio) -> None:
    while True:
        await asyncio.sleep(REREGISTER_SECONDS)
        await _vanish(pbx)


async def main(calls: int, in_flight: int, workers: int, ring_timeout: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sipai-slots-") as tmp:
        async with running_kamailio(Path(tmp) / "k") as pbx:
            env = daemon_env(Path(tmp))
            env.update(
                SIPAI_SIP__REGISTRAR=pbx.uri,
                SIPAI_SIP__PASSWORD=password("1000"),
                SIPAI_SIP__WORKERS=str(workers),
                SIPAI_CALLS__MAX_CONCURRENT=str(in_flight),
            )
            daemon = DaemonProcess(env, stdout="stderr", stderr="inherit", wait="healthy")
            base = daemon.base_url
            keeper: asyncio.Future[None] | None = None
            try:
                await daemon.start()
                async with httpx.AsyncClient(timeout=10) as client:
                    await _vanish(pbx)
                    keeper = asyncio.ensure_future(_keep_binding(pbx))
                    started = time.monotonic()
                    ids = []
                    for _ in range(calls):
                        body = {
                            "message": "Hello.",
                            "extension": EXTENSION,
                            "ring_timeout": ring_timeout,
                        }
                        ids.append((await client.post(f"{base}/call", json=body)).json()["call_id"])
                    views: dict[str, Any] = {}
                    async with asyncio.timeout(60 + calls * 40 / (4 * workers)):
                        while len(views) < calls:
                            for call_id in ids:
                                if call_id not in views:
                                    view = (await client.get(f"{base}/call/{call_id}")).json()
                                    if view["status"] == "not_found":
                                        views[call_id] = view
                            await asyncio.sleep(0.5)
                    elapsed = time.monotonic() - started
            finally:
                if keeper is not None:
                    keeper.cancel()
                await daemon.stop(timeout=60)
    statuses = collections.Counter(v["call_status"] for v in views.values())
    errors = collections.Counter((v["error"] or "")[:80] for v in views.values() if v["error"])
    return {
        "calls": calls,
        "in_flight": in_flight,
        "slots": 4 * workers,
        "ring_timeout": ring_timeout,
        "statuses": dict(statuses),
        "errors": dict(errors),
        "elapsed_s": round(elapsed, 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="bench.slots")
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--in-flight", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ring-timeout", type=int, default=5)
    args = parser.parse_args()
    sys.exit(
        emit(lambda: asyncio.run(main(args.calls, args.in_flight, args.workers, args.ring_timeout)))
    )
