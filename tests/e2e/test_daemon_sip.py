"""The daemon process with SIP: registration in /health, calls refused or drained on stop."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.peers.kamailio import password, running_kamailio
from tests.peers.phone import TestPhone
from tests.support import DaemonProcess, free_port, registered

pytestmark = pytest.mark.e2e
ANSWERING = "tests.e2e.answering_supervisor"


def _registered_everywhere(health: dict[str, Any]) -> bool:
    return bool(health["sip_registered"]) and all(w["registered"] for w in health["workers"])


def _env(daemon_env: dict[str, str], registrar: str) -> dict[str, str]:
    return daemon_env | {
        "SIPAI_SIP__REGISTRAR": registrar,
        "SIPAI_SIP__PASSWORD": password("1000"),
    }


@pytest.mark.parametrize("fallback", ["apology", "reject"])
async def test_model_unreachable_apology_or_503(
    daemon_env: dict[str, str], tmp_path: Path, fallback: str
) -> None:
    """/health reports the registration; with no model to talk to, an inbound call hears the
    apology in the local voice and is hung up (its call.ended line carries the call's RTP
    statistics), or is rejected with 503, never left silent."""
    from daemon.speech import SpeechToText  # noqa: PLC0415 - heavy, this test only
    from daemon.speech.local import WhisperTranscriber  # noqa: PLC0415
    from media.wav import read_wav  # noqa: PLC0415

    async with running_kamailio(tmp_path / "k") as kamailio:
        env = _env(daemon_env, kamailio.uri) | {
            "SIPAI_AGENT__BACKEND": "url",
            "SIPAI_AGENT__URL": f"ws://127.0.0.1:{free_port()}/v1/realtime",
            "SIPAI_AGENT__ON_CONNECT_FAILURE": fallback,
        }
        daemon = DaemonProcess(env, wait=None)
        await daemon.start()
        phone = await TestPhone.start("caller")
        try:
            body = (await daemon.ready(registered, timeout=20)).json()
            assert body["status"] == "healthy"
            await phone.register(kamailio, "1001")
            dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
            call = dialled["call"]
            if fallback == "apology":
                await phone.expect("media", call=call, status="active", timeout=15)
                await phone.command("record", call=call, wav=str(tmp_path / "heard.wav"))
            ended = await phone.expect("call", call=call, state="DISCONNECTED", timeout=30)
            if fallback == "reject":
                # We answer 503; a proxy turns a 503 into 500 (RFC 3261 16.7), as Kamailio does.
                assert ended["code"] == 500
            else:
                await phone.expect("recorded", call=call)
                heard = read_wav(tmp_path / "heard.wav")
                stt = SpeechToText(WhisperTranscriber())
                text = (await stt.transcribe(heard.samples, heard.rate)).lower()
                assert "sorry" in text or "not available" in text, text
        finally:
            await phone.close()
            assert await daemon.stop(timeout=15) == 0
        events = daemon.log_events()
        failed = [e for e in events if e["event"] == "agent.connect_failed"]
        assert failed[0]["kind"] == "connect"
        assert failed[0]["fallback"] == fallback
        assert failed[0]["sip_code"] == (503 if fallback == "reject" else None)
        if fallback == "apology":  # the call had media: its RTP statistics are logged
            [ended] = [e for e in events if e["event"] == "call.ended"]
            print(f"call.ended stats: {ended.get('stats')}")
            assert ended.get("stats") is not None, ended
            assert ended["stats"]["tx_packets"] > 0, ended


async def test_sigterm_with_calls_up_drains_and_exits_0(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """Two calls up: SIGTERM hangs them up after the drain bound, un-REGISTERs, exits 0."""
    async with running_kamailio(tmp_path / "k") as kamailio:
        env = _env(daemon_env, kamailio.uri) | {"SIPAI_DAEMON__DRAIN_SECONDS": "1"}
        daemon = DaemonProcess(env, script=ANSWERING, wait=None)
        await daemon.start()
        phones = [await TestPhone.start("a"), await TestPhone.start("b")]
        try:
            await daemon.ready(registered, timeout=20)
            calls = []
            for phone, user in zip(phones, ("1001", "1002"), strict=True):
                await phone.register(kamailio, user)
                dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
                await phone.expect("call", call=dialled["call"], state="CONFIRMED")
                calls.append(dialled["call"])
            stopped_at = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            for phone, call in zip(phones, calls, strict=True):
                bye = await phone.expect("call", call=call, state="DISCONNECTED", timeout=10)
                assert bye["code"] == 200
            assert await daemon.wait(15) == 0
            assert time.monotonic() - stopped_at < 1 + 5
            assert await asyncio.to_thread(kamailio.contacts, "1000") == []
        finally:
            for phone in phones:
                await phone.close()
            daemon.kill()


async def test_stop_with_calls_on_every_worker(daemon_env: dict[str, str], tmp_path: Path) -> None:
    """Two workers, calls on both: /health lists them; SIGTERM exits 0 within the drain bound."""
    async with running_kamailio(tmp_path / "k") as kamailio:
        env = _env(daemon_env, kamailio.uri) | {
            "SIPAI_SIP__WORKERS": "2",
            "SIPAI_DAEMON__DRAIN_SECONDS": "2",
        }
        daemon = DaemonProcess(env, script=ANSWERING, wait=None)
        await daemon.start()
        phones = [await TestPhone.start(f"p{n}") for n in range(6)]
        try:
            await daemon.ready(_registered_everywhere, timeout=20)
            await asyncio.gather(
                *(p.register(kamailio, str(1001 + n)) for n, p in enumerate(phones))
            )
            for phone in phones:
                dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
                await phone.expect("call", call=dialled["call"], state="CONFIRMED")
            body = (await daemon.ready(registered, timeout=20)).json()
            workers = body["workers"]
            assert isinstance(workers, list)
            assert [w["registered"] for w in workers] == [True, True]
            assert sum(w["calls"] for w in workers) == 6
            assert all(w["calls"] >= 2 for w in workers)
            assert body["active_calls"] == 6
            assert body["queued_calls"] == 0
            stopped_at = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            assert await daemon.wait(20) == 0
            assert time.monotonic() - stopped_at < 2 + 6
            for phone in phones:
                await phone.expect("call", state="DISCONNECTED", timeout=10)
            assert await asyncio.to_thread(kamailio.contacts, "1000") == []
        finally:
            for phone in phones:
                await phone.close()
            daemon.kill()
