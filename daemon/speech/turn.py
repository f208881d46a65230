"""Semantic end of turn: the Smart Turn v3 model, judging whether the caller has finished.

The model (BSD-2, ONNX, about 8 MB) comes from the installed ``pipecat-ai`` distribution,
which ships it as package data; only the file is taken (importing pipecat would pull its
framework). It hears the last 8 s of the caller's speech at 16 kHz as Whisper's 80 log-mel
bands, computed with faster-whisper's own feature extractor, and answers the probability
that the turn is complete: intonation and words, not silence, so "I would like to move my
appointment to Friday." scores near 1 and "So I was wondering if" near 0.

:meth:`SmartTurn.probability` blocks (30-65 ms on one core): async code runs it on the speech
:data:`~daemon.speech.engine.EXECUTOR` through :meth:`SmartTurn.judge`.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from daemon.speech.engine import EXECUTOR, SpeechError

DISTRIBUTION = "pipecat-ai"
MODEL_FILE = "pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"
RATE = 16000
WINDOW_SAMPLES = 8 * RATE  # the model hears the last 8 s
_MISSING = (
    "the Smart Turn model needs the package {package} ({detail}); install it, or set "
    'engine.end_of_turn = "silence"'
)


def model_path(distribution: str = DISTRIBUTION) -> Path:
    """The ONNX file in the installed ``distribution``; a SpeechError naming it if absent."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise SpeechError(_MISSING.format(package=distribution, detail="not installed")) from None
    path = Path(str(dist.locate_file(MODEL_FILE)))
    if not path.is_file():
        raise SpeechError(_MISSING.format(package=distribution, detail=f"no {MODEL_FILE}"))
    return path


class SmartTurn:
    """The model, loaded once per process; thread-safe (onnxruntime sessions are)."""

    def __init__(self, path: Path | None = None) -> None:
        path = path or model_path()
        try:
            import onnxruntime as ort  # noqa: PLC0415 - heavy import, only when used
            from faster_whisper.feature_extractor import FeatureExtractor  # noqa: PLC0415
        except ImportError as exc:
            raise SpeechError(_MISSING.format(package=exc.name or exc, detail=exc)) from exc

        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads = 1  # one core: the other is Whisper's at the same time
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self._session: Any = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # a damaged file: say which
            raise SpeechError(f"the Smart Turn model {path} cannot be loaded: {exc}") from exc
        self._features: Any = FeatureExtractor(feature_size=80, chunk_length=8)
        self.path = path

    def probability(self, pcm16k: NDArray[np.int16]) -> float:
        """How likely the turn that ends ``pcm16k`` (16 kHz) is complete, 0-1; blocking."""
        audio = pcm16k[-WINDOW_SAMPLES:].astype(np.float32) / 32768.0
        if len(audio) < WINDOW_SAMPLES:
            audio = np.concatenate((np.zeros(WINDOW_SAMPLES - len(audio), np.float32), audio))
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        features = self._features(audio, padding=0)[np.newaxis].astype(np.float32)
        (logits,) = self._session.run(["logits"], {"input_features": features})
        return float(logits[0][0])

    async def judge(self, pcm16k: NDArray[np.int16]) -> float:
        """:meth:`probability` on the speech executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(EXECUTOR, self.probability, pcm16k)
