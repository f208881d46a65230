"""The embedded engine's reply latency: end of the caller's speech -> first audio delta.

The engine (receptionist brain, Piper, Whisper tiny.en, the daemon's VAD) runs on a real
Starlette app on loopback, as in the daemon. For each of ``--turns`` sessions a client sends
the greeting request, then a synthesised caller message as mu-law in 20 ms chunks at real
time, then silence, as a phone call would. Per turn:

- ``turn_ms``: the last chunk with speech sent -> the reply's first audio delta received
  (the VAD's silence window of 500 ms, Whisper, the brain, Piper's first sentence, sending);
- ``stt_ms`` and ``tts_ms``: Whisper on the turn and Piper on the reply's first sentence, as
  the engine measured them (``engine.turn`` log); ``vad_ms`` is the configured silence window.

Run: .venv/bin/python -m bench.engine [--turns 10]. Prints one JSON object on stdout; the
engine's log lines go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
import websockets

from bench.report import emit
from media import g711
from media.resample import resample
from tests.integration.test_engine import TOKEN, EngineServer

MESSAGES = [
    "Please call me back tomorrow morning.",
    "This is Anna, my order has not arrived yet.",
    "I would like to move my appointment to Friday.",
    "Can somebody check the heating in room twelve?",
    "Tell Peter the meeting is at three.",
]
SILENCE_MS = 500


def _percentile(values: list[float], q: float) -> float:
    return round(float(np.percentile(values, q)), 1)


async def _turn(server: EngineServer, message: str) -> float:
    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:

        async def until(kind: str) -> dict[str, Any]:
            while True:
                event: dict[str, Any] = json.loads(await ws.recv())
                if event["type"] == kind:
                    return event

        await until("session.created")
        detection = {"type": "server_vad", "silence_duration_ms": SILENCE_MS}
        session = {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await until("session.updated")
        await ws.send(json.dumps({"type": "response.create"}))
        await until("response.done")
        pcm = resample(server.piper.synthesize(message), server.piper.rate, 8000)
        speech = g711.ulaw_encode(pcm).tobytes()
        silence = g711.ulaw_encode(np.zeros(8000 * 3, dtype=np.int16)).tobytes()
        chunks = [speech[i : i + 160] for i in range(0, len(speech), 160)]
        quiet = [silence[i : i + 160] for i in range(0, len(silence), 160)]
        started = time.monotonic()
        ended = 0.0

        async def sender() -> None:
            nonlocal ended
            for n, chunk in enumerate(chunks + quiet):
                await asyncio.sleep(max(0.0, started + n * 0.02 - time.monotonic()))
                audio = base64.b64encode(chunk).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
                if n == len(chunks) - 1:
                    ended = time.monotonic()

        sending = asyncio.create_task(sender())
        await until("response.output_audio.delta")
        first_audio = time.monotonic()
        sending.cancel()
        return (first_audio - ended) * 1000


async def _main(turns: int) -> dict[str, Any]:
    server = EngineServer()
    try:
        await _turn(server, "Hello.")  # warm up: models' first run
        server_turns_before = len(server_turns(server))
        uncached = [t["tts_first_sentence_ms"] for t in server_turns(server)]
        measured = [await _turn(server, MESSAGES[n % len(MESSAGES)]) for n in range(turns)]
        inside = server_turns(server)[server_turns_before:]
    finally:
        server.close()
    stt = [t["stt_ms"] for t in inside]
    tts = [t["tts_first_sentence_ms"] for t in inside]
    p50 = statistics.median(measured)
    return {
        "benchmark": "engine_reply_latency",
        "cpu_count": os.cpu_count(),
        "turns": turns,
        "brain": "receptionist",
        "turn_ms_p50": _percentile(measured, 50),
        "turn_ms_p95": _percentile(measured, 95),
        "vad_silence_ms": SILENCE_MS,
        "stt_ms_p50": _percentile(stt, 50),
        "tts_first_sentence_ms_p50": _percentile(tts, 50),
        # the read-back's first sentence is always "Thank you.": synthesised in the warm-up
        # turn, then served by the synthesis cache
        "tts_first_sentence_ms_uncached": max(uncached, default=None),
        "shares_of_p50": {
            "vad_silence": round(SILENCE_MS / p50, 2),
            "whisper": round(statistics.median(stt) / p50, 2),
            "piper_first_sentence": round(statistics.median(tts) / p50, 2),
        },
    }


def server_turns(server: EngineServer) -> list[dict[str, float]]:
    return list(server.engine.turns)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=10)
    args = parser.parse_args()
    return emit(lambda: asyncio.run(_main(args.turns)))


if __name__ == "__main__":
    sys.exit(main())
