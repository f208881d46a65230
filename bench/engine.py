"""The embedded engine's reply latency and its end of turn on mid-sentence pauses.

The engine (receptionist brain, Piper, Whisper tiny.en, the daemon's VAD, the Smart Turn
model) runs on a real Starlette app on loopback, as in the daemon. A client sends Piper's
speech as 8 kHz mu-law in 20 ms chunks at real time, then silence, as a phone call would.

Reply latency (``--turns`` sessions, ``end_of_turn = "smart_turn"``, the session's
``silence_duration_ms`` 500): each session asks for the greeting, then speaks one complete
message. Per turn:

- ``voiced_end_to_audio_ms``: the chunk holding the caller's last voiced sample (by its
  energy) sent -> the reply's first audio delta received;
- ``turn_ms`` (the measure of earlier versions): the last chunk of Piper's buffer sent (it
  ends in Piper's trailing silence, some 100-200 ms after the voice) -> the first audio delta;
- ``stt_final_pass_ms``: the end-of-turn decision -> the transcript (the transcription started
  at the caller's pause runs on meanwhile); ``smart_turn_ms``: one Smart Turn inference;
  ``ended_by_smart_turn``: the share of turns the model ended before the silence window.

Mid-sentence pauses (``--pauses`` utterances of ``tests.integration.test_engine_turns``:
hesitations such as "I would like to, um, move my appointment to Friday." with 1-2 pauses of
300-800 ms spliced into one synthesis): the share of premature replies (first audio before
the caller's last word), for ``smart_turn`` and, as the reference, ``silence``. Both modes
use ``silence_duration_ms`` 1000 there, longer than any pause, since with a window shorter
than a pause any engine replies at it.

Run: .venv/bin/python -m bench.engine [--turns 10] [--pauses 10]. Prints one JSON object on
stdout; the engine's log lines go to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
from typing import Any

import numpy as np

from bench.report import emit
from config.schema import EngineSettings
from daemon.engine.turns import TurnPolicy
from daemon.speech.backends import load_turn_model
from tests.integration.test_engine import EngineServer
from tests.integration.test_engine_turns import (
    PAUSE_SET,
    Exchange,
    converse,
    telephone,
    with_pauses,
)

MESSAGES = [
    "Please call me back tomorrow morning.",
    "This is Anna, my order has not arrived yet.",
    "I would like to move my appointment to Friday.",
    "Can somebody check the heating in room twelve?",
    "Tell Peter the meeting is at three.",
]
SILENCE_MS = 500
PAUSE_SILENCE_MS = 1000  # above the longest pause of the set (800 ms)


def _percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def _premature(exchanges: list[Exchange]) -> dict[str, Any]:
    replies = [e.reply_ms for e in exchanges if e.first_audio is not None and not e.premature]
    early = sum(e.premature for e in exchanges)
    return {
        "premature_replies": early,
        "premature_rate": round(early / len(exchanges), 2),
        "unanswered": sum(e.first_audio is None for e in exchanges),
        "voiced_end_to_audio_ms_p50": _percentile(replies, 50),
    }


async def _pause_set(server: EngineServer, count: int, policy: TurnPolicy) -> dict[str, Any]:
    utterances = [PAUSE_SET[n % len(PAUSE_SET)] for n in range(count)]
    audio = [with_pauses(telephone(server.piper, text), pauses) for text, pauses in utterances]
    results: dict[str, Any] = {}
    for mode, turn_policy in (("smart_turn", policy), ("silence", TurnPolicy())):
        server.engine.turn_policy = turn_policy
        exchanges = [
            await converse(server, pcm, PAUSE_SILENCE_MS, greet=False, after_s=2.0) for pcm in audio
        ]
        results[mode] = _premature(exchanges)
        results[mode]["premature"] = [
            text for (text, _), e in zip(utterances, exchanges, strict=True) if e.premature
        ]
    return {
        "utterances": count,
        "pauses_ms": [list(pauses) for _, pauses in utterances],
        "silence_duration_ms": PAUSE_SILENCE_MS,
        "silence_duration_note": "both modes; above the longest pause, else any engine replies",
        **results,
    }


async def _main(turns: int, pauses: int) -> dict[str, Any]:
    settings = EngineSettings()
    server = EngineServer()
    try:
        model = load_turn_model(settings)
        policy = TurnPolicy(model, settings.turn_pause_ms, settings.turn_threshold)
        server.engine.turn_policy = policy
        await converse(server, telephone(server.piper, "Hello."), SILENCE_MS)  # warm up
        uncached = [t["tts_first_sentence_ms"] for t in server.engine.turns]
        before = len(server.engine.turns)
        measured = [
            await converse(server, telephone(server.piper, MESSAGES[n % len(MESSAGES)]), SILENCE_MS)
            for n in range(turns)
        ]
        inside = list(server.engine.turns)[before:]
        pause_set = await _pause_set(server, pauses, policy) if pauses else None
    finally:
        server.close()
    voiced = [e.reply_ms for e in measured]
    buffered = [e.buffer_reply_ms for e in measured]
    stt = [t["stt_ms"] for t in inside]
    tts = [t["tts_first_sentence_ms"] for t in inside]
    p50 = statistics.median(voiced)
    return {
        "benchmark": "engine_reply_latency",
        "cpu_count": os.cpu_count(),
        "turns": turns,
        "brain": "receptionist",
        "end_of_turn": settings.end_of_turn.value,
        "turn_pause_ms": settings.turn_pause_ms,
        "turn_threshold": settings.turn_threshold,
        "vad_silence_ms": SILENCE_MS,
        "voiced_end_to_audio_ms_p50": _percentile(voiced, 50),
        "voiced_end_to_audio_ms_p95": _percentile(voiced, 95),
        "turn_ms_p50": _percentile(buffered, 50),
        "turn_ms_p95": _percentile(buffered, 95),
        "premature_replies": sum(e.premature for e in measured),
        "ended_by_smart_turn": round(
            sum(t["smart_turn_end"] for t in inside) / max(1, len(inside)), 2
        ),
        "stt_reused": round(sum(t["stt_reused"] for t in inside) / max(1, len(inside)), 2),
        "stt_final_pass_ms_p50": _percentile(stt, 50),
        "stt_final_pass_ms_p95": _percentile(stt, 95),
        "smart_turn_ms_p50": _percentile([t["smart_turn_ms"] for t in inside], 50),
        "smart_turn_ms_p95": _percentile([t["smart_turn_ms"] for t in inside], 95),
        "tts_first_sentence_ms_p50": _percentile(tts, 50),
        # the read-back's first sentence is always "Thank you.": synthesised in the warm-up
        # turn, then served by the synthesis cache
        "tts_first_sentence_ms_uncached": max(uncached, default=None),
        "shares_of_p50": {
            "whisper_final_pass": round(statistics.median(stt) / p50, 2),
            "piper_first_sentence": round(statistics.median(tts) / p50, 2),
        },
        "mid_sentence_pauses": pause_set,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--pauses", type=int, default=10, help="utterances with pauses")
    args = parser.parse_args()
    return emit(lambda: asyncio.run(_main(args.turns, args.pauses)))


if __name__ == "__main__":
    sys.exit(main())
