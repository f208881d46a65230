"""The realtime bridge of inbound calls: daemon-added latency each way, barge-in stop, CPU.

One SIP worker takes 4 calls at once from SIPp (7 s of G.711 speech each, RTP on loopback).
Each call is answered by the real inbound agent (``daemon/calls/inbound.py``) talking the
realtime protocol (GA, JSON + base64) to a fake model in this process that says back what it
hears: every 400 ms of caller audio it sends the first 300 ms of it as one audio item (so the
line is quiet for 100 ms before each item, as between a model's turns). Three runs:

- ``reference``: the same calls bridged by ``bench.policies:model_echo`` (raw bytes to an echo
  socket, no protocol, no codec work beyond mu-law) - the floor a bridge can cost here;
- ``pcmu``: the agent with mu-law passthrough (no resampling);
- ``pcm24``: the agent with 16-bit PCM at 24 kHz both ways (resampling 8k <-> 24k).

Per agent run, from the daemon's own ``agent.latency`` log lines (one per call):
- uplink: caller frame handed over by pjmedia (``onFrameReceived``) -> its bytes written to
  the model socket, p50/p99 over every frame (``uplink_batch_ms`` = 20);
- downlink: model delta received -> its first frame handed to pjmedia (``onFrameRequested``),
  p50/p99 over the deltas that found nothing queued ahead of them (a model sending ahead of
  real time queues audio; that wait is not the daemon's); the wait for the next 20 ms clock
  tick is in this figure, as the caller hears it;
and CPU of the supervisor + worker per call (% of one core) with its ratio to ``reference``.
A fourth run, ``barge_in``, has the fake start a 5 s reply on each call and send
``input_audio_buffer.speech_started`` 1.5 s later: the daemon logs, per barge-in, the time
from the event's arrival to the playout buffer's flush carried out by the media clock (the
caller hears silence from the next frame on); p50/max over the calls.

Run: .venv/bin/python -m bench.bridge   (needs sipp and kamailio). Prints one JSON object on
stdout, logs on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import websockets

from bench.calls import PCAP, _cpu_seconds, _fake_model, _health, scenario, start_sipp
from bench.report import emit
from tests.support import DaemonProcess, free_port, rtp_range

CALLS = 4
SPEECH_SECONDS = 7.0
ECHO_EVERY = 20  # appends of 20 ms: an item every 400 ms...
ECHO_SAID = 15  # ...carrying the first 300 ms of them


async def _echo_realtime(connection: Any) -> None:
    """A realtime server that says back whatever it hears, as one endless response."""
    await _realtime(connection, barge_in=False)


async def _barge_in_realtime(connection: Any) -> None:
    """A 5 s reply, then the caller "speaks" over it 1.5 s later."""
    await _realtime(connection, barge_in=True)


async def _realtime(connection: Any, barge_in: bool) -> None:
    events = iter(range(1, 10**9))
    tasks: set[asyncio.Task[None]] = set()
    heard: list[bytes] = []
    items = iter(range(1, 10**9))

    async def send(event: dict[str, Any]) -> None:
        await connection.send(json.dumps({"event_id": f"e{next(events)}", **event}))

    try:
        await send({"type": "session.created", "session": {"type": "realtime"}})
        started = False
        async for message in connection:
            event = json.loads(message)
            kind = event.get("type")
            if kind == "session.update":
                await send({"type": "session.updated", "session": event["session"]})
            elif kind == "input_audio_buffer.append":
                if not started:
                    started = True
                    response = {"id": "r1", "object": "realtime.response", "status": "in_progress"}
                    await send({"type": "response.created", "response": response})
                    if barge_in:
                        tasks.add(asyncio.create_task(_reply_then_barge_in(send)))
                if barge_in:
                    continue
                heard.append(base64.b64decode(event["audio"]))
                if len(heard) < ECHO_EVERY:
                    continue
                item = f"i{next(items)}"
                said = b"".join(heard[:ECHO_SAID])
                heard.clear()
                where = {"response_id": "r1", "item_id": item, "output_index": 0}
                await send(
                    {
                        "type": "response.output_audio.delta",
                        **where,
                        "content_index": 0,
                        "delta": base64.b64encode(said).decode(),
                    }
                )
                await send({"type": "response.output_audio.done", **where, "content_index": 0})
    except websockets.ConnectionClosed:
        pass


async def _reply_then_barge_in(send: Any) -> None:
    tone = base64.b64encode(bytes([0x1E, 0x9E] * 400)).decode()  # 100 ms of mu-law, loud
    with contextlib.suppress(websockets.ConnectionClosed):
        for _ in range(50):
            await send(
                {
                    "type": "response.output_audio.delta",
                    "response_id": "r1",
                    "item_id": "i1",
                    "output_index": 0,
                    "content_index": 0,
                    "delta": tone,
                }
            )
        await asyncio.sleep(1.5)
        await send(
            {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "u1"}
        )


async def run(mode: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sipai-bridge-") as tmp:
        directory = Path(tmp)
        (directory / "g711a.pcap").symlink_to(PCAP)
        sip_port = free_port(socket.SOCK_DGRAM)
        api_port = free_port()
        rtp_min, rtp_max = rtp_range(100)
        handler = {"reference": _fake_model, "barge_in": _barge_in_realtime}.get(
            mode, _echo_realtime
        )
        async with (
            httpx.AsyncClient() as client,
            websockets.serve(handler, "127.0.0.1", 0, compression=None) as model,
        ):
            model_port = next(iter(model.sockets)).getsockname()[1]
            fmt = "pcm24" if mode == "pcm24" else "pcmu"
            env = {
                **os.environ,
                "SIPAI_SIP__PORT": str(sip_port),
                "SIPAI_SIP__RTP_PORT_MIN": str(rtp_min),
                "SIPAI_SIP__RTP_PORT_MAX": str(rtp_max),
                "SIPAI_API__PORT": str(api_port),
                "SIPAI_LOG__LEVEL": "info",
                "SIPAI_LOG__FORMAT": "json",
                "SIPAI_STORAGE__PATH": str(directory / "sipai.db"),
                "SIPAI_BENCH_MODEL_URL": f"ws://127.0.0.1:{model_port}",
                "SIPAI_BENCH_RESULTS": str(directory / "results.jsonl"),
                "SIPAI_AGENT__BACKEND": "url",
                "SIPAI_AGENT__URL": f"ws://127.0.0.1:{model_port}/v1/realtime",
                "SIPAI_AGENT__GREETING": "",
                "SIPAI_AGENT__TRANSCRIPTION_MODEL": "",
                "SIPAI_AGENT__UPLINK_BATCH_MS": "20",
                "SIPAI_AGENT__INPUT_FORMAT": fmt,
                "SIPAI_AGENT__OUTPUT_FORMAT": fmt,
            }
            command = (
                ["-m", "bench.bridge", "--serve-reference"]
                if mode == "reference"
                else [
                    "-m",
                    "daemon.cli",
                    "run",
                ]
            )
            log_path = directory / "daemon.log"
            daemon = DaemonProcess(
                env, command=[sys.executable, *command], stderr="inherit", log=log_path, wait=None
            )
            try:
                await daemon.start()
                health = await _health(daemon, client, 1)
                pids = [daemon.pid, *(w["pid"] for w in health["workers"])]
                caller = await start_sipp(
                    f"127.0.0.1:{sip_port}",
                    scenario(directory, SPEECH_SECONDS),
                    CALLS,
                    "60s",
                    directory,
                )
                await asyncio.sleep(2.0)
                up = (await _health(daemon, client, 1))["active_calls"]
                cpu_before = sum(_cpu_seconds(pid) for pid in pids)
                window_start = time.monotonic()
                await asyncio.sleep(4.0)
                window = time.monotonic() - window_start
                cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu_before
                code = await caller.wait()
                await asyncio.sleep(1.0)  # the calls' summaries are logged
            finally:
                await daemon.stop(timeout=60)
            lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
    result: dict[str, Any] = {
        "mode": mode,
        "calls_up_in_window": up,
        "sipp_exit_code": code,
        "cpu_percent_per_call": round(100 * cpu / window / max(1, up), 2),
    }
    latency = [x for x in lines if x.get("event") == "agent.latency"]
    if latency:
        result["calls_measured"] = len(latency)
        for key in ("uplink_p50_ms", "uplink_p99_ms", "downlink_p50_ms", "downlink_p99_ms"):
            values = [x[key] for x in latency if x.get(key) is not None]
            result[key] = (
                round(max(values), 2) if "p99" in key else round(statistics.median(values), 2)
            )
        result["playout_underruns"] = sum(x.get("underruns", 0) for x in latency)
    stops = [x["stop_ms"] for x in lines if x.get("event") == "agent.barge_in"]
    if mode == "barge_in":
        result["barge_ins"] = len(stops)
        result["stop_ms_p50"] = round(statistics.median(stops), 2) if stops else None
        result["stop_ms_max"] = round(max(stops), 2) if stops else None
    return result


def _serve_reference() -> int:
    from config import load_settings  # noqa: PLC0415 - only in the daemon process
    from daemon.logs import configure_logging  # noqa: PLC0415
    from daemon.supervisor import Supervisor  # noqa: PLC0415

    loaded = load_settings(None)
    configure_logging(loaded.settings.log.level, loaded.settings.log.format)
    return asyncio.run(Supervisor(loaded, inbound_policy="bench.policies:model_echo").run())


async def _main() -> dict[str, Any]:
    runs = [await run(mode) for mode in ("reference", "pcmu", "pcm24", "barge_in")]
    reference = runs[0]["cpu_percent_per_call"]
    for r in runs[1:3]:
        r["cpu_ratio_to_reference"] = round(r["cpu_percent_per_call"] / max(reference, 0.01), 2)
    return {
        "benchmark": "realtime_bridge",
        "cpu_count": os.cpu_count(),
        "calls": CALLS,
        "runs": runs,
        "budget": "daemon-added latency <= 10 ms p99 beyond the 20 ms frame, each way",
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-reference", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_reference:
        return _serve_reference()
    return emit(lambda: asyncio.run(_main()))


if __name__ == "__main__":
    sys.exit(main())
