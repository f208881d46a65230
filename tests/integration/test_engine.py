"""The embedded realtime engine, driven by the official ``openai`` package's realtime client.

The engine runs behind the daemon's real API app (its tokens included) on loopback with real
Piper and Whisper; every server event is checked against the package's typed models (unknown
fields rejected too).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import uvicorn
import websockets
from openai import AsyncOpenAI
from structlog.testing import capture_logs
from websockets.typing import Subprotocol

from api.app import ApiContext, HealthReport, WebCalls, create_app
from api.ephemeral import EphemeralKeys
from daemon.engine.brains import Receptionist
from daemon.engine.server import Engine
from daemon.speech import SpeechToText, TextToSpeech
from daemon.speech.local import PiperSynthesizer, WhisperTranscriber
from media import g711
from media.resample import resample
from tests.realtime_oracle import check_server_event

TOKEN = "engine-token"
SECOND_TOKEN = "engine-token-2027"  # a second named token, valid at the same time
MESSAGE = "Please call me back tomorrow morning."


class EngineServer:
    """The engine behind the API app on loopback; ``web`` serves its WebRTC offers, if given.

    Its ephemeral keys run on the wall clock moved on by ``skew`` seconds (for expiry)."""

    def __init__(self, web: WebCalls | None = None) -> None:
        piper = PiperSynthesizer()
        self.piper = piper
        self.messages: list[str] = []

        async def keep(message: str) -> None:
            self.messages.append(message)

        engine = Engine(
            TextToSpeech(piper, piper.name),
            SpeechToText(WhisperTranscriber()),
            lambda caller: Receptionist(on_message=keep),
        )
        self.engine = engine
        self.skew = 0.0
        self.keys = EphemeralKeys(clock=lambda: time.time() + self.skew)
        app = create_app(
            ApiContext(
                health=lambda: HealthReport("healthy", False, "test", 1.0, 0, 0, []),
                tokens={"crm": TOKEN, "crm-2027": SECOND_TOKEN},
                engine=engine.serve,
                keys=self.keys,
                web=web,
            )
        )
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the engine did not start"
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineServer]:
    server = EngineServer()
    yield server
    server.close()


def _speech_ulaw(server: EngineServer, text: str) -> bytes:
    pcm = resample(server.piper.synthesize(text), server.piper.rate, 8000)
    silence = np.zeros(8000, dtype=np.int16)  # a second of silence ends the turn
    return g711.ulaw_encode(np.concatenate((silence[:2000], pcm, silence))).tobytes()


async def _events_until(conn: Any, dialect: str, last: str, seen: list[dict[str, Any]]) -> None:
    """Receive (checking every event) until an event of type ``last``."""
    while True:
        event = json.loads(await conn.recv_bytes())
        check_server_event(event, dialect)
        seen.append(event)
        if event["type"] == last:
            return


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_the_openai_client_holds_a_conversation(engine: EngineServer, dialect: str) -> None:
    """Update, greeting, speech appended in 100 ms chunks -> VAD turn, transcription, spoken
    reply; the message is taken once confirmed."""
    client = AsyncOpenAI(api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{engine.port}/v1")
    beta = dialect == "beta"
    connect = client.beta.realtime.connect if beta else client.realtime.connect
    async with connect(model="sipai-local") as conn:
        seen: list[dict[str, Any]] = []
        await _events_until(conn, dialect, "session.created", seen)
        if beta:
            session: dict[str, Any] = {
                "input_audio_format": "g711_ulaw",
                "output_audio_format": "g711_ulaw",
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
            }
        else:
            session = {
                "type": "realtime",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcmu"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    },
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            }
        await conn.session.update(session=session)  # type: ignore[arg-type]
        await _events_until(conn, dialect, "session.updated", seen)
        await conn.response.create()
        await _events_until(conn, dialect, "response.done", seen)
        delta = "response.audio.delta" if beta else "response.output_audio.delta"
        greeting_audio = b"".join(base64.b64decode(e["delta"]) for e in seen if e["type"] == delta)
        assert len(greeting_audio) > 8000 * 3  # seconds of mu-law

        for chunk in _chunks(_speech_ulaw(engine, MESSAGE)):
            await conn.input_audio_buffer.append(audio=chunk)
        seen.clear()
        await _events_until(conn, dialect, "response.done", seen)
        kinds = [e["type"] for e in seen]
        for expected in (
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.input_audio_transcription.completed",
            "response.created",
            delta,
        ):
            assert expected in kinds, kinds
        heard = next(
            e["transcript"]
            for e in seen
            if e["type"] == "conversation.item.input_audio_transcription.completed"
        )
        assert "tomorrow" in heard.lower()
        said = next(e for e in seen if e["type"].endswith("audio_transcript.done"))
        assert "tomorrow" in said["transcript"].lower()

        for chunk in _chunks(_speech_ulaw(engine, "Yes, that is right.")):
            await conn.input_audio_buffer.append(audio=chunk)
        seen.clear()
        await _events_until(conn, dialect, "response.done", seen)
        calls = [
            e["item"]
            for e in seen
            if e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"
        ]
        assert [c["name"] for c in calls] == ["end_call"]
    assert any("tomorrow" in m.lower() for m in engine.messages)


def _chunks(audio: bytes) -> Iterator[str]:
    """100 ms pieces of mu-law, base64."""
    for offset in range(0, len(audio), 800):
        yield base64.b64encode(audio[offset : offset + 800]).decode()


async def test_bad_events_get_errors_not_a_disconnect(engine: EngineServer) -> None:
    client = AsyncOpenAI(api_key=TOKEN, websocket_base_url=f"ws://127.0.0.1:{engine.port}/v1")
    async with client.realtime.connect(model="sipai-local") as conn:
        seen: list[dict[str, Any]] = []
        await _events_until(conn, "ga", "session.created", seen)
        await conn.send_raw("not json")
        await conn.send_raw(json.dumps({"type": "no.such.event", "event_id": "e1"}))
        await conn.send_raw(json.dumps({"type": "response.cancel", "event_id": "e2"}))
        errors: list[dict[str, Any]] = []
        for _ in range(3):
            await _events_until(conn, "ga", "error", errors)
        codes = [e["error"]["code"] for e in errors]
        assert codes == ["invalid_json", "unknown_event", "response_cancel_not_active"]
        await conn.session.update(session={"type": "realtime"})
        await _events_until(conn, "ga", "session.updated", seen)  # still talking


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"api-key": "wrong"}, {"Authorization": "Basic x"}],
    ids=["none", "wrong-bearer", "wrong-api-key", "not-bearer"],
)
async def test_a_missing_or_wrong_token_gets_401_with_a_detail(
    engine: EngineServer, headers: dict[str, str]
) -> None:
    """A handshake without a valid token is refused with HTTP 401, a JSON detail and
    WWW-Authenticate (not a close, which clients see as 403)."""
    url = f"ws://127.0.0.1:{engine.port}/v1/realtime?model=sipai-local"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, additional_headers=headers, open_timeout=10):
            pass
    response = refused.value.response
    print(f"/v1/realtime without a valid token: HTTP {response.status_code}")
    assert response.status_code == 401, f"refused with HTTP {response.status_code}"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body) == {"detail": "missing or invalid bearer token"}


async def test_the_openai_client_with_a_wrong_token_is_refused(engine: EngineServer) -> None:
    """The official client offering a wrong key fails to connect with the server's 401."""
    client = AsyncOpenAI(api_key="wrong", websocket_base_url=f"ws://127.0.0.1:{engine.port}/v1")
    with pytest.raises(websockets.InvalidStatus, match="401"):
        async with client.realtime.connect(model="sipai-local") as conn:
            await conn.recv_bytes()


@pytest.mark.parametrize(
    ("headers", "name"),
    [
        ({"Authorization": f"Bearer {TOKEN}"}, "crm"),
        ({"Authorization": f"Bearer {SECOND_TOKEN}"}, "crm-2027"),
        ({"api-key": SECOND_TOKEN}, "crm-2027"),
    ],
)
async def test_each_named_token_opens_a_session_logged_by_name(
    engine: EngineServer, headers: dict[str, str], name: str
) -> None:
    """Both named tokens open an engine session; the access log names the token, never
    carries it."""
    url = f"ws://127.0.0.1:{engine.port}/v1/realtime?model=sipai-local"
    with capture_logs() as logs:
        async with websockets.connect(url, additional_headers=headers, open_timeout=10) as ws:
            first = json.loads(await ws.recv())
    assert first["type"] == "session.created"
    # The access line of a refused handshake from the test before may land late: only
    # the upgrade that opened this session is the one to check.
    [request] = [e for e in logs if e["event"] == "api.request" and e.get("status") == 101]
    assert (request["path"], request["token"]) == ("/v1/realtime", name)
    assert not [e for e in logs if TOKEN in repr(e)]


async def test_a_browser_subprotocol_key_opens_one_websocket_session(engine: EngineServer) -> None:
    """A key minted by POST /v1/realtime/client_secrets, offered as a browser does (the
    subprotocol openai-insecure-api-key.<key> next to realtime), opens one session accepted
    with subprotocol realtime and configured as minted; offered again the handshake gets
    HTTP 401 "already used"."""
    base = f"127.0.0.1:{engine.port}/v1"
    async with AsyncOpenAI(api_key=TOKEN, base_url=f"http://{base}") as client:
        minted = await client.realtime.client_secrets.create(
            expires_after={"anchor": "created_at", "seconds": 60},
            session={"type": "realtime", "instructions": "Answer in French."},
        )
    key = minted.value
    assert key.startswith("ek_"), key
    url = f"ws://{base}/realtime?model=sipai-local"
    protocols = [Subprotocol("realtime"), Subprotocol(f"openai-insecure-api-key.{key}")]
    with capture_logs() as logs:
        async with websockets.connect(url, subprotocols=protocols, open_timeout=10) as ws:
            assert ws.subprotocol == "realtime"
            first = json.loads(await ws.recv())
            second = json.loads(await ws.recv())
            for event in (first, second):
                check_server_event(event, "ga")
    assert first["type"] == "session.created", first
    assert second["type"] == "session.updated", second  # the key's session, applied first
    assert second["session"]["instructions"] == "Answer in French.", second
    [opened] = [e for e in logs if e["event"] == "api.request" and e.get("status") == 101]
    assert opened["token"] == "ephemeral", opened
    assert not [e for e in logs if key in repr(e)], "a key was logged"

    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(url, subprotocols=protocols, open_timeout=10):
            pass
    response = refused.value.response
    assert response.status_code == 401, f"second use: HTTP {response.status_code}"
    assert json.loads(response.body) == {"detail": "ephemeral key already used"}
