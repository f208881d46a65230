"""The speech interfaces and the one door through which model inference leaves the loop.

Inference is CPU-bound and blocking: every call runs on :data:`EXECUTOR`, a small thread pool
dedicated to speech, so the event loop never blocks on a model, and model threads are bounded
machine-wide (each backend's own thread count comes from ``[speech] threads``).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from daemon.logs import get_logger
from media.resample import Resampler

log = get_logger(__name__)

EXECUTOR = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sipai-speech")
PAD_SAMPLES_16K = 4000  # 250 ms of silence around an utterance


def waiting() -> int:
    """Speech jobs queued on :data:`EXECUTOR` that no worker has taken yet."""
    return EXECUTOR._work_queue.qsize()


class SpeechError(Exception):
    """A speech backend cannot be used (missing model, bad configuration...)."""


class Synthesizer(Protocol):
    """A blocking TTS model: text -> int16 samples at ``rate``."""

    rate: int

    def synthesize(self, text: str) -> NDArray[np.int16]: ...


class Transcriber(Protocol):
    """A blocking STT model: 16 kHz int16 samples -> text; ``hint``: words to expect."""

    def transcribe(self, pcm16k: NDArray[np.int16], hint: str = "") -> str: ...


class TextToSpeech:
    """Synthesis at any call rate, with a bounded cache keyed by (text, rate)."""

    def __init__(self, model: Synthesizer, voice: str, cache_items: int = 256) -> None:
        self._model = model
        self.voice = voice
        self._cache: OrderedDict[tuple[str, int], NDArray[np.int16]] = OrderedDict()
        self._cache_items = cache_items
        self.hits = 0
        self.misses = 0

    async def synthesize(self, text: str, rate: int) -> NDArray[np.int16]:
        key = (text, rate)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self.hits += 1
            return cached
        self.misses += 1
        loop = asyncio.get_running_loop()
        audio = await loop.run_in_executor(EXECUTOR, self._render, text, rate)
        self._cache[key] = audio
        while len(self._cache) > self._cache_items:
            self._cache.popitem(last=False)
        return audio

    def close(self) -> None:
        """Release what the model holds open (a REST backend's connections)."""
        _close(self._model)

    def _render(self, text: str, rate: int) -> NDArray[np.int16]:
        audio = self._model.synthesize(text)
        if self._model.rate == rate:
            return audio
        resampler = Resampler(self._model.rate, rate)
        return np.concatenate((resampler.process(audio), resampler.flush()))


class SpeechToText:
    def __init__(self, model: Transcriber) -> None:
        self._model = model

    async def transcribe(self, pcm: NDArray[np.int16], rate: int, hint: str = "") -> str:
        """The text of ``pcm`` (any supported rate; resampled to 16 kHz).

        ``hint`` lists the words the answer is expected to contain (a choice's options): the
        model is biased towards them, which matters for short answers on telephone audio.
        A model that fails is logged and raised as :class:`SpeechError` saying so.
        """
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(EXECUTOR, self._run, pcm, rate, hint)
        except Exception as exc:
            log.error("speech.transcription_failed", seconds=len(pcm) / rate, error=repr(exc))
            raise SpeechError(f"speech recognition failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        _close(self._model)

    def _run(self, pcm: NDArray[np.int16], rate: int, hint: str) -> str:
        if rate != 16000:
            resampler = Resampler(rate, 16000)
            pcm = np.concatenate((resampler.process(pcm), resampler.flush()))
        # Whisper tends to drop a first word that starts right at the edge of the audio.
        pad = np.zeros(PAD_SAMPLES_16K, dtype=np.int16)
        return self._model.transcribe(np.concatenate((pad, pcm, pad)), hint).strip()


def _close(model: object) -> None:
    close = getattr(model, "close", None)
    if callable(close):
        close()
