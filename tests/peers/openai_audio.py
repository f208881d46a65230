"""A real HTTP server on loopback offering OpenAI's REST audio endpoints, backed by real models.

``POST /v1/audio/speech`` synthesises with Piper and answers 24 kHz raw PCM (the "pcm"
format); ``POST /v1/audio/transcriptions`` runs Whisper on the uploaded WAV; ``GET /v1/models``
checks the key. Requests are checked against the official ``openai`` package's parameter
types (unknown or missing fields are a 400, as the real service answers) and recorded for the
test to inspect. ``failures`` scripts error answers to return before serving normally.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn
from numpy.typing import NDArray
from openai.types.audio import speech_create_params, transcription_create_params
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from media.resample import Resampler
from media.wav import read_wav

SPEECH_FIELDS = set(speech_create_params.SpeechCreateParams.__annotations__)
SPEECH_REQUIRED = set(speech_create_params.SpeechCreateParams.__required_keys__)
TRANSCRIPTION_FIELDS = set(
    transcription_create_params.TranscriptionCreateParamsBase.__annotations__
)
TRANSCRIPTION_REQUIRED = set(
    transcription_create_params.TranscriptionCreateParamsBase.__required_keys__
)


@dataclass
class Seen:
    path: str
    authorization: str
    fields: dict[str, Any]
    audio: NDArray[np.int16] | None = None  # the uploaded file, for transcriptions
    rate: int = 0


@dataclass
class OpenAIAudio:
    synthesize: Callable[[str], tuple[NDArray[np.int16], int]]  # text -> (samples, rate)
    transcribe: Callable[[NDArray[np.int16], str], str]  # 16 kHz samples, prompt -> text
    key: str = "sk-test"
    failures: list[int] = field(default_factory=list)  # statuses to answer first, in order
    seen: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        app = Starlette(
            routes=[
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/audio/speech", self._speech, methods=["POST"]),
                Route("/v1/audio/transcriptions", self._transcriptions, methods=["POST"]),
            ]
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake OpenAI audio server did not start")
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"

    def requests(self, path: str) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.path == path]

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    # -- endpoints -------------------------------------------------------------------------

    def _refusal(self, request: Request) -> Response | None:
        if request.headers.get("authorization") != f"Bearer {self.key}":
            return _error(401, "Incorrect API key provided.", "invalid_api_key")
        with self._lock:
            status = self.failures.pop(0) if self.failures else None
        if status is not None:
            return _error(status, f"scripted failure {status}", "server_error")
        return None

    async def _models(self, request: Request) -> Response:
        refusal = self._refusal(request)
        return refusal or JSONResponse({"object": "list", "data": []})

    async def _speech(self, request: Request) -> Response:
        body = await request.json()
        self._record(request, body)
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        problem = _check_fields(body, SPEECH_FIELDS, SPEECH_REQUIRED)
        if problem:
            return _error(400, problem, "invalid_request_error")
        if body.get("response_format") != "pcm":
            return _error(400, "this server only answers response_format 'pcm'", "unsupported")
        samples, rate = await run_in_threadpool(self.synthesize, str(body["input"]))
        if rate != 24000:
            resampler = Resampler(rate, 24000)
            samples = np.concatenate((resampler.process(samples), resampler.flush()))
        return Response(samples.astype("<i2").tobytes(), media_type="audio/pcm")

    async def _transcriptions(self, request: Request) -> Response:
        async with request.form() as form:
            fields = {k: v for k, v in form.items() if not isinstance(v, UploadFile)}
            upload = form.get("file")
            seen = self._record(request, fields)
            refusal = self._refusal(request)
            if refusal is not None:
                return refusal
            present = {**fields, **({"file": True} if upload is not None else {})}
            problem = _check_fields(present, TRANSCRIPTION_FIELDS, TRANSCRIPTION_REQUIRED)
            if problem or not isinstance(upload, UploadFile):
                return _error(400, problem or "file must be a file", "invalid_request_error")
            data = await upload.read()
        wav = read_wav(io.BytesIO(data))
        seen.audio, seen.rate = wav.samples, wav.rate
        pcm = wav.samples
        if wav.rate != 16000:
            resampler = Resampler(wav.rate, 16000)
            pcm = np.concatenate((resampler.process(pcm), resampler.flush()))
        text = await run_in_threadpool(self.transcribe, pcm, str(fields.get("prompt", "")))
        return JSONResponse({"text": text})

    def _record(self, request: Request, fields: dict[str, Any]) -> Seen:
        seen = Seen(request.url.path, request.headers.get("authorization", ""), dict(fields))
        with self._lock:
            self.seen.append(seen)
        return seen


def _check_fields(body: dict[str, Any], known: set[str], required: set[str]) -> str:
    unknown = sorted(set(body) - known)
    if unknown:
        return f"Unrecognized request argument supplied: {', '.join(unknown)}"
    missing = sorted(required - set(body))
    if missing:
        return f"Missing required parameter: {', '.join(missing)}"
    return ""


def _error(status: int, message: str, code: str) -> Response:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "code": code}},
        status_code=status,
    )
