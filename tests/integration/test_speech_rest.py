"""The REST audio backends against a real HTTP server with OpenAI's audio endpoints.

The server (tests/peers/openai_audio.py) answers with real speech from Piper and real
transcripts from Whisper, and refuses requests the real API would refuse (fields checked
against the official ``openai`` package's parameter types).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from numpy.typing import NDArray

from config.schema import SpeechSettings
from daemon.calls.choice import ChoiceMatcher, Option
from daemon.speech import SpeechError, SpeechToText, TextToSpeech
from daemon.speech.backends import load_speech
from daemon.speech.local import PiperSynthesizer, WhisperTranscriber
from daemon.speech.remote import RestAudio, RestSynthesizer, RestTranscriber
from media import g711
from tests.peers.openai_audio import OpenAIAudio
from tests.support import free_port


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAIAudio]:
    piper = PiperSynthesizer()
    whisper = WhisperTranscriber()

    def synthesize(text: str) -> tuple[NDArray[np.int16], int]:
        return piper.synthesize(text), piper.rate

    audio = OpenAIAudio(synthesize, whisper.transcribe)
    yield audio
    audio.close()


def _settings(server: OpenAIAudio, **overrides: object) -> SpeechSettings:
    values: dict[str, object] = {
        "backend": "openai",
        "url": server.url,
        "api_key": server.key,
        "tts_model": "gpt-4o-mini-tts",
        "tts_voice": "coral",
        "stt_model": "whisper-1",
    }
    return SpeechSettings.model_validate(values | overrides)


def _words(text: str) -> set[str]:
    return set("".join(c if c.isalnum() else " " for c in text.lower()).split())


async def test_round_trip_through_mu_law(server: OpenAIAudio) -> None:
    """Speech from /audio/speech, over G.711 at 8 kHz, is understood by /audio/transcriptions.

    The requests carry what the API expects: the key, the models, raw PCM asked for, the
    options' words as the transcription prompt, and 16 kHz audio.
    """
    server.seen.clear()
    tts, stt = load_speech(_settings(server))
    try:
        await _round_trip(server, tts, stt)
    finally:
        tts.close()  # one client shared by both: closing twice is harmless
        stt.close()


async def _round_trip(server: OpenAIAudio, tts: TextToSpeech, stt: SpeechToText) -> None:
    options = [Option("confirmed", ("yes", "confirm")), Option("cancelled", ("no", "cancel"))]
    hint = "confirmed, yes, confirm, cancelled, no, cancel"
    audio = await tts.synthesize("Yes, I confirm the appointment.", 8000)
    assert 1.0 < len(audio) / 8000 < 5.0
    heard = await stt.transcribe(g711.ulaw_decode(g711.ulaw_encode(audio)), 8000, hint)
    assert "appointment" in _words(heard), heard
    match = ChoiceMatcher(options).match(heard)
    assert match is not None, heard
    assert match.value == "confirmed"

    (speech,) = server.requests("/v1/audio/speech")
    assert speech.authorization == f"Bearer {server.key}"
    assert speech.fields == {
        "model": "gpt-4o-mini-tts",
        "voice": "coral",
        "input": "Yes, I confirm the appointment.",
        "response_format": "pcm",
    }
    (transcription,) = server.requests("/v1/audio/transcriptions")
    assert transcription.fields == {
        "model": "whisper-1",
        "language": "en",
        "response_format": "json",
        "prompt": hint,
    }
    assert transcription.rate == 16000
    assert transcription.audio is not None
    sent_seconds = len(transcription.audio) / 16000
    assert abs(sent_seconds - (len(audio) / 8000 + 0.5)) < 0.05  # 250 ms pad each side
    # Synthesis is cached by text and rate, like the embedded voice.
    again = await tts.synthesize("Yes, I confirm the appointment.", 8000)
    assert again is audio
    assert len(server.requests("/v1/audio/speech")) == 1


async def test_transient_failures_are_retried(server: OpenAIAudio) -> None:
    """A 503 then a 429 are retried; the third attempt's answer is used."""
    server.seen.clear()
    server.failures[:] = [503, 429]
    api = RestAudio(_settings(server))
    try:
        voice = RestSynthesizer(api, "tts-1", "alloy")
        audio = await TextToSpeech(voice, voice.name).synthesize("Hello there.", 8000)
    finally:
        api.close()
    assert len(audio) > 4000
    assert len(server.requests("/v1/audio/speech")) == 3


def test_refusals_are_clear_errors(server: OpenAIAudio) -> None:
    """A wrong key and a bad request fail at once with the server's own message."""
    server.seen.clear()
    api = RestAudio(_settings(server, api_key="sk-wrong"))
    try:
        with pytest.raises(SpeechError, match=r"audio/speech: HTTP 401: Incorrect API key"):
            RestSynthesizer(api, "tts-1", "alloy").synthesize("Hello.")
        assert len(server.requests("/v1/audio/speech")) == 1  # not retried
        with pytest.raises(SpeechError, match=r"speech\.api_key: .* refused the key"):
            api.check()
    finally:
        api.close()
    server.failures[:] = [400]
    api = RestAudio(_settings(server))
    try:
        with pytest.raises(SpeechError, match=r"transcriptions: HTTP 400: scripted failure"):
            RestTranscriber(api, "whisper-1").transcribe(np.zeros(16000, dtype=np.int16))
        assert api.check() == "key accepted"
    finally:
        api.close()


def test_unreachable_server(server: OpenAIAudio) -> None:
    """Nobody listening: start-up only reports it; a request fails after its retries."""
    api = RestAudio(_settings(server, url=f"http://127.0.0.1:{free_port()}/v1"))
    try:
        assert api.check().startswith("unreachable for now")
        started = time.monotonic()
        with pytest.raises(SpeechError, match=r"/audio/speech: ConnectError"):
            RestSynthesizer(api, "tts-1", "alloy").synthesize("Hello.")
        assert 1.8 < time.monotonic() - started < 10  # paused 0.5 s then 1.5 s
    finally:
        api.close()


def test_start_up_refuses_a_wrong_key(server: OpenAIAudio) -> None:
    with pytest.raises(SpeechError, match=r"speech\.api_key"):
        load_speech(_settings(server, api_key="sk-wrong"))


async def test_a_failed_transcription_is_an_error_not_a_guess(server: OpenAIAudio) -> None:
    """Server errors reach the caller as SpeechError (the call flow then asks again)."""
    server.failures[:] = [500, 500, 500]
    api = RestAudio(_settings(server))
    try:
        with pytest.raises(SpeechError, match="HTTP 500"):
            await SpeechToText(RestTranscriber(api, "whisper-1")).transcribe(
                np.zeros(8000, dtype=np.int16), 8000
            )
    finally:
        api.close()
