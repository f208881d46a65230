"""Inbound calls answered by a realtime model: the daemon, Kamailio, a phone and a fake model.

The fake model is a real WebSocket server in this process (tests/peers/realtime_server.py)
that checks every client event against the ``openai`` package's typed models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from numpy.typing import NDArray

from media.resample import resample
from media.wav import read_wav, write_wav
from tests.audio import tone, tone_level_db
from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.realtime_server import RATE_LIMITED, FakeRealtime, FakeSession
from tests.peers.receiver import Receiver
from tests.support import DaemonProcess, callee, registered

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
async def _daemon(
    pbx: Kamailio, env: dict[str, str], fake: FakeRealtime, backend: str = "url"
) -> AsyncIterator[str]:
    """The daemon, registered, talking to ``fake``; yields its API base URL."""
    env = (
        {"SIPAI_AGENT__URL": fake.url}
        | env
        | {
            "SIPAI_SIP__REGISTRAR": pbx.uri,
            "SIPAI_SIP__PASSWORD": password("1000"),
            "SIPAI_AGENT__BACKEND": backend,
            "SIPAI_AGENT__DIALECT": fake.dialect,
        }
    )
    async with DaemonProcess(env, wait=registered) as daemon:
        yield daemon.base_url


async def _call(
    pbx: Kamailio, name: str, user: str, short_jitter_buffer: bool = False
) -> tuple[TestPhone, int]:
    phone = await TestPhone.start(name, short_jitter_buffer)
    await phone.register(pbx, user)
    dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
    await phone.expect("media", call=dialled["call"], status="active", timeout=15)
    return phone, int(dialled["call"])


async def _inbound_record(api: str) -> dict[str, Any]:
    """The newest inbound call record, once it is final."""
    async with httpx.AsyncClient() as client, asyncio.timeout(10):
        while True:
            calls = (await client.get(f"{api}/calls?direction=inbound")).json()["calls"]
            if calls and calls[0]["status"] != "in_progress":
                return dict(calls[0])
            await asyncio.sleep(0.1)


@pytest.mark.parametrize(("dialect", "fmt"), [("ga", "pcmu"), ("ga", "pcm24"), ("beta", "pcmu")])
async def test_audio_both_ways(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path, dialect: str, fmt: str
) -> None:
    """The model's greeting is heard by the phone; the phone's words reach the model intact;
    a hang-up closes the model socket at once."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("response.create")
        await session.respond(_piper(GREETING, session.output_rate), GREETING)
        await session.caller_said(CALLER)

    env = daemon_env | {"SIPAI_AGENT__INPUT_FORMAT": fmt, "SIPAI_AGENT__OUTPUT_FORMAT": fmt}
    async with FakeRealtime(dialect, script) as fake, _daemon(pbx, env, fake) as api:
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
            record = await _inbound_record(api)
        finally:
            await phone.close()
        assert (record["status"], record["end_cause"], record["caller"]) == (
            "completed",
            "caller hung up",
            "1001",
        )
        assert [(t["role"], t["text"]) for t in record["transcript"]] == [
            ("agent", GREETING),
            ("caller", CALLER),
        ]
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
    goodbye said before it has been heard in full. (The caller matches a route.)"""
    goodbye_seconds = len(_piper(GOODBYE, 8000)) / 8000

    async def script(session: FakeSession) -> None:
        await session.wait_for(
            "conversation.item.create",
            timeout=20,
            where=lambda e: "12#" in str(e["item"].get("content")),
        )
        await session.respond(_piper(GOODBYE, session.output_rate), GOODBYE)
        await session.call_tool("end_call", {})

    config = tmp_path / "sipai.toml"  # this caller gets its own instructions
    config.write_text('[[agent.routes]]\ncaller = "100[2-3]"\ninstructions = "Desk two."\n')
    env = daemon_env | {"SIPAI_AGENT__GREETING": "", "SIPAI_CONFIG": str(config)}
    async with FakeRealtime("ga", script) as fake, _daemon(pbx, env, fake) as api:
        phone, call = await _call(pbx, "caller", "1002")
        try:
            await phone.command("record", call=call, wav=str(tmp_path / "heard.wav"))
            await asyncio.sleep(0.5)
            await phone.command("dtmf", call=call, digits="12#")
            ended = await phone.expect("call", call=call, state="DISCONNECTED", timeout=20)
            await phone.expect("recorded", call=call)
            record = await _inbound_record(api)
        finally:
            await phone.close()
        assert ended["code"] == 200
        assert record["end_cause"] == "end_call"  # ours, though the media ends first
        assert fake.violations == []
        assert fake.errors == []
        session = fake.sessions[0]
        assert session.session["instructions"] == "Desk two."
        (output,) = session.of("conversation.item.create")[1:]  # after the keys: the tool's
        assert output["item"]["type"] == "function_call_output"
        recording = read_wav(tmp_path / "heard.wav")
        heard = await _heard(recording.samples, recording.rate)
        # the last word reached the phone (tiny.en hears it as "goodbye" or "bye bye")
        assert "calling" in heard, heard
        assert re.search(r"bye\W*$", heard), heard
        assert recording.duration >= goodbye_seconds  # hung up after the goodbye, not during


def _speech_start_ms(pcm: NDArray[np.int16], after_ms: int = 300) -> int | None:
    """Where sound starts in ``pcm`` (8 kHz), in ms, looking from ``after_ms`` on."""
    frames = len(pcm) // 160
    level = np.sqrt(np.mean(pcm[: frames * 160].astype(np.float64).reshape(frames, 160) ** 2, 1))
    loud = np.flatnonzero(level[after_ms // 20 :] > 300)
    return None if len(loud) == 0 else int(loud[0] + after_ms // 20) * 20


@pytest.mark.realtime
async def test_barge_in_silences_the_phone_and_truncates_at_what_it_heard(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """The phone speaks over a long response: within 60 ms of speech_started the phone hears
    silence, the response is cancelled, and the truncate's audio_end_ms is what the phone
    really heard of the item (within 40 ms)."""
    state: dict[str, Any] = {}

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")  # the call is up
        long_reply = tone(600, session.output_rate, 12.0, amplitude=8000)
        speaking = asyncio.create_task(session.respond(long_reply, pace=0.5))

        def caller_spoke_300ms(pcm: NDArray[np.int16]) -> bool:
            start = _speech_start_ms(pcm)
            return start is not None and len(pcm) // 8 >= start + 300

        await session.wait_for_input(caller_spoke_300ms, timeout=20)
        start = _speech_start_ms(session.input_pcm)
        assert start is not None
        state["event_at"] = await session.speech_started(start)
        state["spoken"] = await speaking

    env = daemon_env | {"SIPAI_AGENT__GREETING": ""}
    async with FakeRealtime("ga", script) as fake, _daemon(pbx, env, fake):
        phone, call = await _call(pbx, "caller", "1003", short_jitter_buffer=True)
        try:
            await phone.command("tap", call=call)
            wav = tmp_path / "caller.wav"
            write_wav(wav, 8000, _piper(CALLER, 8000))
            await asyncio.sleep(2.5)
            await phone.command("play", call=call, wav=str(wav))
            session = await fake.session()
            truncate = (await session.wait_for("conversation.item.truncate", timeout=20)).event
            await asyncio.sleep(0.5)
            times = (await phone.command("tap_stop", call=call, wav=str(tmp_path / "t.wav")))[
                "times"
            ]
            await phone.command("hangup", call=call)
        finally:
            await phone.close()
    assert fake.violations == []
    assert fake.errors == []
    assert state["spoken"][2] is True  # the response was still streaming: cancelled
    assert session.cancels == 1
    heard = read_wav(tmp_path / "t.wav").samples
    loud = np.flatnonzero(np.abs(heard.astype(np.int32)) > 800)  # the tone, not the fade tail
    first, last = int(loud[0]), int(loud[-1])
    heard_ms = (last - first) / 8
    assert abs(heard_ms - truncate["audio_end_ms"]) <= 40, (heard_ms, truncate)
    # A frame arrives as a block: its samples are heard from its arrival time on.
    silent_at = times[last // 160] + (last % 160 + 1) / 8000
    assert silent_at - state["event_at"] <= 0.060, silent_at - state["event_at"]


async def test_tools_dtmf_http_and_transfer(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """send_dtmf reaches the phone; an HTTP tool's JSON answer returns to the model as the
    function output; transfer_call REFERs the caller to another phone they then talk to."""
    backend = Receiver(body=b'{"status": "shipped", "eta": "Tuesday"}')
    outputs: dict[str, dict[str, Any]] = {}

    async def tool(session: FakeSession, name: str, arguments: dict[str, Any]) -> None:
        call_id = await session.call_tool(name, arguments)
        received = await session.wait_for(
            "conversation.item.create", where=lambda e: e["item"].get("call_id") == call_id
        )
        outputs[name] = json.loads(received.event["item"]["output"])

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await tool(session, "send_dtmf", {"digits": "42"})
        await tool(session, "order_status", {"order": "A17"})
        await tool(session, "no_such_tool", {})
        await session.respond(_piper("I am transferring you now.", session.output_rate))
        await session.call_tool("transfer_call", {"extension": "1005"})

    config = tmp_path / "sipai.toml"
    config.write_text(
        "[agent]\n"
        'transfer_extensions = ["1005"]\n'
        "[[agent.tools]]\n"
        'name = "order_status"\n'
        'description = "The status of an order."\n'
        'parameters = { type = "object", properties = { order = { type = "string" } } }\n'
        f'url = "{backend.url}"\n'
        'bearer_token = "tool-secret"\n'
    )
    env = daemon_env | {"SIPAI_AGENT__GREETING": "", "SIPAI_CONFIG": str(config)}
    try:
        async with (
            callee(pbx, "1005", answer_after_ms=100, name="target") as target,
            FakeRealtime("ga", script) as fake,
            _daemon(pbx, env, fake) as api,
        ):
            phone, call = await _call(pbx, "caller", "1004")
            try:
                digits = [(await phone.expect("dtmf", call=call))["digit"] for _ in "42"]
                moved = await phone.expect("transfer_request", timeout=30)
                incoming = await target.expect("incoming", timeout=10)
                await target.expect("media", call=incoming["call"], status="active")
                await phone.expect("call", call=call, state="DISCONNECTED", timeout=10)
                await target.command("record", call=incoming["call"], wav=str(tmp_path / "t.wav"))
                wav = tmp_path / "tone.wav"
                write_wav(wav, 8000, tone(1000, 8000, 1.5))
                await phone.command("play", call=moved["new_call"], wav=str(wav))
                await asyncio.sleep(2.0)
                await target.command("hangup", call=incoming["call"])
                await target.expect("recorded", call=incoming["call"])
                record = await _inbound_record(api)
            finally:
                await phone.close()
            session = fake.sessions[0]
        assert record["end_cause"] == "transferred"
        assert fake.violations == []
        assert fake.errors == []
        assert digits == ["4", "2"]
        assert outputs["send_dtmf"] == {"ok": True, "sent": "42"}
        assert outputs["order_status"] == {"status": "shipped", "eta": "Tuesday"}
        assert "unknown tool" in outputs["no_such_tool"]["error"]
        (posted,) = backend.requests()
        assert json.loads(posted.body) == {"order": "A17"}
        assert posted.headers["authorization"] == "Bearer tool-secret"
        tools = {t["name"] for t in session.session["tools"]}
        assert tools == {"end_call", "send_dtmf", "transfer_call", "order_status"}
        heard = read_wav(tmp_path / "t.wav")
        assert tone_level_db(heard.samples, 1000, heard.rate) > -30  # caller <-> target talk
    finally:
        backend.close()


async def test_a_dropped_model_socket_is_reconnected_with_the_conversation(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """The model's socket drops mid-call (1006): a new session gets the conversation so far
    as text, and the call goes on with it."""

    async def script(session: FakeSession) -> None:
        if session is fake.sessions[0]:
            await session.wait_for("input_audio_buffer.append")
            await session.respond(_piper("Hello.", session.output_rate), "Hello, how can I help?")
            await session.caller_said("I need to move my appointment.")
            await asyncio.sleep(0.5)
            session.drop()
            return
        await session.wait_for(
            "conversation.item.create",
            where=lambda e: "move my appointment" in json.dumps(e),
        )
        await session.respond(_piper("We are back. Which day suits you?", session.output_rate))

    env = daemon_env | {"SIPAI_AGENT__GREETING": ""}
    async with FakeRealtime("ga", script) as fake, _daemon(pbx, env, fake):
        phone, call = await _call(pbx, "caller", "1006")
        try:
            await phone.command("record", call=call, wav=str(tmp_path / "heard.wav"))
            second = await fake.session(1, timeout=20)
            await asyncio.sleep(4.0)
            await phone.command("hangup", call=call)
            await phone.expect("recorded", call=call)
        finally:
            await phone.close()
    assert fake.violations == []
    assert fake.errors == []
    replayed = [e["item"] for e in second.of("conversation.item.create")]
    assert [(i["role"], i["content"][0]["text"]) for i in replayed] == [
        ("assistant", "Hello, how can I help?"),
        ("user", "I need to move my appointment."),
    ]
    recording = read_wav(tmp_path / "heard.wav")
    heard = await _heard(recording.samples, recording.rate)
    assert "which day" in heard, heard  # said by the second session only


@pytest.mark.parametrize(
    ("dialect", "path"),
    [
        ("ga", "/openai/v1/realtime?model=frontdesk"),
        ("beta", "/openai/realtime?api-version=2025-04-01-preview&deployment=frontdesk"),
    ],
)
async def test_azure_url_and_key_header(
    pbx: Kamailio, daemon_env: dict[str, str], dialect: str, path: str
) -> None:
    """backend = "azure": the deployment in the URL, the key in an api-key header."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("response.create")
        await session.respond(_piper("Hello.", session.output_rate), "Hello.")

    async with FakeRealtime(dialect, script) as fake:
        env = daemon_env | {
            "SIPAI_AGENT__BACKEND": "azure",
            "SIPAI_AGENT__API_KEY": "az-key",
            "SIPAI_AGENT__MODEL": "frontdesk",
        }
        gateway = fake.url.replace("ws://", "http://").removesuffix("/v1/realtime")
        async with _daemon(pbx, env | {"SIPAI_AGENT__URL": gateway}, fake, backend="azure"):
            phone, call = await _call(pbx, "caller", "1007")
            try:
                session = await fake.session()
                await session.wait_for("response.create")
                await phone.command("hangup", call=call)
            finally:
                await phone.close()
    assert fake.violations == []
    assert session.path == path
    assert session.headers["api-key"] == "az-key"
    assert "authorization" not in session.headers


def _quiet_for(pcm: NDArray[np.int16], start_ms: int, quiet_ms: int) -> bool:
    """After sound began at ``start_ms``, the last ``quiet_ms`` have been quiet."""
    tail = pcm[-quiet_ms * 8 :]
    return len(pcm) // 8 > start_ms + quiet_ms and float(np.sqrt(np.mean(tail**2.0))) < 300


async def test_greeting_guard_ignores_a_noise_but_not_the_caller(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """A 300 ms noise at pick-up (speech_started, then speech_stopped) does not cut the
    greeting; the caller really speaking over it (longer than the guard) does."""
    state: dict[str, Any] = {}

    async def script(session: FakeSession) -> None:
        await session.wait_for("response.create")
        greeting = tone(600, session.output_rate, 10.0, amplitude=8000)
        speaking = asyncio.create_task(session.respond(greeting, pace=0.5))
        for round_ in ("noise", "speech"):
            heard_before = session.input_ms

            def spoke(pcm: NDArray[np.int16], after: int = heard_before) -> bool:
                start = _speech_start_ms(pcm, after)
                return start is not None and len(pcm) // 8 >= start + 250

            await session.wait_for_input(spoke, timeout=20)
            start = _speech_start_ms(session.input_pcm, heard_before)
            assert start is not None
            await session.speech_started(start)
            # A server VAD ends a turn after 500 ms of silence.
            await session.wait_for_input(lambda pcm, s=start: _quiet_for(pcm, s, 500), 20)
            await session.send(
                {
                    "type": "input_audio_buffer.speech_stopped",
                    "audio_end_ms": session.input_ms - 500,
                    "item_id": "item_user",
                }
            )
            state[round_] = start
        state["spoken"] = await speaking

    env = daemon_env | {"SIPAI_AGENT__GREETING_GUARD_MS": "1200"}
    async with FakeRealtime("ga", script) as fake, _daemon(pbx, env, fake):
        phone, call = await _call(pbx, "caller", "1008")
        try:
            noise = tmp_path / "noise.wav"
            rng = np.random.default_rng(7)
            write_wav(noise, 8000, (rng.standard_normal(2400) * 3000).astype(np.int16))
            speech = tmp_path / "caller.wav"
            write_wav(speech, 8000, _piper(CALLER, 8000))
            await asyncio.sleep(1.0)
            await phone.command("play", call=call, wav=str(noise))
            await asyncio.sleep(2.0)
            await phone.command("play", call=call, wav=str(speech))
            session = await fake.session()
            truncate = (await session.wait_for("conversation.item.truncate", timeout=20)).event
            await asyncio.sleep(0.5)
            await phone.command("hangup", call=call)
        finally:
            await phone.close()
    assert fake.violations == []
    assert fake.errors == []
    assert len(session.of("conversation.item.truncate")) == 1  # the noise cut nothing
    # Cut once the caller had spoken for the guard's 1.2 s, well after the noise.
    assert truncate["audio_end_ms"] > state["noise"] + 1500, (truncate, state)


async def test_rate_limit_ends_the_call_politely_and_is_recorded(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """A rate-limit error from the model: the caller hears the apology, the daemon hangs up,
    and the call record says why."""

    async def script(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await session.send(RATE_LIMITED)

    env = daemon_env | {"SIPAI_AGENT__GREETING": ""}
    async with FakeRealtime("ga", script) as fake, _daemon(pbx, env, fake) as api:
        phone, call = await _call(pbx, "caller", "1009")
        try:
            await phone.command("record", call=call, wav=str(tmp_path / "heard.wav"))
            await phone.expect("call", call=call, state="DISCONNECTED", timeout=20)
            await phone.expect("recorded", call=call)
            record = await _inbound_record(api)
        finally:
            await phone.close()
    assert len(fake.sessions) == 1  # a rate limit is not reconnected
    assert record["status"] == "failed"
    assert "rate_limit" in record["error"]
    assert record["end_cause"].startswith("model rate_limit")
    recording = read_wav(tmp_path / "heard.wav")
    heard = await _heard(recording.samples, recording.rate)
    assert "sorry" in heard or "not available" in heard, heard


async def test_sessions_rotate_between_turns(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """Past realtime.max_session_minutes a new session takes over after a response, with the
    conversation replayed; the old one is closed."""

    async def script(session: FakeSession) -> None:
        if session is not fake.sessions[0]:
            return
        await session.wait_for("response.create")
        await session.respond(_piper("Hello.", session.output_rate), "Hello.")
        await session.caller_said("What are your opening hours?")
        await asyncio.sleep(3.5)
        await session.respond(_piper("Nine to five.", session.output_rate), "Nine to five.")

    env = daemon_env | {"SIPAI_REALTIME__MAX_SESSION_MINUTES": "0.05"}  # 3 s
    async with FakeRealtime("ga", script) as fake, _daemon(pbx, env, fake):
        phone, call = await _call(pbx, "caller", "1010")
        try:
            second = await fake.session(1, timeout=20)
            await second.wait_for("conversation.item.create", timeout=10)
            await asyncio.sleep(0.3)
            async with asyncio.timeout(5):
                await fake.sessions[0].ws.wait_closed()
            await phone.command("hangup", call=call)
        finally:
            await phone.close()
    assert fake.violations == []
    assert fake.errors == []
    replayed = [e["item"]["content"][0]["text"] for e in second.of("conversation.item.create")]
    assert replayed == ["Hello.", "What are your opening hours?", "Nine to five."]
