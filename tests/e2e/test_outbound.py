"""Outbound notification calls through the real daemon, Kamailio, a phone and a webhook receiver."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.speech import SpeechToText
from daemon.speech.local import WhisperTranscriber
from media.wav import read_wav
from tests.conftest import SIPAI
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.receiver import Receiver

pytestmark = pytest.mark.e2e
MESSAGE = "Hello, this is a reminder about your dentist appointment tomorrow morning."


class Daemon:
    def __init__(self, process: asyncio.subprocess.Process, base: str) -> None:
        self.process = process
        self.base = base

    async def post(self, body: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            response = await client.post(f"{self.base}/call", json=body)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Kamailio]:
    async with running_kamailio(tmp_path / "k") as kamailio:
        yield kamailio


@pytest.fixture
async def daemon(pbx: Kamailio, daemon_env: dict[str, str]) -> AsyncIterator[Daemon]:
    env = daemon_env | {
        "SIPAI_SIP__REGISTRAR": pbx.uri,
        "SIPAI_SIP__PASSWORD": password("1000"),
        "SIPAI_SIP__RTP_PORT_MIN": "42000",
        "SIPAI_SIP__RTP_PORT_MAX": "42099",
    }
    process = await asyncio.create_subprocess_exec(
        SIPAI, "run", env=env, stdout=asyncio.subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{env['SIPAI_API__PORT']}"
    async with httpx.AsyncClient() as client, asyncio.timeout(60):
        while True:
            try:
                health = (await client.get(f"{base}/health")).json()
                if health["sip_registered"]:
                    break
            except httpx.TransportError:
                pass  # not listening yet
            await asyncio.sleep(0.2)
    yield Daemon(process, base)
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0


async def _webhook(receiver: Receiver, within: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while not receiver.requests():
            await asyncio.sleep(0.1)
    payload: dict[str, Any] = json.loads(receiver.requests()[0].body)
    return payload


async def test_plain_notification_is_heard(pbx: Kamailio, daemon: Daemon, tmp_path: Path) -> None:
    """The phone answers and hears the message (Whisper finds its words); completed."""
    receiver = Receiver()
    phone = await TestPhone.start("callee")
    try:
        await phone.register(pbx, "1001")
        await phone.command("mode", on_incoming="answer", answer_after_ms=200)
        posted = await daemon.post(
            {"message": MESSAGE, "extension": "1001", "callback_url": receiver.url}
        )
        incoming = await phone.expect("incoming", timeout=20)
        await phone.expect("media", call=incoming["call"], status="active")
        await phone.command("record", call=incoming["call"], wav=str(tmp_path / "heard.wav"))
        payload = await _webhook(receiver)
        assert payload["call_id"] == posted["call_id"]
        assert (payload["status"], payload["message_played"]) == ("completed", True), payload
        assert payload["duration_seconds"] > 2.0
        await phone.expect("call", call=incoming["call"], state="DISCONNECTED")
        heard = read_wav(tmp_path / "heard.wav")
        text = await SpeechToText(WhisperTranscriber()).transcribe(heard.samples, heard.rate)
        words = set("".join(c if c.isalnum() else " " for c in text.lower()).split())
        assert {"reminder", "dentist", "appointment"} <= words, text
    finally:
        await phone.close()
        receiver.close()


async def test_busy_is_reported(pbx: Kamailio, daemon: Daemon) -> None:
    """A callee that answers 486 gives a busy webhook with nothing played."""
    receiver = Receiver()
    phone = await TestPhone.start("callee")
    try:
        await phone.register(pbx, "1002")
        await phone.command("mode", on_incoming="busy")
        await daemon.post({"message": MESSAGE, "extension": "1002", "callback_url": receiver.url})
        payload = await _webhook(receiver)
        assert (payload["status"], payload["message_played"]) == ("busy", False)
    finally:
        await phone.close()
        receiver.close()
