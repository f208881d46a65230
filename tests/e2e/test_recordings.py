"""A recorded inbound call: the daemon, Kamailio, a phone and a fake model, checked by ear.

The recording is fetched through the API with its token, and each of its two channels is
transcribed on its own with Whisper: the caller's words must be on channel 1 only, the agent's
on channel 2 only.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from openapi_schema_validator import OAS30Validator
from standardwebhooks import Webhook

from api.spec import load_spec
from media.resample import resample
from media.wav import read_wav, read_wav_channels, write_wav
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.realtime_server import FakeRealtime, FakeSession
from tests.peers.receiver import Receiver
from tests.support import DaemonProcess, registered

pytestmark = pytest.mark.e2e

GREETING = "Hello, thank you for calling the dental practice. How can I help you?"
CALLER = "I would like to book an appointment for Tuesday."
TOKEN = "rec-t0ken"
SECRET = "whsec_" + "c2lwYWktcmVjb3JkaW5ncy10ZXN0LXNlY3JldA=="
_models: dict[str, Any] = {}


def _piper(text: str, rate: int) -> NDArray[np.int16]:
    from daemon.speech.local import PiperSynthesizer  # noqa: PLC0415 - loaded once, lazily

    voice = _models.setdefault("piper", PiperSynthesizer())
    return resample(voice.synthesize(text), voice.rate, rate)


async def _heard(samples: NDArray[np.int16], rate: int) -> str:
    from daemon.speech import SpeechToText  # noqa: PLC0415
    from daemon.speech.local import WhisperTranscriber  # noqa: PLC0415

    stt = _models.setdefault("whisper", SpeechToText(WhisperTranscriber()))
    text: str = await stt.transcribe(np.ascontiguousarray(samples), rate)
    return text.lower()


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Kamailio]:
    async with running_kamailio(tmp_path / "k") as kamailio:
        yield kamailio


def _ended_hooks(receiver: Receiver) -> list[dict[str, Any]]:
    """The inbound.ended webhooks received, each verified against the secret."""
    verifier = Webhook(SECRET)
    hooks = []
    for request in receiver.requests():
        payload = verifier.verify(request.body, request.headers)
        if payload["type"] == "inbound.ended":
            hooks.append(payload)
    return hooks


async def test_the_caller_is_on_channel_one_and_the_agent_on_two(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """An inbound call's recording, fetched with the API token, has the caller's words on
    channel 1 and not 2 and the agent's greeting on 2 and not 1, lasts the record's duration
    within 0.2 s; the record's black box has RTP and a MOS, the record and the one signed
    inbound.ended webhook conform to the served spec."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("response.create")
        await session.respond(_piper(GREETING, session.output_rate), GREETING)
        await session.caller_said(CALLER)

    receiver = Receiver()
    env = daemon_env | {
        "SIPAI_SIP__REGISTRAR": pbx.uri,
        "SIPAI_SIP__PASSWORD": password("1000"),
        "SIPAI_AGENT__BACKEND": "url",
        "SIPAI_AGENT__DIALECT": "ga",
        "SIPAI_API__TOKEN": TOKEN,
        "SIPAI_WEBHOOKS__INBOUND_URL": receiver.url,
        "SIPAI_WEBHOOKS__SECRET": SECRET,
        "SIPAI_RECORDINGS__ENABLED": "true",
        "SIPAI_RECORDINGS__DIRECTORY": str(tmp_path / "recordings"),
    }
    auth = {"authorization": f"Bearer {TOKEN}"}
    greeting_s = len(_piper(GREETING, 8000)) / 8000
    try:
        async with (
            FakeRealtime("ga", script) as fake,
            DaemonProcess(env | {"SIPAI_AGENT__URL": fake.url}, wait=registered) as daemon,
        ):
            phone = await TestPhone.start("caller")
            try:
                await phone.register(pbx, "1001")
                dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
                call = int(dialled["call"])
                await phone.expect("media", call=call, status="active", timeout=15)
                await fake.session()
                wav = tmp_path / "caller.wav"
                write_wav(wav, 8000, _piper(CALLER, 8000))
                await asyncio.sleep(greeting_s + 0.5)
                await phone.command("play", call=call, wav=str(wav))
                await asyncio.sleep(read_wav(wav).duration + 0.8)
                await phone.command("hangup", call=call)
                await phone.expect("call", call=call, state="DISCONNECTED", timeout=10)
            finally:
                await phone.close()
            async with asyncio.timeout(15):
                while not _ended_hooks(receiver):
                    await asyncio.sleep(0.1)
            [ended] = _ended_hooks(receiver)
            async with httpx.AsyncClient(base_url=daemon.base_url, headers=auth) as client:
                record = (await client.get(f"/call/{ended['call_id']}")).json()
                fetched = await client.get(f"/call/{ended['call_id']}/recording")
            await asyncio.sleep(0.5)  # a second end-of-call webhook would arrive meanwhile
            assert len(_ended_hooks(receiver)) == 1, receiver.requests()
    finally:
        receiver.close()
    assert (record["status"], record["call_status"], record["direction"]) == (
        "not_found",
        "completed",
        "inbound",
    ), record
    assert ended["call_id"] == record["call_id"]
    spec = load_spec()
    schema = {
        **spec["components"]["schemas"]["CallStatusResponse"],
        "components": spec["components"],
    }
    OAS30Validator(schema).validate(record)
    OAS30Validator(schema).validate(ended)
    assert fetched.status_code == 200, fetched.text
    assert fetched.headers["content-type"] == "audio/wav"
    rate, frames = read_wav_channels(io.BytesIO(fetched.content))
    assert (rate, frames.shape[1]) == (8000, 2)
    wav_seconds = len(frames) / rate
    print(
        f"recording {wav_seconds:.3f} s, record {record['duration_seconds']} s connected, "
        f"{record['recording']['bytes']} bytes, complete {record['recording']['complete']}"
    )
    assert abs(wav_seconds - record["duration_seconds"]) <= 0.2, (
        f"recording {wav_seconds:.3f} s vs connected {record['duration_seconds']} s"
    )
    assert record["recording"]["complete"] is True, record["recording"]
    assert record["recording"]["bytes"] == len(fetched.content)
    caller_side = await _heard(frames[:, 0], rate)
    agent_side = await _heard(frames[:, 1], rate)
    print(f"channel 1: {caller_side!r}\nchannel 2: {agent_side!r}")
    assert "appointment" in caller_side, caller_side
    assert "tuesday" in caller_side, caller_side
    assert "dental" not in caller_side, caller_side
    assert "dental" in agent_side, agent_side
    assert "appointment" not in agent_side, agent_side
    assert "tuesday" not in agent_side, agent_side
    box = record["black_box"]
    print(json.dumps({"rtp_rx": box["rtp"]["rx"], "mos": box["mos"]}))
    assert box["rtp"]["rx"]["packets"] > 0, box
    assert box["mos"]["rx"] is not None, box
