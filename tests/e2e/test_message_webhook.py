"""The receptionist's ``inbound.message`` webhook is durable like the call webhooks.

A real call to the daemon (Kamailio, the pjsua2 test phone, Piper and Whisper) leaves a
message while the receiver is down; the daemon is killed with SIGKILL and restarted with the
receiver up: the message arrives, signed (checked with the ``standardwebhooks`` package), with
one webhook-id on every attempt, and the inbound call's record lists the attempts. The call's
end-of-call webhook (``inbound.ended``, to the same URL) is delivered too, under its own id.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray
from standardwebhooks import Webhook

from config.schema import EngineSettings
from media.resample import resample
from media.wav import write_wav
from tests.peers.kamailio import password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.receiver import Receiver
from tests.support import DaemonProcess, free_port, registered

pytestmark = pytest.mark.e2e
MESSAGE = "Please call me back tomorrow morning."
_voice: dict[str, Any] = {}


def _piper(text: str) -> NDArray[np.int16]:
    from daemon.speech.local import PiperSynthesizer  # noqa: PLC0415 - loaded once, lazily

    voice = _voice.setdefault("piper", PiperSynthesizer())
    return resample(voice.synthesize(text), voice.rate, 8000)


async def _inbound(api: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        calls: list[dict[str, Any]] = (await client.get(f"{api}/calls?direction=inbound")).json()[
            "calls"
        ]
        return calls


def _of_kind(hooks: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    """The call's webhook of this kind (a call has at most one of each inbound kind)."""
    return next((hook for hook in hooks if hook["kind"] == kind), None)


async def _leave_message(phone: TestPhone, tmp_path: Path) -> None:
    """Call the daemon, wait out the greeting, say the message, confirm it; the daemon hangs up."""
    dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
    call = dialled["call"]
    await phone.expect("media", call=call, status="active", timeout=20)
    message, yes = tmp_path / "message.wav", tmp_path / "yes.wav"
    write_wav(message, 8000, _piper(MESSAGE))
    write_wav(yes, 8000, _piper("Yes, that is right."))
    await asyncio.sleep(len(_piper(EngineSettings().greeting)) / 8000 + 1.5)
    await phone.command("play", call=call, wav=str(message))
    read_back_s = len(_piper(f"Thank you. I have noted: {MESSAGE} Is that right?")) / 8000
    await asyncio.sleep(len(_piper(MESSAGE)) / 8000 + 3.0 + read_back_s)
    await phone.command("play", call=call, wav=str(yes))
    await phone.expect("call", call=call, state="DISCONNECTED", timeout=30)


async def test_message_webhook_survives_a_down_receiver_and_sigkill(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """Receiver down when the message is taken, daemon killed -9, restarted with the receiver
    up: the message is delivered, signed, with the same webhook-id on every attempt, and the
    call's record shows the refused and the delivered attempt."""
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    receiver_port = free_port()
    async with running_kamailio(tmp_path / "k") as pbx:
        env = daemon_env | {
            "SIPAI_SIP__REGISTRAR": pbx.uri,
            "SIPAI_SIP__PASSWORD": password("1000"),
            "SIPAI_WEBHOOKS__INBOUND_URL": f"http://127.0.0.1:{receiver_port}/hook",
            "SIPAI_WEBHOOKS__SECRET": secret,
            # a retry every 5 s: on a slow machine the message may be refused twice before
            # the call ends, and the default's second wait is 5 min
            "SIPAI_WEBHOOKS__RETRY_SECONDS": json.dumps([5] * 20),
        }
        api = f"http://127.0.0.1:{env['SIPAI_API__PORT']}"
        first = DaemonProcess(env, wait=None)
        await first.start()
        phone = await TestPhone.start("caller")
        try:
            await first.ready(registered)
            await phone.register(pbx, "1001")
            await _leave_message(phone, tmp_path)
            async with asyncio.timeout(20):
                while True:  # the call is over and the message's first attempt was refused
                    calls = await _inbound(api)
                    hooks = calls[0]["webhooks"] if calls else []
                    message = _of_kind(hooks, "inbound.message")
                    if calls[0]["status"] != "in_progress" and message and message["attempts"]:
                        break
                    await asyncio.sleep(0.1)
        finally:
            await phone.close()
            first.kill()
        before = _of_kind(hooks, "inbound.message")
        ended = _of_kind(hooks, "inbound.ended")  # queued with the call's end
        assert before is not None
        assert ended is not None, hooks
        assert (before["state"], ended["state"]) == ("pending", "pending"), hooks

        receiver = Receiver(receiver_port)
        second = DaemonProcess(env)
        try:
            await second.start()
            async with asyncio.timeout(30):  # the retry is due 5 s after a refused attempt
                while not receiver.requests():
                    await asyncio.sleep(0.1)
                while True:
                    [record] = await _inbound(api)
                    if all(hook["state"] != "pending" for hook in record["webhooks"]):
                        break
                    await asyncio.sleep(0.1)
        finally:
            assert await second.stop(timeout=30) == 0
            receiver.close()

    hook = _of_kind(record["webhooks"], "inbound.message")
    assert hook is not None
    received = receiver.requests()
    ids = {r.headers["webhook-id"] for r in received}
    assert ids == {before["webhook_id"], ended["webhook_id"]}, (ids, before, ended)
    assert hook["webhook_id"] == before["webhook_id"], (hook, before)
    [message] = [r for r in received if r.headers["webhook-id"] == hook["webhook_id"]]
    payload = Webhook(secret).verify(message.body, message.headers)
    assert payload["type"] == "inbound.message"
    assert payload["call_id"] == record["call_id"]
    assert "tomorrow" in payload["message"].lower()
    assert json.loads(message.body) == payload
    assert hook["state"] == "delivered"
    statuses = [a["status_code"] for a in hook["attempts"]]
    assert statuses[0] is None, hook  # refused: nothing listened before the kill
    assert statuses[-1] == 200, hook
    assert "tomorrow" in record["message"].lower()
