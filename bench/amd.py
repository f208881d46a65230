"""Answering-machine detection: accuracy and decision times over the synthesised pick-ups.

Builds the 36 labelled cases of ``tests/support/amd_cases.py`` (humans saying hello in Piper
and espeak-ng voices, voicemail greetings with and without a beep, a beep alone, silence and
noise; all at 8 kHz through G.711 mu-law) and runs the detector on each with the ``[amd]``
defaults, frame by frame. Prints ``amd_accuracy`` (share labelled right), ``amd_cases``,
accuracy per voice family, ``amd_human_decision_ms`` and ``amd_machine_decision_ms``
(stream time from the answer to the decision: p50/max/min over the cases decided right),
``amd_greeting_end_after_beep_ms`` (where a voicemail message starts, after the beep's end),
the highest beep purity a speech frame reached and the longest run of tonal speech frames
(a beep needs ``beep_purity`` held for ``beep_min_ms``, 10 frames), the cases labelled
wrong, the same figures with Asterisk's own ``max_words`` 2 and
``after_greeting_silence_ms`` 800, and the detector's cost per frame.

Run: .venv/bin/python -m bench.amd   (needs espeak-ng and the Piper voice; a few seconds).
Prints one JSON object on stdout, logs on stderr.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

from bench.report import emit
from media.amd import AmdParameters, AnsweringMachineDetector
from tests.support.amd_cases import RATE, amd_cases, evaluate


def frame_cost_us() -> float:
    """Microseconds of CPU per 20 ms frame, over every case's audio."""
    frames = 0
    started = time.process_time()
    for case in amd_cases():
        detector = AnsweringMachineDetector(RATE, AmdParameters(total_analysis_ms=30000))
        step = RATE // 50
        for start in range(0, len(case.pcm) - step + 1, step):
            detector.process(case.pcm[start : start + step])
            frames += 1
    return round((time.process_time() - started) / frames * 1e6, 1)


def figures() -> dict[str, Any]:
    amd_cases()  # synthesis first, outside the timings
    report, _ = evaluate(AmdParameters())
    asterisk, _ = evaluate(AmdParameters(max_words=2, after_greeting_silence_ms=800))
    report["amd_with_asterisk_defaults"] = {
        key: asterisk[key] for key in ("amd_accuracy", "amd_human_decision_ms", "amd_wrong")
    }
    report["amd_frame_cost_us"] = frame_cost_us()
    return report


def main() -> dict[str, Any]:
    return {"benchmark": "amd", "numpy": np.__version__, **figures()}


if __name__ == "__main__":
    sys.exit(emit(main))
