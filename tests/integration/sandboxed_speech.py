"""A child process for the sandbox tests: one job, its result as one JSON line on stdout.

``probe``: can this process map memory writable and executable?
``speech WAV TEXT``: load the daemon's speech stack as the daemon does (``load_speech`` with
the default settings: Piper and Whisper ``tiny.en`` from their packages), transcribe WAV and
synthesise TEXT, timing both. A failure is reported, not raised, so the test can show it.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import sys
import time
from typing import Any

from config.schema import SpeechSettings
from daemon.speech.backends import load_speech
from media.vad import rms_dbfs
from media.wav import read_wav
from tests.sandbox import write_execute_denied


def probe() -> dict[str, Any]:
    try:
        writable_executable = mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC
        mapping = mmap.mmap(-1, mmap.PAGESIZE, prot=writable_executable)
    except OSError as exc:
        return {"mdwe": write_execute_denied(), "wx_mapping": "refused", "errno": exc.errno}
    mapping.close()
    return {"mdwe": write_execute_denied(), "wx_mapping": "allowed", "errno": None}


async def speech(wav: str, text: str) -> dict[str, Any]:
    result: dict[str, Any] = {"mdwe": write_execute_denied()}
    started = time.monotonic()
    tts, stt = load_speech(SpeechSettings())
    result["load_s"] = round(time.monotonic() - started, 3)
    utterance = read_wav(wav)
    result["utterance_s"] = round(len(utterance.samples) / utterance.rate, 3)
    started = time.monotonic()
    try:
        result["heard"] = await stt.transcribe(utterance.samples, utterance.rate)
    except Exception as exc:  # reported to the test, which shows it
        result["stt_error"] = repr(exc)
    result["stt_s"] = round(time.monotonic() - started, 3)
    started = time.monotonic()
    try:
        audio = await tts.synthesize(text, 8000)
        result["tts_audio_s"] = round(len(audio) / 8000, 3)
        result["tts_dbfs"] = round(rms_dbfs(audio), 1)
    except Exception as exc:  # reported to the test, which shows it
        result["tts_error"] = repr(exc)
    result["tts_s"] = round(time.monotonic() - started, 3)
    return result


def main(argv: list[str]) -> int:
    job, *args = argv
    result = probe() if job == "probe" else asyncio.run(speech(*args))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
