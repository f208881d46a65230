"""Inbound policies used by benchmarks (loaded by SIP worker processes by dotted path)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time

import numpy as np
import websockets

from bench.capacity import UnderrunLog
from daemon.legs.leg import CallLeg
from media import g711

LATE_MS = 60.0  # an uplink frame this much behind the call's own 20 ms clock counts as late


async def model_echo(leg: CallLeg) -> None:
    """Answer; send caller audio as mu-law to the fake model; play what it sends back.

    Writes one JSON line per call to $SIPAI_BENCH_RESULTS: frames, late and missing uplink
    frames, playout underruns (all, and those of the start-up: read at every uplink frame
    until ``bench.capacity.STARTUP_MS`` after the first echoed audio was queued), and when the
    first underruns happened (ms after the first echoed audio).
    """
    await leg.answer()
    audio = await leg.media()
    url = os.environ["SIPAI_BENCH_MODEL_URL"]
    frames = late = 0
    started: float | None = None
    first_echo: float | None = None  # when the first echoed audio was queued for playout
    underruns = UnderrunLog()
    async with websockets.connect(url, max_size=None, compression=None) as model:

        async def downlink() -> None:
            nonlocal first_echo
            async for message in model:
                pcm = g711.ulaw_decode(message if isinstance(message, bytes) else b"")
                audio.playout.push("model", pcm)
                if first_echo is None:
                    first_echo = time.monotonic()

        receiving = asyncio.create_task(downlink())
        try:
            async for frame in audio.frames():
                now = time.monotonic()
                if started is None:
                    started = now
                frames += 1
                due = started + (frames - 1) * 0.020
                if (now - due) * 1000 > LATE_MS:
                    late += 1
                if first_echo is not None:
                    underruns.sample((now - first_echo) * 1000, audio.playout.stats().underruns)
                await model.send(g711.ulaw_encode(np.frombuffer(frame, dtype="<i2")).tobytes())
        finally:
            receiving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await receiving
    elapsed = time.monotonic() - started if started is not None else 0.0
    final_underruns = audio.playout.stats().underruns
    result = {
        "call": leg.info.key,  # "w<worker>-<n>"
        "frames": frames,
        "expected_frames": round(elapsed / 0.020),
        "late_frames": late,
        "underruns": final_underruns,
        "startup_underruns": underruns.startup,
        "steady_underruns": final_underruns - underruns.startup,
        "underrun_ms": underruns.times_ms,
        "uplink_dropped": audio.uplink_dropped,
    }
    await asyncio.to_thread(_append, os.environ["SIPAI_BENCH_RESULTS"], json.dumps(result))


def _append(path: str, line: str) -> None:
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")
