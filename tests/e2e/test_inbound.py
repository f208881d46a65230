"""Inbound calls answered by a realtime model: the daemon, Kamailio, a phone and a fake model.

The fake model is a real WebSocket server in this process (tests/peers/realtime_server.py)
that checks every client event against the ``openai`` package's typed models.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from media.resample import resample
from media.wav import read_wav, write_wav
from tests.conftest import SIPAI
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.realtime_server import FakeRealtime, FakeSession

pytestmark = pytest.mark.e2e

GREETING = "Hello, thank you for calling the dental practice. How can I help you?"
CALLER = "I would like to book an appointment for Tuesday."
GOODBYE = "Thank you for calling. Goodbye."
_models: dict[str, Any] = {}


def _piper(text: str, rate: int) -> NDArray[np.int16]:
    from daemon.speech.local import PiperSynthesizer  # noqa: PLC0415 - loaded once, lazily

    voice = _models.setdefault("piper", PiperSynthesizer())
    return resample(voice.synthesize(text), voice.rate, rate)


async def _heard(samples: NDArray[np.int16], rate: int) -> str:
    from daemon.speech import SpeechToText  # noqa: PLC0415
    from daemon.speech.local import WhisperTranscriber  # noqa: PLC0415

    stt = _models.setdefault("whisper", SpeechToText(WhisperTranscriber()))
    text: str = await stt.transcribe(samples, rate)
    return text.lower()


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Kamailio]:
    async with running_kamailio(tmp_path / "k") as kamailio:
        yield kamailio


@contextlib.asynccontextmanager
async def _daemon(pbx: Kamailio, env: dict[str, str], fake: FakeRealtime) -> AsyncIterator[None]:
    env = env | {
        "SIPAI_SIP__REGISTRAR": pbx.uri,
        "SIPAI_SIP__PASSWORD": password("1000"),
        "SIPAI_SIP__RTP_PORT_MIN": "43000",
        "SIPAI_SIP__RTP_PORT_MAX": "43099",
        "SIPAI_AGENT__BACKEND": "url",
        "SIPAI_AGENT__URL": fake.url,
        "SIPAI_AGENT__DIALECT": fake.dialect,
    }
    process = await asyncio.create_subprocess_exec(
        SIPAI, "run", env=env, stdout=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{env['SIPAI_API__PORT']}"
    try:
        async with httpx.AsyncClient() as client, asyncio.timeout(60):
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{base}/health")).json()["sip_registered"]:
                        break
                await asyncio.sleep(0.2)
        yield
    finally:
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def _call(pbx: Kamailio, name: str, user: str) -> tuple[TestPhone, int]:
    phone = await TestPhone.start(name)
    await phone.register(pbx, user)
    dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
    await phone.expect("media", call=dialled["call"], status="active", timeout=15)
    return phone, int(dialled["call"])


@pytest.mark.parametrize(("dialect", "fmt"), [("ga", "pcmu"), ("ga", "pcm24"), ("beta", "pcmu")])
async def test_audio_both_ways(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path, dialect: str, fmt: str
) -> None:
    """The model's greeting is heard by the phone; the phone's words reach the model intact;
    a hang-up closes the model socket at once."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("response.create")
        await session.respond(_piper(GREETING, session.output_rate), GREETING)

    env = daemon_env | {"SIPAI_AGENT__INPUT_FORMAT": fmt, "SIPAI_AGENT__OUTPUT_FORMAT": fmt}
    async with FakeRealtime(dialect, script) as fake, _daemon(pbx, env, fake):
        phone, call = await _call(pbx, "caller", "1001")
        try:
            await phone.command("record", call=call, wav=str(tmp_path / "heard.wav"))
            session = await fake.session()
            wav = tmp_path / "caller.wav"
            write_wav(wav, 8000, _piper(CALLER, 8000))
            await asyncio.sleep(len(_piper(GREETING, 8000)) / 8000 + 0.5)
            await phone.command("play", call=call, wav=str(wav))
            await asyncio.sleep(read_wav(wav).duration + 0.8)
            await phone.command("hangup", call=call)
            await phone.expect("recorded", call=call)
            async with asyncio.timeout(2):  # the daemon closes the model socket at once
                await session.ws.wait_closed()
        finally:
            await phone.close()
        assert fake.violations == []
        assert fake.errors == []
        if dialect == "ga":
            asked = session.session["audio"]["input"]["format"]["type"]
            assert asked == {"pcmu": "audio/pcmu", "pcm24": "audio/pcm"}[fmt]
        else:
            assert session.session["input_audio_format"] == "g711_ulaw"
        model_heard = await _heard(session.input_pcm, 8000)
        assert "appointment" in model_heard, model_heard
        recording = read_wav(tmp_path / "heard.wav")
        phone_heard = await _heard(recording.samples, recording.rate)
        assert "calling the" in phone_heard, phone_heard
        assert "practice" in phone_heard, phone_heard


async def test_dtmf_as_text_then_end_call_after_the_goodbye(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """Keys pressed reach the model as a user text item; end_call hangs up only once the
    goodbye said before it has been heard in full."""
    goodbye_seconds = len(_piper(GOODBYE, 8000)) / 8000

    async def script(session: FakeSession) -> None:
        await session.wait_for(
            "conversation.item.create",
            timeout=20,
            where=lambda e: "12#" in str(e["item"].get("content")),
        )
        await session.respond(_piper(GOODBYE, session.output_rate), GOODBYE)
        await session.call_tool("end_call", {})

    env = daemon_env | {"SIPAI_AGENT__GREETING": ""}
    async with FakeRealtime("ga", script) as fake, _daemon(pbx, env, fake):
        phone, call = await _call(pbx, "caller", "1002")
        try:
            await phone.command("record", call=call, wav=str(tmp_path / "heard.wav"))
            await asyncio.sleep(0.5)
            await phone.command("dtmf", call=call, digits="12#")
            ended = await phone.expect("call", call=call, state="DISCONNECTED", timeout=20)
            await phone.expect("recorded", call=call)
        finally:
            await phone.close()
        assert ended["code"] == 200
        assert fake.violations == []
        assert fake.errors == []
        session = fake.sessions[0]
        (output,) = session.of("conversation.item.create")[1:]  # after the keys: the tool's
        assert output["item"]["type"] == "function_call_output"
        recording = read_wav(tmp_path / "heard.wav")
        assert "goodbye" in await _heard(recording.samples, recording.rate)
        assert recording.duration >= goodbye_seconds  # hung up after the goodbye, not during
