"""Failover to the embedded engine over SIP: the daemon, Kamailio, a phone, a fake cloud model.

The cloud model is the fake realtime server of tests/peers/realtime_server.py (refusing the
handshake, or dropping mid-call); the engine the call fails over to is the daemon's own
``/v1/realtime`` with Piper and Whisper, its brain a Chat Completions server in this process
(tests/peers/chat_server.py), so that what it was given and what it said can be checked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from config.schema import AgentSettings
from media.resample import resample
from media.wav import read_wav
from tests.peers.chat_server import ChatServer
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.realtime_server import FakeRealtime, FakeSession
from tests.support import DaemonProcess, registered

pytestmark = pytest.mark.e2e

GREETING = "Hello, how can I help?"
QUESTION = "What are your opening hours?"
ANSWER = "We are open from nine to five on weekdays."
PLAYOUT_MARGIN = 1.5  # s, after a phrase's own length, for its last frames to reach the phone
_models: dict[str, Any] = {}


def _piper(text: str, rate: int) -> NDArray[np.int16]:
    from daemon.speech.local import PiperSynthesizer  # noqa: PLC0415 - loaded once, lazily

    voice = _models.setdefault("piper", PiperSynthesizer())
    return resample(voice.synthesize(text), voice.rate, rate)


async def _heard(path: Path) -> str:
    from daemon.speech import SpeechToText  # noqa: PLC0415
    from daemon.speech.local import WhisperTranscriber  # noqa: PLC0415

    stt = _models.setdefault("whisper", SpeechToText(WhisperTranscriber()))
    recording = read_wav(path)
    text: str = await stt.transcribe(recording.samples, recording.rate)
    return text.lower()


@contextlib.asynccontextmanager
async def _daemon(
    tmp_path: Path, env: dict[str, str], fake: FakeRealtime, chat: ChatServer
) -> AsyncIterator[tuple[Kamailio, DaemonProcess]]:
    """Kamailio and the daemon, registered: the model at ``fake``, failing over to the engine
    whose brain is ``chat``."""
    async with running_kamailio(tmp_path / "k") as pbx:
        env = env | {
            "SIPAI_SIP__REGISTRAR": pbx.uri,
            "SIPAI_SIP__PASSWORD": password("1000"),
            "SIPAI_AGENT__BACKEND": "url",
            "SIPAI_AGENT__URL": fake.url,
            "SIPAI_AGENT__FALLBACK": "local",
            "SIPAI_ENGINE__BRAIN": "chat",
            "SIPAI_ENGINE__CHAT_URL": chat.url,
            "SIPAI_ENGINE__CHAT_MODEL": "tiny-llm",
        }
        async with DaemonProcess(env, wait=registered) as daemon:
            yield pbx, daemon


async def _call(pbx: Kamailio, tmp_path: Path) -> tuple[TestPhone, int]:
    """The phone dials the daemon and records what it hears from the start."""
    phone = await TestPhone.start("caller")
    await phone.register(pbx, "1001")
    dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
    call = int(dialled["call"])
    await phone.expect("media", call=call, status="active", timeout=15)
    await phone.command("record", call=call, wav=str(tmp_path / "heard.wav"))
    return phone, call


async def _record(api: str) -> dict[str, Any]:
    """The newest inbound call record, once it is final."""
    async with httpx.AsyncClient() as client, asyncio.timeout(10):
        while True:
            calls = (await client.get(f"{api}/calls?direction=inbound")).json()["calls"]
            if calls and calls[0]["status"] != "in_progress":
                return dict(calls[0])
            await asyncio.sleep(0.1)


async def _said(api: str, text: str, within: float = 30.0) -> None:
    """Wait until the newest inbound call's transcript has the agent's turn ``text`` (recorded
    once its response is done), then for that phrase to be played out to the phone: its
    length in the local voice, and a margin."""
    async with httpx.AsyncClient() as client, asyncio.timeout(within):
        while True:
            calls = (await client.get(f"{api}/calls?direction=inbound")).json()["calls"]
            turns = calls[0]["transcript"] if calls else []
            if any(t["role"] == "agent" and t["text"] == text for t in turns):
                break
            await asyncio.sleep(0.1)
    await asyncio.sleep(len(_piper(text, 8000)) / 8000 + PLAYOUT_MARGIN)


def _after_failover_ms(events: list[dict[str, Any]], event: str, **fields: Any) -> float:
    """How long after the log's ``agent.failover`` the first ``event`` (with ``fields``) came."""

    def at(name: str, **match: Any) -> datetime:
        found = next(
            (
                e
                for e in events
                if e["event"] == name and all(e.get(k) == v for k, v in match.items())
            ),
            None,
        )
        assert found is not None, f"no {name} {match} in the log"
        return datetime.fromisoformat(found["timestamp"])

    return round((at(event, **fields) - at("agent.failover")).total_seconds() * 1000, 1)


def _in_order(text: str, *phrases: str) -> bool:
    at = [text.find(p) for p in phrases]
    return all(a >= 0 for a in at) and at == sorted(at)


async def test_a_refused_model_fails_over_to_the_engine_at_connect(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """The cloud answers the handshake with HTTP 503: the caller hears the bridge phrase, then
    the engine's greeting (its own session, named after the call), never the apology; the
    record shows the failover with phase connect, and the call completed."""
    greeting = "Good morning, this is the front desk."
    chat = ChatServer(greeting)
    try:
        async with FakeRealtime("ga") as fake, _daemon(tmp_path, daemon_env, fake, chat) as up:
            fake.refuse = 503
            pbx, daemon = up
            phone, call = await _call(pbx, tmp_path)
            try:
                await _said(daemon.base_url, greeting)  # after the bridge phrase
                await phone.command("hangup", call=call)
                await phone.expect("recorded", call=call)
                record = await _record(daemon.base_url)
            finally:
                await phone.close()
            events = daemon.log_events()
    finally:
        chat.close()
    assert fake.refused == 1
    heard = await _heard(tmp_path / "heard.wav")
    print(f"the phone heard: {heard!r}")
    assert AgentSettings().bridge_phrase == "One moment, please."
    assert _in_order(heard, "moment", "front desk"), heard
    assert "sorry" not in heard, heard
    assert "not available" not in heard, heard
    [opened] = [e for e in events if e["event"] == "engine.session_open"]
    assert opened["call"].startswith("0:"), opened
    [failover] = [e for e in events if e["event"] == "agent.failover"]
    assert (failover["phase"], failover["kind"], failover["to"]) == ("connect", "connect", "local")
    bridge_ms = _after_failover_ms(events, "agent.bridge_queued")
    ready_ms = _after_failover_ms(events, "agent.session_ready", failed_over=True)
    print(f"after the failover: bridge phrase queued {bridge_ms} ms, engine session {ready_ms} ms")
    assert record["status"] == "completed", record
    assert record["end_cause"] == "caller hung up"
    [entry] = record["black_box"]["model"]["failovers"]
    assert (entry["phase"], entry["kind"], entry["to"], entry["at_s"]) == (
        "connect",
        "connect",
        "local",
        0.0,
    )
    assert "HTTP 503" in entry["error"], entry
    assert [t["text"] for t in record["transcript"] if t["role"] == "agent"] == [
        greeting
    ]  # the bridge phrase, said in the local voice, is no turn of the conversation


async def test_a_model_dropped_mid_call_fails_over_with_the_conversation(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """The cloud greets, hears a question, then drops its socket (max_reconnects = 0): the
    engine's brain is given the conversation so far, the caller hears the greeting, the
    bridge phrase and then the engine's answer, and the record shows phase session."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("response.create")
        await session.respond(_piper(GREETING, session.output_rate), GREETING)
        await session.caller_said(QUESTION)
        await asyncio.sleep(len(_piper(GREETING, 8000)) / 8000 + 0.5)  # heard out
        session.drop()

    chat = ChatServer(ANSWER)
    env = daemon_env | {"SIPAI_REALTIME__MAX_RECONNECTS": "0"}
    try:
        async with FakeRealtime("ga", script) as fake, _daemon(tmp_path, env, fake, chat) as up:
            pbx, daemon = up
            phone, call = await _call(pbx, tmp_path)
            try:
                await _said(daemon.base_url, ANSWER)  # the greeting, the bridge, the answer
                await phone.command("hangup", call=call)
                await phone.expect("recorded", call=call)
                record = await _record(daemon.base_url)
            finally:
                await phone.close()
            events = daemon.log_events()
    finally:
        chat.close()
    bridge_ms = _after_failover_ms(events, "agent.bridge_queued")
    replaced_ms = _after_failover_ms(events, "agent.session_replaced", reason="failover")
    print(f"after the loss: bridge phrase queued {bridge_ms} ms, engine session {replaced_ms} ms")
    assert len(fake.sessions) == 1  # no reconnect to the cloud: straight to the engine
    assert fake.violations == []
    [asked] = chat.requests
    replayed = [(m["role"], m["content"]) for m in asked["messages"] if m["role"] != "system"]
    assert replayed == [("assistant", GREETING), ("user", QUESTION)], asked["messages"]
    heard = await _heard(tmp_path / "heard.wav")
    print(f"the phone heard: {heard!r}")
    assert _in_order(heard, "help", "moment", "weekdays"), heard
    assert "sorry" not in heard, heard
    assert record["status"] == "completed", record
    [entry] = record["black_box"]["model"]["failovers"]
    assert (entry["phase"], entry["kind"], entry["to"]) == ("session", "closed", "local")
    assert entry["at_s"] > 1.0, entry
    reasons = [r["reason"] for r in record["black_box"]["model"]["replacements"]]
    assert reasons == ["failover"]
    assert [t["text"] for t in record["transcript"]] == [GREETING, QUESTION, ANSWER]
