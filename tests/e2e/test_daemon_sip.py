"""The daemon process with SIP: registration in /health, calls refused or drained on stop."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, SIPAI, free_port
from tests.peers.kamailio import password, running_kamailio
from tests.peers.phone import TestPhone

pytestmark = pytest.mark.e2e


async def _health(port: int, timeout: float = 20.0, every_worker: bool = False) -> dict[str, Any]:
    """/health once the extension is registered (by every worker, if asked)."""
    async with httpx.AsyncClient() as client, asyncio.timeout(timeout):
        while True:
            try:
                body: dict[str, Any] = (await client.get(f"http://127.0.0.1:{port}/health")).json()
                workers = body["workers"]
                if body["sip_registered"] and (
                    not every_worker or all(w["registered"] for w in workers)
                ):
                    return body
            except httpx.TransportError:
                pass  # not listening yet
            await asyncio.sleep(0.1)


def _env(daemon_env: dict[str, str], registrar: str) -> dict[str, str]:
    return daemon_env | {
        "SIPAI_SIP__REGISTRAR": registrar,
        "SIPAI_SIP__PASSWORD": password("1000"),
        "SIPAI_SIP__RTP_PORT_MIN": "41000",
        "SIPAI_SIP__RTP_PORT_MAX": "41099",
    }


@pytest.mark.parametrize("fallback", ["apology", "reject"])
async def test_model_unreachable_apology_or_503(
    daemon_env: dict[str, str], tmp_path: Path, fallback: str
) -> None:
    """/health reports the registration; with no model to talk to, an inbound call hears the
    apology in the local voice and is hung up, or is rejected with 503, never left silent."""
    from daemon.speech import SpeechToText  # noqa: PLC0415 - heavy, this test only
    from daemon.speech.local import WhisperTranscriber  # noqa: PLC0415
    from media.wav import read_wav  # noqa: PLC0415

    async with running_kamailio(tmp_path / "k") as kamailio:
        env = _env(daemon_env, kamailio.uri) | {
            "SIPAI_AGENT__BACKEND": "url",
            "SIPAI_AGENT__URL": f"ws://127.0.0.1:{free_port()}/v1/realtime",
            "SIPAI_AGENT__ON_CONNECT_FAILURE": fallback,
        }
        daemon = await asyncio.create_subprocess_exec(
            SIPAI, "run", env=env, stdout=asyncio.subprocess.PIPE
        )
        phone = await TestPhone.start("caller")
        try:
            body = await _health(int(daemon_env["SIPAI_API__PORT"]))
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
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.wait(), 15) == 0
        assert daemon.stdout is not None
        events = [json.loads(line) for line in (await daemon.stdout.read()).splitlines()]
        failed = [e for e in events if e["event"] == "agent.connect_failed"]
        assert failed[0]["kind"] == "connect"
        assert failed[0]["fallback"] == fallback
        assert failed[0]["sip_code"] == (503 if fallback == "reject" else None)


async def test_sigterm_with_calls_up_drains_and_exits_0(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """Two calls up: SIGTERM hangs them up after the drain bound, un-REGISTERs, exits 0."""
    async with running_kamailio(tmp_path / "k") as kamailio:
        env = _env(daemon_env, kamailio.uri) | {"SIPAI_DAEMON__DRAIN_SECONDS": "1"}
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "tests" / "e2e" / "answering_supervisor.py"),
            env=env,
            stdout=asyncio.subprocess.PIPE,
        )
        phones = [await TestPhone.start("a"), await TestPhone.start("b")]
        try:
            await _health(int(daemon_env["SIPAI_API__PORT"]))
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
            assert await asyncio.wait_for(daemon.wait(), 15) == 0
            assert time.monotonic() - stopped_at < 1 + 5
            assert await asyncio.to_thread(kamailio.contacts, "1000") == []
        finally:
            for phone in phones:
                await phone.close()
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()


async def test_stop_with_calls_on_every_worker(daemon_env: dict[str, str], tmp_path: Path) -> None:
    """Two workers, calls on both: /health lists them; SIGTERM exits 0 within the drain bound."""
    async with running_kamailio(tmp_path / "k") as kamailio:
        env = _env(daemon_env, kamailio.uri) | {
            "SIPAI_SIP__WORKERS": "2",
            "SIPAI_DAEMON__DRAIN_SECONDS": "2",
        }
        daemon = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "tests" / "e2e" / "answering_supervisor.py"),
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
        )
        phones = [await TestPhone.start(f"p{n}") for n in range(6)]
        try:
            port = int(daemon_env["SIPAI_API__PORT"])
            await _health(port, every_worker=True)
            await asyncio.gather(
                *(p.register(kamailio, str(1001 + n)) for n, p in enumerate(phones))
            )
            for phone in phones:
                dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
                await phone.expect("call", call=dialled["call"], state="CONFIRMED")
            body = await _health(port)
            workers = body["workers"]
            assert isinstance(workers, list)
            assert [w["registered"] for w in workers] == [True, True]
            assert sum(w["calls"] for w in workers) == 6
            assert all(w["calls"] >= 2 for w in workers)
            assert body["active_calls"] == 6
            assert body["queued_calls"] == 0
            stopped_at = time.monotonic()
            daemon.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(daemon.wait(), 20) == 0
            assert time.monotonic() - stopped_at < 2 + 6
            for phone in phones:
                await phone.expect("call", state="DISCONNECTED", timeout=10)
            assert await asyncio.to_thread(kamailio.contacts, "1000") == []
        finally:
            for phone in phones:
                await phone.close()
            if daemon.returncode is None:
                daemon.kill()
                await daemon.wait()
