"""An inbound call answered by the embedded engine: the default, no cloud at all."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from config.schema import EngineSettings
from media.resample import resample
from media.wav import write_wav
from tests.peers.kamailio import password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.receiver import Receiver
from tests.support import DaemonProcess, registered

pytestmark = pytest.mark.e2e
MESSAGE = "Please call me back tomorrow morning."
_voice: dict[str, Any] = {}


def _piper(text: str) -> NDArray[np.int16]:
    from daemon.speech.local import PiperSynthesizer  # noqa: PLC0415 - loaded once, lazily

    voice = _voice.setdefault("piper", PiperSynthesizer())
    return resample(voice.synthesize(text), voice.rate, 8000)


async def test_the_receptionist_takes_a_message(daemon_env: dict[str, str], tmp_path: Path) -> None:
    """Greeting, a message, the read-back, "yes": the engine ends the call by itself and the
    message reaches the inbound webhook and the call record."""
    receiver = Receiver()
    async with running_kamailio(tmp_path / "k") as pbx:
        env = daemon_env | {
            "SIPAI_SIP__REGISTRAR": pbx.uri,
            "SIPAI_SIP__PASSWORD": password("1000"),
            "SIPAI_WEBHOOKS__INBOUND_URL": receiver.url,
        }
        daemon = DaemonProcess(env, wait=None)
        await daemon.start()
        api = daemon.base_url
        phone = await TestPhone.start("caller")
        try:
            await daemon.ready(registered)
            await phone.register(pbx, "1001")
            dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
            call = dialled["call"]
            await phone.expect("media", call=call, status="active", timeout=20)
            message, yes = tmp_path / "message.wav", tmp_path / "yes.wav"
            write_wav(message, 8000, _piper(MESSAGE))
            write_wav(yes, 8000, _piper("Yes, that is right."))
            greeting_s = len(_piper(EngineSettings().greeting)) / 8000
            await asyncio.sleep(greeting_s + 1.5)
            await phone.command("play", call=call, wav=str(message))
            read_back_s = len(_piper(f"Thank you. I have noted: {MESSAGE} Is that right?")) / 8000
            await asyncio.sleep(len(_piper(MESSAGE)) / 8000 + 3.0 + read_back_s)
            await phone.command("play", call=call, wav=str(yes))
            ended = await phone.expect("call", call=call, state="DISCONNECTED", timeout=30)
            async with asyncio.timeout(20):
                while not receiver.requests():
                    await asyncio.sleep(0.1)
            async with httpx.AsyncClient() as client, asyncio.timeout(10):
                while True:
                    calls = (await client.get(f"{api}/calls?direction=inbound")).json()["calls"]
                    if calls and calls[0]["status"] != "in_progress":
                        break
                    await asyncio.sleep(0.1)
        finally:
            await phone.close()
            assert await daemon.stop(timeout=30) == 0
            receiver.close()
    assert ended["code"] == 200  # hung up by the daemon after the goodbye (end_call)
    payload = json.loads(receiver.requests()[0].body)
    assert payload["type"] == "inbound.message"
    assert "tomorrow" in payload["message"].lower()
    record = calls[0]
    assert payload["call_id"] == record["call_id"]
    assert "tomorrow" in record["message"].lower()
    assert record["end_cause"] == "end_call"
    roles = [turn["role"] for turn in record["transcript"]]
    assert roles[:2] == ["agent", "caller"]


async def test_the_chat_brain_answers_with_the_model_text(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """engine.brain = "chat": the greeting comes from a Chat Completions server (streamed) and
    the phone hears its words."""
    from daemon.speech import SpeechToText  # noqa: PLC0415
    from daemon.speech.local import WhisperTranscriber  # noqa: PLC0415
    from media.wav import read_wav  # noqa: PLC0415
    from tests.peers.chat_server import ChatServer  # noqa: PLC0415

    chat = ChatServer("Good morning. Our opening hours are nine to five on weekdays.")
    async with running_kamailio(tmp_path / "k") as pbx:
        env = daemon_env | {
            "SIPAI_SIP__REGISTRAR": pbx.uri,
            "SIPAI_SIP__PASSWORD": password("1000"),
            "SIPAI_ENGINE__BRAIN": "chat",
            "SIPAI_ENGINE__CHAT_URL": chat.url,
            "SIPAI_ENGINE__CHAT_MODEL": "tiny-llm",
        }
        daemon = DaemonProcess(env, wait=None)
        await daemon.start()
        phone = await TestPhone.start("caller")
        try:
            await daemon.ready(registered)
            await phone.register(pbx, "1001")
            dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
            call = dialled["call"]
            await phone.expect("media", call=call, status="active", timeout=20)
            await phone.command("record", call=call, wav=str(tmp_path / "heard.wav"))
            await asyncio.sleep(7.0)
            await phone.command("hangup", call=call)
            await phone.expect("recorded", call=call)
        finally:
            await phone.close()
            assert await daemon.stop(timeout=30) == 0
            chat.close()
    first = chat.requests[0]
    assert (first["model"], first["stream"]) == ("tiny-llm", True)
    assert first["messages"][0]["role"] == "system"
    assert "end_call" in {t["function"]["name"] for t in first["tools"]}
    heard = read_wav(tmp_path / "heard.wav")
    text = (await SpeechToText(WhisperTranscriber()).transcribe(heard.samples, heard.rate)).lower()
    assert "opening hours" in text, text
