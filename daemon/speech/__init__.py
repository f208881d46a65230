"""Speech: text-to-speech and speech-to-text backends, loaded once, used off the event loop."""

from daemon.speech.engine import SpeechError, SpeechToText, TextToSpeech

__all__ = ["SpeechError", "SpeechToText", "TextToSpeech"]
