"""Build the configured speech backends (``[speech] backend``); blocking, run off the loop."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from config.schema import EndOfTurn, EngineSettings, SpeechBackend, SpeechSettings
from daemon.logs import get_logger
from daemon.speech.engine import SpeechError, SpeechToText, TextToSpeech
from daemon.speech.local import PiperSynthesizer, WhisperTranscriber
from daemon.speech.remote import RestAudio, RestSynthesizer, RestTranscriber
from daemon.speech.turn import SmartTurn

log = get_logger(__name__)


def load_speech(settings: SpeechSettings) -> tuple[TextToSpeech, SpeechToText]:
    """The TTS and STT of ``settings``; a missing model or a refused key is a SpeechError."""
    if settings.backend is SpeechBackend.OPENAI:
        api = RestAudio(settings)
        try:
            log.info("speech.remote", url=settings.url, check=api.check())
        except SpeechError:
            api.close()
            raise
        voice = RestSynthesizer(api, settings.tts_model, settings.tts_voice)
        return TextToSpeech(voice, voice.name), SpeechToText(
            RestTranscriber(api, settings.stt_model)
        )
    piper = PiperSynthesizer(Path(settings.voice_model) if settings.voice_model else None)
    whisper = WhisperTranscriber(
        Path(settings.whisper_model) if settings.whisper_model else None, settings.threads
    )
    return TextToSpeech(piper, piper.name), SpeechToText(whisper)


def load_turn_model(settings: EngineSettings) -> SmartTurn | None:
    """The Smart Turn model when ``engine.end_of_turn`` wants it; a SpeechError if absent."""
    if settings.end_of_turn is not EndOfTurn.SMART_TURN:
        return None
    model = SmartTurn()
    started = time.monotonic()
    model.probability(np.zeros(16000, dtype=np.int16))  # the first run is several times slower
    log.info(
        "speech.smart_turn",
        model=str(model.path),
        warm_up_ms=round((time.monotonic() - started) * 1000),
    )
    return model
