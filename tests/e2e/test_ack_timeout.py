"""An inbound call whose caller never ACKs our 200 OK: the record says so, no model session.

The caller is a real SIP user agent on a UDP socket in this test: it sends an INVITE with an
SDP offer, lets the daemon's 200 OK be retransmitted until pjsip gives up (64 x T1 = 32 s),
and answers the BYE that follows, so only the missing ACK can have ended the call.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.support import DaemonProcess, workers_up

pytestmark = pytest.mark.e2e


def _header(message: str, name: str) -> str:
    for line in message.split("\r\n"):
        if line.split(":", 1)[0].strip().lower() == name.lower():
            return line
    raise AssertionError(f"no {name} header in {message!r}")


def _caller_without_ack(port: int, seconds: float) -> list[str]:
    """INVITE sip:1000@127.0.0.1:port, never ACK, answer the BYE; the start lines received."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0.5)
        me = udp.getsockname()[1]
        sdp = (
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {me + 2} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
        )
        call_id = uuid.uuid4().hex
        invite = (
            f"INVITE sip:1000@127.0.0.1:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{call_id[:12]};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:2000@127.0.0.1>;tag={call_id[:8]}\r\n"
            "To: <sip:1000@127.0.0.1>\r\n"
            f"Call-ID: {call_id}\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:2000@127.0.0.1:{me}>\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n{sdp}"
        )
        udp.sendto(invite.encode(), ("127.0.0.1", port))
        received: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                message = udp.recvfrom(65535)[0].decode()
            except TimeoutError:
                continue
            received.append(message.split("\r\n", 1)[0])
            if message.startswith("BYE "):
                reply = "\r\n".join(
                    ["SIP/2.0 200 OK"]
                    + [_header(message, h) for h in ("Via", "From", "To", "Call-ID", "CSeq")]
                    + ["Content-Length: 0", "", ""]
                )
                udp.sendto(reply.encode(), ("127.0.0.1", port))
                return received
        return received


async def _final_inbound_record(base: str) -> dict[str, Any]:
    async with httpx.AsyncClient() as client, asyncio.timeout(15):
        while True:
            calls = (await client.get(f"{base}/calls?direction=inbound")).json()["calls"]
            if calls and calls[0]["status"] != "in_progress":
                return dict(calls[0])
            await asyncio.sleep(0.1)


async def test_a_call_never_acked_is_recorded_as_such(daemon_env: dict[str, str]) -> None:
    """A caller that never ACKs the 200 OK ends with end_cause "no ACK from the caller: 408
    Request Timeout", not "caller hung up", and no model session was opened for it."""
    env = daemon_env | {"SIPAI_SIP__REGISTRAR": ""}  # direct mode, the embedded engine
    async with DaemonProcess(env, wait=workers_up, timeout=90) as daemon:
        base = daemon.base_url
        started = time.monotonic()
        received = await asyncio.to_thread(
            _caller_without_ack, int(daemon_env["SIPAI_SIP__PORT"]), 60.0
        )
        ended_after = time.monotonic() - started
        record = await _final_inbound_record(base)
    assert received[-1].startswith("BYE "), received
    assert received.count("SIP/2.0 200 OK") > 5, received  # retransmitted for want of an ACK
    print(f"end_cause={record['end_cause']!r} after {ended_after:.1f} s")
    assert record["end_cause"] == "no ACK from the caller: 408 Request Timeout", (
        f"{record['end_cause']!r} after {ended_after:.1f} s"
    )
    events = [e["event"] for e in daemon.log_events()]
    sessions = [e for e in events if e in ("agent.session_ready", "engine.session_open")]
    assert not sessions, f"model sessions opened for a call never confirmed: {sessions}"
