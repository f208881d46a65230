"""A bare SIP user agent on a UDP socket: sends hand-made requests, reads what comes back.

It does only what a test asks (no ACK, no BYE answer unless told), which is what scanners and
broken peers do. Blocking: run it in ``asyncio.to_thread``.
"""

from __future__ import annotations

import socket
import time
import uuid
from dataclasses import dataclass, field


@dataclass
class Reply:
    status: int  # 0 for a request (such as a BYE)
    first_line: str
    message: str
    at: float  # monotonic arrival

    def header(self, name: str) -> str:
        for line in self.message.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return ""


def sdp(port: int) -> str:
    return (
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
        f"m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )


@dataclass
class UdpAgent:
    target_port: int
    source: str = "127.0.0.1"
    sock: socket.socket = field(init=False)
    sent: dict[str, list[str]] = field(default_factory=dict)  # each INVITE's header lines

    def __post_init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((self.source, 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()

    def invite(
        self,
        user: str = "1000",
        call_id: str | None = None,
        body: str | None = None,
        content_length: int | None = None,
        method: str = "INVITE",
        *,
        start_line: str | None = None,
        eol: str = "\r\n",
    ) -> str:
        """Send an INVITE (or OPTIONS) to ``user``; returns its Call-ID. ``start_line`` and
        ``eol`` replace the request line and the line ending (for oddly framed requests)."""
        call_id = call_id or uuid.uuid4().hex
        body = sdp(self.port + 2) if body is None and method == "INVITE" else (body or "")
        length = len(body.encode()) if content_length is None else content_length
        me = f"{self.source}:{self.port}"
        lines = [
            f"{method} sip:{user}@127.0.0.1:{self.target_port} SIP/2.0",
            f"Via: SIP/2.0/UDP {me};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport",
            "Max-Forwards: 70",
            f"From: <sip:2000@{self.source}>;tag={call_id[:8]}",
            f"To: <sip:{user}@127.0.0.1>",
            f"Call-ID: {call_id}",
            f"CSeq: 1 {method}",
            f"Contact: <sip:2000@{me}>",
        ]
        if body:
            lines.append("Content-Type: application/sdp")
        lines.append(f"Content-Length: {length}")
        self.sent[call_id] = lines
        if start_line is not None:
            lines = [start_line, *lines[1:]]
        self.send((eol.join(lines) + eol + eol + body).encode())
        return call_id

    def cancel(self, call_id: str) -> None:
        """CANCEL the INVITE sent with ``call_id`` (same branch, RFC 3261 9.1)."""
        lines = self.sent[call_id]
        uri = lines[0].split(" ")[1]
        keep = [line for line in lines[1:6]]  # Via, Max-Forwards, From, To, Call-ID
        cseq = "CSeq: 1 CANCEL"
        self.send(
            (
                "\r\n".join([f"CANCEL {uri} SIP/2.0", *keep, cseq, "Content-Length: 0"])
                + "\r\n\r\n"
            ).encode()
        )

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", self.target_port))

    def receive(self, seconds: float) -> list[Reply]:
        """Everything that arrives within ``seconds``."""
        replies: list[Reply] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                break
            replies.append(_reply(data.decode(errors="replace")))
        return replies

    def finals(self, call_ids: list[str], seconds: float) -> dict[str, Reply]:
        """The first final (or 180) reply to each Call-ID, waiting up to ``seconds``."""
        wanted = set(call_ids)
        got: dict[str, Reply] = {}
        deadline = time.monotonic() + seconds
        while wanted - got.keys() and (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65535)
            except TimeoutError:
                break
            reply = _reply(data.decode(errors="replace"))
            call_id = reply.header("Call-ID")
            if call_id in wanted and call_id not in got and reply.status >= 180:
                got[call_id] = reply
        return got


def _reply(message: str) -> Reply:
    first = message.split("\r\n", 1)[0]
    status = 0
    if first.startswith("SIP/2.0 "):
        status = int(first.split(" ")[1])
    return Reply(status, first, message, time.monotonic())
