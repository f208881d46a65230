"""Build the configured speech backends (``[speech] backend``); blocking, run off the loop."""

from __future__ import annotations

from pathlib import Path

from config.schema import SpeechBackend, SpeechSettings
from daemon.logs import get_logger
from daemon.speech.engine import SpeechError, SpeechToText, TextToSpeech
from daemon.speech.local import PiperSynthesizer, WhisperTranscriber
from daemon.speech.remote import RestAudio, RestSynthesizer, RestTranscriber

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
