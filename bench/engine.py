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
  ``ended_by_smart_turn``: the share of turns the model ended before the silence window;
  ``transcript_from_pause_pass``: the share whose transcript came from a pass started at a
  pause (the rest were transcribed after the end of turn), ``pause_pass_lead_ms``: how long
  before the end of turn that pass started; ``stt_passes_per_turn``: Whisper passes run.

Mid-sentence pauses (``--pauses`` utterances of ``tests.integration.test_engine_turns``,
1-2 pauses of 300-800 ms spliced into one synthesis; half pause around a filler or after a
word no turn ends on, such as "I would like to, um, move my appointment to Friday.", half
after content words, such as "We need two more chairs, in the conference room."): the share
of premature replies, for ``smart_turn`` and, as the reference, ``silence``. A reply is
premature when its first audio starts before the caller's last word, or when the utterance
was split into more than one turn. ``smart_turn`` counts it twice: with the word check (the
engine as it runs), and for the model alone (a verdict of "complete" at a pause inside the
utterance that only the word check vetoed counts as premature too). Both modes use
``silence_duration_ms`` 1000 there, longer than any pause, since with a window shorter than
a pause any engine replies at it.

Run: .venv/bin/python -m bench.engine [--turns 10] [--pauses 22] (about 4 min). Prints one
JSON object on stdout; the engine's log lines go to stderr.
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
    last_voiced_sample,
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


def _split(exchange: Exchange) -> bool:
    """The utterance became more than one turn (one was ended at a pause)."""
    return len(exchange.of_type("input_audio_buffer.committed")) > 1


def _model_alone_early(turns: list[dict[str, float]], last_word_ms: float) -> bool:
    """Smart Turn found a pause before the last word complete; only the word check kept the
    turn going."""
    return any(0 <= t["first_word_veto_ms"] < last_word_ms - 150 for t in turns)


def _premature(
    texts: list[str], exchanges: list[Exchange], early: list[bool] | None = None
) -> dict[str, Any]:
    bad = [e.premature or _split(e) for e in exchanges]
    replies = [e.reply_ms for e, b in zip(exchanges, bad, strict=True) if e.first_audio and not b]
    report: dict[str, Any] = {
        "premature_replies": sum(bad),
        "of_which_split_turns": sum(_split(e) for e in exchanges),
        "premature_rate": round(sum(bad) / len(exchanges), 2),
        "unanswered": sum(e.first_audio is None for e in exchanges),
        "voiced_end_to_audio_ms_p50": _percentile(replies, 50),
        "premature": [t for t, b in zip(texts, bad, strict=True) if b],
    }
    if early is not None:
        alone = [b or e for b, e in zip(bad, early, strict=True)]
        report["model_alone_premature_rate"] = round(sum(alone) / len(exchanges), 2)
        report["model_alone_premature"] = [t for t, a in zip(texts, alone, strict=True) if a]
    return report


async def _pause_set(server: EngineServer, count: int, policy: TurnPolicy) -> dict[str, Any]:
    utterances = [PAUSE_SET[n % len(PAUSE_SET)] for n in range(count)]
    texts = [text for text, _ in utterances]
    audio = [with_pauses(telephone(server.piper, text), pauses) for text, pauses in utterances]
    results: dict[str, Any] = {}
    for mode, turn_policy in (("smart_turn", policy), ("silence", TurnPolicy())):
        server.engine.turn_policy = turn_policy
        exchanges, early = [], []
        model_vetoes = word_vetoes = 0.0
        for pcm in audio:
            before = len(server.engine.turns)
            exchanges.append(
                await converse(server, pcm, PAUSE_SILENCE_MS, greet=False, after_s=2.0)
            )
            turns = list(server.engine.turns)[before:]
            early.append(_model_alone_early(turns, last_voiced_sample(pcm) / 8))
            model_vetoes += sum(t["model_vetoes"] for t in turns)
            word_vetoes += sum(t["word_vetoes"] for t in turns)
        results[mode] = _premature(texts, exchanges, early if mode == "smart_turn" else None)
        if mode == "smart_turn":
            results[mode]["pauses_the_model_found_unfinished"] = int(model_vetoes)
            results[mode]["pauses_only_the_word_check_kept_open"] = int(word_vetoes)
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
        "transcript_from_pause_pass": round(
            sum(t["stt_from_pause_pass"] for t in inside) / max(1, len(inside)), 2
        ),
        "pause_pass_lead_ms_p50": _percentile(
            [t["stt_pass_lead_ms"] for t in inside if t["stt_from_pause_pass"]], 50
        ),
        "stt_passes_per_turn": round(sum(t["stt_passes"] for t in inside) / max(1, len(inside)), 2),
        "split_turns": sum(_split(e) for e in measured),
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
    parser.add_argument("--pauses", type=int, default=len(PAUSE_SET), help="utterances with pauses")
    args = parser.parse_args()
    return emit(lambda: asyncio.run(_main(args.turns, args.pauses)))


if __name__ == "__main__":
    sys.exit(main())
