"""The typed IPC messages, alone and between two real Connections on a Unix socket pair."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError
from structlog.testing import capture_logs

from config import Settings
from daemon.blackbox import RecordingInfo
from daemon.ipc import messages as m
from daemon.ipc.connection import Connection, IpcError
from daemon.pool_state import hello_reply
from sip.events import (
    CallAnswered,
    CallEnded,
    CallRinging,
    DtmfReceived,
    IncomingCall,
    MediaStats,
    RegistrationChanged,
    TransferProgress,
)

PCM = np.array([0, 1, -1, 32767, -32768, 1234], dtype=np.int16)
STATS = MediaStats(10, 1, 2.5, 12, 9, 0, 1, 3)
EXAMPLES: list[m.Message] = [
    m.Ping(),
    m.PingReply(
        registered=True,
        conference_ports=3,
        calls=1,
        pjsua_calls=2,
        refused={"rate": 4},
        tasks=9,
        fds=20,
        outbound={"c1": m.HeldCall(audio={"message": m.HeldAudio(samples=6, sha256="ab")})},
        bad_frames=1,
        web_calls=["web-1"],
    ),
    m.Shutdown(),
    m.Done(),
    m.Outbound(
        call_id="c1",
        request={"message": "Hello.", "extension": "1001", "ring_timeout": 30},
        audio={"message": PCM, "prompt": PCM[:2]},
        amd={"initial_silence_ms": 2500, "beep_purity": 0.8},
    ),
    m.OutboundReply(result={"status": "completed", "message_played": True}),
    m.MakeCall(target="1001", ring_timeout=10.5),
    m.MakeCallReply(call="w0-1"),
    m.Hangup(call="w0-1"),
    m.WebOffer(sdp="v=0\r\n", mode="agent", record_id="in-00ff", caller="web:default"),
    m.WebOfferReply(sdp="v=0\r\n", call="web-1"),
    m.WebHangup(call="web-1"),
    m.Hello(index=2, pid=4242),
    m.HelloReply(
        sip={"port": 5062, "password": "secret"},
        log_level="info",
        log_format="json",
        inbound_policy=None,
        agent={"backend": "local"},
        api={"port": 8080},
        realtime={"max_reconnects": 2},
    ),
    m.Claim(sip_call_id="abc@pbx"),
    m.ClaimReply(granted=True),
    m.Synthesize(text="Hello.", rate=8000),
    m.SynthesizeReply(pcm=PCM),
    m.Transcribe(pcm=PCM, rate=8000, hint="yes no"),
    m.TranscribeReply(text="yes"),
    m.Ready(contact="sip:1000@127.0.0.1:5062"),
    m.OutboundStatus(call_id="c1", status="ringing"),
    m.OutboundDecided(
        call_id="c1",
        result={"status": "completed", "choice_response": "yes", "choice_raw_text": "dtmf:1"},
    ),
    m.InboundStarted(call="w0-2", sip_call_id="abc@pbx", caller="1001"),
    m.TranscriptTurn(call="w0-2", role="caller", text="Hi.", at=1.5),
    m.AgentFailed(call="w0-2", kind="rate_limit", error="slow down"),
    m.AgentFailover(call="w0-2", kind="closed", error="1006", phase="session", at=12.5),
    m.InboundDone(call="w0-2", cause="caller hung up"),
    m.WebCallEnded(call="web-1"),
    *(
        m.SipEventMessage(event=event)
        for event in (
            RegistrationChanged(True, 200, "OK"),
            RegistrationChanged(False, 401, "Unauthorized", retry_in=30.0, error="bad password"),
            IncomingCall("w0-2", "abc@pbx", "sip:1001@pbx", "Ann", "1001", {"x-tag": "1"}),
            CallRinging("w0-1", 180),
            CallAnswered("w0-1"),
            CallEnded("w0-1", 200, "Normal", "hangup", answered=True, stats=STATS),
            CallEnded("w0-3", 486, "Busy Here"),
            DtmfReceived("w0-2", "5", "rfc4733"),
            TransferProgress("w0-2", 180, "Ringing", final=False),
        )
    ),
]


def _wire(message: m.Message) -> m.Message:
    """``message`` as the far end reads it: through JSON text, validated by its class."""
    return type(message).model_validate(json.loads(json.dumps(message.body())))


def test_every_message_round_trips() -> None:
    """Each request, reply and event (every SIP event kind too) reads back field for field,
    audio sample for sample; the examples cover both tables and every reply."""
    for message in EXAMPLES:
        back = _wire(message)
        assert back.body() == message.body(), type(message).__name__
        for name, value in message:
            if isinstance(value, np.ndarray):
                assert np.array_equal(getattr(back, name), value)
    covered = {type(e) for e in EXAMPLES}
    tables = {*m.REQUESTS.values(), *m.EVENTS.values()}
    assert tables <= covered, tables - covered
    assert {r.reply for r in m.REQUESTS.values()} <= covered
    kinds = {type(e.event) for e in EXAMPLES if isinstance(e, m.SipEventMessage)}
    assert len(kinds) == 7, kinds
    sip = _wire(EXAMPLES[-4])
    assert isinstance(sip, m.SipEventMessage)
    assert sip.event == CallEnded("w0-1", 200, "Normal", "hangup", answered=True, stats=STATS)


def test_end_of_call_reports_round_trip() -> None:
    """A call's end carries its black box, its recording and the full stream statistics to
    the supervisor intact; a failure's phase is one of two names."""
    stats = MediaStats(
        200,
        10,
        3.5,
        201,
        198,
        0,
        0,
        2,
        rx_discarded=1,
        rx_jitter_max_ms=9.0,
        tx_reports=2,
        rtt_ms_mean=41.5,
        rtt_samples=3,
        jb_avg_delay_ms=40.0,
        codec="PCMU",
        playout_flushes=1,
    )
    ended = CallEnded("w0-4", 200, "Normal", answered=True, stats=stats, connect_seconds=12.5)
    assert _wire(m.SipEventMessage(event=ended)).body()["event"]["stats"]["rtt_ms_mean"] == 41.5
    assert m.SipEventMessage.model_validate(m.SipEventMessage(event=ended).body()).event == ended
    box = {"version": 1, "codec": "PCMU", "mos": {"rx": 4.1, "tx": None}, "turns": []}
    recording = RecordingInfo("/var/rec/in-1.wav", 12.48, 399404, "ab" * 32, False, 3, 8000)
    done = m.InboundDone(
        call="w0-4",
        cause="caller hung up",
        black_box=box,
        recording=recording,
        connect_seconds=12.5,
    )
    back = _wire(done)
    assert isinstance(back, m.InboundDone)
    assert (back.black_box, back.recording, back.connect_seconds) == (box, recording, 12.5)
    started = _wire(
        m.InboundStarted(
            call="w0-4",
            sip_call_id="a@b",
            caller="1001",
            record_id="in-00ff",
            extension="1000",
        )
    )
    assert started.body()["record_id"] == "in-00ff"
    failed = _wire(m.AgentFailed(call="w0-4", kind="unreachable", error="x", phase="connect"))
    assert failed.body()["phase"] == "connect"
    with pytest.raises(ValidationError, match="phase"):
        m.AgentFailed.model_validate({"call": "a", "kind": "k", "error": "e", "phase": "later"})


def test_web_offer_and_direction_round_trip() -> None:
    """A browser's offer (either mode, with its session), its answer or refusal, its hang-up,
    a browser call's start with direction web and the hello's [web] section cross intact;
    an inbound call's direction defaults to inbound and has no third value."""
    session = {"type": "realtime", "instructions": "Be brief.", "audio": {"output": {}}}
    offer = m.WebOffer(
        sdp="v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\n",
        mode="engine",
        session=session,
        caller="web:local",
        user_agent="Mozilla/5.0",
    )
    assert _wire(offer).body() == offer.body()
    assert m.REQUESTS["web_offer"] is m.WebOffer
    assert m.WebOffer.reply is m.WebOfferReply
    assert m.REQUESTS["web_hangup"] is m.WebHangup
    refused = _wire(m.WebOfferReply(status=503, detail="every web worker is full"))
    assert isinstance(refused, m.WebOfferReply)
    assert (refused.sdp, refused.status, refused.detail) == ("", 503, "every web worker is full")
    assert "error" not in refused.body(), "a top-level error is the IPC failure shape"
    assert m.WebOfferReply(sdp="v=0", call="web-2").status == 201
    web = _wire(
        m.InboundStarted(call="web-2", sip_call_id="webrtc:2", caller="web:local", direction="web")
    )
    assert web.body()["direction"] == "web"
    sip = m.InboundStarted.model_validate({"call": "w0-1", "sip_call_id": "a", "caller": "1"})
    assert sip.direction == "inbound"
    hello = m.HelloReply(
        sip={},
        log_level="info",
        log_format="json",
        inbound_policy=None,
        agent={},
        api={},
        realtime={},
        web={"enabled": True, "max_calls": 8, "ice_addresses": ["127.0.0.1"]},
    )
    assert _wire(hello).body()["web"]["ice_addresses"] == ["127.0.0.1"]
    told = hello_reply(Settings(), None).web
    assert (told["enabled"], told["workers"], told["max_calls"]) == (True, 1, 8)
    with pytest.raises(ValidationError, match="direction"):
        m.InboundStarted.model_validate(
            {"call": "a", "sip_call_id": "b", "caller": "c", "direction": "outbound"}
        )
    with pytest.raises(ValidationError, match="mode"):
        m.WebOffer.model_validate({"sdp": "v=0", "mode": "phone"})


@pytest.mark.parametrize(
    ("cls", "body", "problem"),
    [
        (m.Claim, {}, "sip_call_id: Field required"),
        (m.Claim, {"sip_call_id": "a", "granted": True}, "granted: Extra inputs"),
        (m.Synthesize, {"text": "x", "rate": "fast"}, "rate: Input should be a valid integer"),
        (m.Transcribe, {"pcm": "!!", "rate": 8000}, "pcm: Only base64 data is allowed"),
        (m.Transcribe, {"pcm": "AAAA", "rate": 8000}, "pcm: PCM16 audio has an odd number"),
        (m.SipEventMessage, {"event": {"type": "Teleported"}}, "unknown SIP event 'Teleported'"),
        (m.SipEventMessage, {"event": {"type": "CallAnswered", "call": "a", "x": 1}}, "no field"),
        (m.SipEventMessage, {"event": {"type": "CallRinging", "call": "a"}}, "code: Field"),
    ],
)
def test_bodies_that_do_not_fit_are_refused(
    cls: type[m.Message], body: dict[str, Any], problem: str
) -> None:
    """A missing, extra or mistyped field, bad audio or an unknown SIP event fails validation,
    and the first problem names the field."""
    with pytest.raises(m.ValidationError) as refused:
        cls.model_validate(body)
    assert problem in m.first_error(refused.value)


def test_pcm16_carries_ten_minutes_at_16_khz_bit_exact() -> None:
    """Ten minutes of 16 kHz noise (every int16 value possible) survives encode and decode."""
    samples = np.random.default_rng(15).integers(-32768, 32768, 16000 * 600, dtype=np.int16)
    started = time.perf_counter()
    text = json.dumps(m.SynthesizeReply(pcm=samples).body())
    back = m.SynthesizeReply.model_validate(json.loads(text)).pcm
    seconds = time.perf_counter() - started
    print(f"10 min at 16 kHz: {len(text)} bytes of JSON, round trip in {seconds:.2f} s")
    assert back.dtype == np.int16
    assert np.array_equal(back, samples)


@dataclass
class Ends:
    supervisor: Connection
    worker: Connection
    events: list[m.Event] = field(default_factory=list)


def _frame(envelope: dict[str, Any]) -> bytes:
    payload = json.dumps(envelope).encode()
    return struct.pack(">I", len(payload)) + payload


@pytest.fixture
async def ends() -> AsyncIterator[Ends]:
    up, down = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    received: list[m.Event] = []

    async def claim(message: m.Claim) -> m.ClaimReply:
        return m.ClaimReply(granted=message.sip_call_id == "mine")

    async def transcribe(message: m.Transcribe) -> m.TranscribeReply:
        digest = hashlib.sha256(message.pcm.astype("<i2").tobytes()).hexdigest()
        return m.TranscribeReply(text=f"{len(message.pcm)} {digest}")

    async def synthesize(message: m.Synthesize) -> m.SynthesizeReply:
        return m.SynthesizeReply(pcm=np.full(message.rate * 600, 7, dtype=np.int16))

    def ready(message: m.Ready) -> None:
        if message.contact == "boom":
            raise RuntimeError("listener broke")
        received.append(message)

    supervisor = Connection(
        *await asyncio.open_unix_connection(sock=up),
        "worker-0",
        {m.Claim: claim, m.Transcribe: transcribe, m.Synthesize: synthesize},
        {m.Ready: ready, m.OutboundStatus: received.append},
    )
    worker = Connection(*await asyncio.open_unix_connection(sock=down), "supervisor")
    readers = [asyncio.ensure_future(c.run()) for c in (supervisor, worker)]
    try:
        yield Ends(supervisor, worker, received)
    finally:
        for conn in (worker, supervisor):
            await conn.aclose()
        for reader in readers:
            reader.cancel()


async def test_a_body_with_a_missing_field_gets_an_error_reply(ends: Ends) -> None:
    """A claim without its Call-ID is answered "invalid claim: sip_call_id: ..." with an
    ipc.bad_body warning; the connection stays up and serves the next request."""
    writer = ends.worker._writer  # the worker's own socket: the frame comes from the worker
    with capture_logs() as logs:
        writer.write(_frame({"v": 1, "kind": "request", "type": "claim", "id": 500, "body": {}}))
        await writer.drain()
        granted = await ends.worker.request(m.Claim(sip_call_id="mine"))
    assert granted == m.ClaimReply(granted=True)
    [warning] = [e for e in logs if e["event"] == "ipc.bad_body"]
    assert (warning["log_level"], warning["type"]) == ("warning", "claim")
    assert warning["error"] == "sip_call_id: Field required"
    assert not ends.supervisor.closed.is_set()


async def test_invalid_and_unknown_requests_are_answered_with_errors(ends: Ends) -> None:
    """The requester sees "invalid x: field: reason" for a body that does not fit, "unknown
    request type 'x'" for a type the other end does not serve."""
    with pytest.raises(IpcError, match="invalid transcribe: pcm: Only base64 data is allowed"):
        await ends.worker.request(Bogus(pcm="!!", rate=8000))
    with pytest.raises(IpcError, match="unknown request type 'hangup'"):
        await ends.worker.request(m.Hangup(call="w0-1"))
    assert await ends.worker.request(m.Claim(sip_call_id="theirs")) == m.ClaimReply(granted=False)


class Bogus(m.Request[m.TranscribeReply]):
    """A transcribe request whose audio field is any string: what a broken peer would send."""

    type = "transcribe"
    reply = m.TranscribeReply
    pcm: str
    rate: int


async def test_bad_events_are_logged_and_survived(ends: Ends) -> None:
    """An event with a bad body is dropped with ipc.bad_body, an unknown one with
    ipc.unknown_event, a listener's exception with ipc.event_failed; later events arrive."""
    with capture_logs() as logs:
        await ends.worker.event(m.OutboundStatus(call_id="c1", status="ringing"))
        await ends.worker.event(m.Ready(contact="boom"))
        await ends.worker.event(m.InboundDone(call="w0-1", cause="hangup"))
        writer = ends.worker._writer
        writer.write(_frame({"v": 1, "kind": "event", "type": "ready", "body": {"contact": 5}}))
        await writer.drain()
        await ends.worker.event(m.Ready(contact="sip:1000@127.0.0.1"))
        async with asyncio.timeout(5):
            while len(ends.events) < 2:
                await asyncio.sleep(0.01)
    assert ends.events == [
        m.OutboundStatus(call_id="c1", status="ringing"),
        m.Ready(contact="sip:1000@127.0.0.1"),
    ]
    by_event = {e["event"]: e for e in logs if e["event"].startswith("ipc.")}
    assert by_event["ipc.event_failed"]["type"] == "ready"
    assert "listener broke" in by_event["ipc.event_failed"]["error"]
    assert by_event["ipc.unknown_event"]["type"] == "inbound_done"
    assert by_event["ipc.bad_body"]["error"].startswith("contact: Input should be a valid string")


async def test_ten_minutes_of_audio_cross_a_connection_both_ways(ends: Ends) -> None:
    """10 min at 16 kHz goes up in a transcribe request and comes back in a synthesize reply,
    sample for sample, in frames of bounded size."""
    samples = np.random.default_rng(16).integers(-32768, 32768, 16000 * 600, dtype=np.int16)
    started = time.perf_counter()
    heard = await ends.worker.request(m.Transcribe(pcm=samples, rate=16000), within=60)
    spoken = await ends.worker.request(m.Synthesize(text="x", rate=16000), within=60)
    seconds = time.perf_counter() - started
    print(f"2 x 10 min of 16 kHz PCM16 over IPC in {seconds:.2f} s")
    digest = hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest()
    assert heard.text == f"{len(samples)} {digest}"
    assert spoken.pcm.dtype == np.int16
    assert np.array_equal(spoken.pcm, np.full(16000 * 600, 7, dtype=np.int16))
