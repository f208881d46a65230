"""The REST audio backends: OpenAI's ``/audio/speech`` and ``/audio/transcriptions``.

Any server offering the same two endpoints works (``[speech] url``). The calls are blocking
and run on the speech executor like the embedded models. A request that fails for a reason
that may pass (connection error, timeout, 429, 5xx) is retried twice after a short pause;
anything else is a :class:`SpeechError` carrying the server's own message.
"""

from __future__ import annotations

import io
import time
from typing import Any

import httpx
import numpy as np
from numpy.typing import NDArray

from config.schema import SpeechSettings
from daemon.speech.engine import SpeechError
from media.wav import write_wav

# OpenAI's "pcm" response format: raw 16-bit little-endian mono at 24 kHz.
PCM_RATE = 24000
RETRY_PAUSES = (0.5, 1.5)
TRANSIENT = frozenset({408, 409, 429, 500, 502, 503, 504})


class RestAudio:
    """An HTTP client for one REST audio API, shared by the synthesizer and the transcriber."""

    def __init__(self, settings: SpeechSettings, transport: httpx.BaseTransport | None = None):
        self.base = settings.url
        self._client = httpx.Client(
            base_url=settings.url,
            headers={"Authorization": f"Bearer {settings.api_key.get_secret_value()}"},
            timeout=httpx.Timeout(settings.timeout_seconds, connect=5.0),
            transport=transport,
        )

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        """POST with retries; a non-2xx answer or no answer at all is a SpeechError."""
        for pause in (*RETRY_PAUSES, None):
            try:
                response = self._client.post(path, **kwargs)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                if pause is None:
                    raise SpeechError(f"{self.base}{path}: {problem}") from None
            else:
                if response.is_success:
                    return response
                problem = f"HTTP {response.status_code}: {_error_message(response)}"
                if response.status_code not in TRANSIENT or pause is None:
                    raise SpeechError(f"{self.base}{path}: {problem}")
            time.sleep(pause)
        raise AssertionError("unreachable")

    def check(self) -> str:
        """At start-up: a refused key is a SpeechError; being unreachable is only reported.

        Returns what was found, for the log. ``GET /models`` needs the key but costs nothing.
        """
        try:
            response = self._client.get("/models")
        except httpx.HTTPError as exc:
            return f"unreachable for now ({type(exc).__name__}: {exc}); calls will retry"
        if response.status_code in (401, 403):
            raise SpeechError(
                f"speech.api_key: {self.base} refused the key "
                f"(HTTP {response.status_code}: {_error_message(response)})"
            )
        if response.is_success:
            return "key accepted"
        return f"GET /models answered HTTP {response.status_code}; key not verified"

    def close(self) -> None:
        self._client.close()


def _error_message(response: httpx.Response) -> str:
    """The ``error.message`` of an OpenAI-style error body, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("detail"):
            return str(body["detail"])
    return response.text[:200]


class RestSynthesizer:
    """Text -> 24 kHz speech through ``POST /audio/speech``."""

    rate = PCM_RATE

    def __init__(self, api: RestAudio, model: str, voice: str) -> None:
        self._api = api
        self._model = model
        self._voice = voice
        self.name = f"{model}/{voice}"

    def synthesize(self, text: str) -> NDArray[np.int16]:
        response = self._api.post(
            "/audio/speech",
            json={
                "model": self._model,
                "voice": self._voice,
                "input": text,
                "response_format": "pcm",
            },
        )
        body = response.content
        if len(body) % 2:
            raise SpeechError(
                f"{self._api.base}/audio/speech: odd-length PCM body ({len(body)} bytes)"
            )
        return np.frombuffer(body, dtype="<i2").astype(np.int16)

    def close(self) -> None:
        self._api.close()


class RestTranscriber:
    """16 kHz speech -> text through ``POST /audio/transcriptions`` (sent as a WAV file)."""

    def __init__(self, api: RestAudio, model: str) -> None:
        self._api = api
        self._model = model

    def transcribe(self, pcm16k: NDArray[np.int16], hint: str = "") -> str:
        data = {"model": self._model, "language": "en", "response_format": "json"}
        if hint:
            data["prompt"] = hint
        wav = io.BytesIO()
        write_wav(wav, 16000, pcm16k)
        wav.seek(0)
        response = self._api.post(
            "/audio/transcriptions",
            data=data,
            files={"file": ("answer.wav", wav, "audio/wav")},
        )
        try:
            text = response.json()["text"]
        except (ValueError, KeyError, TypeError):
            raise SpeechError(
                f"{self._api.base}/audio/transcriptions: no 'text' in the answer "
                f"{response.text[:200]!r}"
            ) from None
        return str(text)

    def close(self) -> None:
        self._api.close()
