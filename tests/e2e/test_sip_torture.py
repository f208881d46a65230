"""Malformed SIP against the daemon: hand-written torture messages (after the categories of
RFC 4475) and 5,000 mutated datagrams on a worker's SIP port while a call is up.

Afterwards the worker is the same process, OPTIONS is still answered, the call in progress
ends normally (SIPp counts it successful), and the worker's RSS and open file descriptors
are back to what they were before the mutated datagrams (after a warm-up round that lets
pjsip and Python allocate their one-off buffers).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_sip_robustness import _sipp
from tests.peers.sip_udp import UdpAgent, sdp
from tests.support import DaemonProcess, phone_rtp_base, workers_up

pytestmark = pytest.mark.e2e

RSS_TOLERANCE_KIB = 4096  # pjsip pools and Python's allocator may keep a little more
MUTATED = 5000


def _torture(port: int, me: int) -> dict[str, bytes]:
    """Hand-written malformed or unusual requests, by RFC 4475 category."""
    host = f"127.0.0.1:{port}"

    def request(first: str, headers: list[str], body: str = "", length: int | None = None) -> bytes:
        tag = uuid.uuid4().hex
        base = [
            f"Via: SIP/2.0/UDP 127.0.0.1:{me};rport;branch=z9hG4bK{tag[:16]}",
            "Max-Forwards: 70",
            f"From: <sip:2000@127.0.0.1>;tag={tag[:8]}",
            f"To: <sip:1000@{host}>",
            f"Call-ID: {tag}",
            f"Contact: <sip:2000@127.0.0.1:{me}>",
        ]
        declared = len(body.encode()) if length is None else length
        lines = [first, *base, *headers, f"Content-Length: {declared}"]
        return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()

    offer = sdp(me + 2)
    # INVITEs go to 1001, which gets 404 once parsed: none of them becomes a call that
    # would hold sockets beyond the measurement (the Content-Length ones get 400 first).
    multipart = (
        "--b1\r\nContent-Type: application/sdp\r\n\r\n" + offer + "\r\n--b1\r\n"
        "Content-Type: application/sdp\r\n\r\n" + offer + "\r\n--b1--\r\n"
    )
    return {
        "line_folding": request(
            f"OPTIONS sip:1000@{host} SIP/2.0",
            ["CSeq: 1 OPTIONS", "Subject: a subject\r\n  folded over\r\n\tthree lines"],
        ),
        "escaped_uri": request(
            f"INVITE sip:%31%30%30%31@{host};%6C%72 SIP/2.0",
            ["CSeq: 1 INVITE", "Content-Type: application/sdp"],
            offer,
        ),
        "escaped_null_in_uri": request(
            f"INVITE sip:1000%00@{host} SIP/2.0",
            ["CSeq: 1 INVITE", "Content-Type: application/sdp"],
            offer,
        ),
        "huge_header": request(
            f"OPTIONS sip:1000@{host} SIP/2.0", ["CSeq: 1 OPTIONS", "X-Huge: " + "a" * 60000]
        ),
        "many_headers": request(
            f"OPTIONS sip:1000@{host} SIP/2.0",
            ["CSeq: 1 OPTIONS", *[f"X-H{i}: {i}" for i in range(2000)]],
        ),
        "many_vias": request(
            f"OPTIONS sip:1000@{host} SIP/2.0",
            [
                "CSeq: 1 OPTIONS",
                *[
                    f"Via: SIP/2.0/UDP 10.0.{i // 250}.{i % 250};branch=z9hG4bK{i}"
                    for i in range(500)
                ],
            ],
        ),
        "unknown_scheme": request(
            f"INVITE xyz:1001@{host} SIP/2.0",
            ["CSeq: 1 INVITE", "Content-Type: application/sdp"],
            offer,
        ),
        "unknown_method": request(f"NEWMETHOD sip:1000@{host} SIP/2.0", ["CSeq: 1 NEWMETHOD"]),
        "no_call_id": request(f"OPTIONS sip:1000@{host} SIP/2.0", ["CSeq: 1 OPTIONS"]).replace(
            b"Call-ID:", b"X-Not-Call-ID:"
        ),
        "no_cseq": request(f"OPTIONS sip:1000@{host} SIP/2.0", []),
        "no_via": request(f"OPTIONS sip:1000@{host} SIP/2.0", ["CSeq: 1 OPTIONS"]).replace(
            b"Via:", b"X-Via:"
        ),
        "cseq_method_mismatch": request(
            f"INVITE sip:1001@{host} SIP/2.0",
            ["CSeq: 1 OPTIONS", "Content-Type: application/sdp"],
            offer,
        ),
        "content_length_too_big": request(
            f"INVITE sip:1000@{host} SIP/2.0",
            ["CSeq: 1 INVITE", "Content-Type: application/sdp"],
            offer,
            length=len(offer) + 40,
        ),
        "content_length_too_small": request(
            f"INVITE sip:1000@{host} SIP/2.0",
            ["CSeq: 1 INVITE", "Content-Type: application/sdp"],
            offer,
            length=len(offer) - 40,
        ),
        "content_length_negative": request(
            f"INVITE sip:1000@{host} SIP/2.0",
            ["CSeq: 1 INVITE", "Content-Type: application/sdp"],
            offer,
            length=-5,
        ),
        "content_length_huge": request(
            f"INVITE sip:1000@{host} SIP/2.0",
            ["CSeq: 1 INVITE", "Content-Type: application/sdp"],
            offer,
            length=2**64,
        ),
        "multiple_bodies": request(
            f"INVITE sip:1001@{host} SIP/2.0",
            ["CSeq: 1 INVITE", "Content-Type: multipart/mixed;boundary=b1"],
            multipart,
        ),
        "max_forwards_zero": request(
            f"OPTIONS sip:1000@{host} SIP/2.0", ["CSeq: 1 OPTIONS"]
        ).replace(b"Max-Forwards: 70", b"Max-Forwards: 0"),
        "extra_spaces_in_request_line": request(
            f"OPTIONS  sip:1000@{host}   SIP/2.0", ["CSeq: 1 OPTIONS"]
        ),
        "wrong_version": request(f"OPTIONS sip:1000@{host} SIP/7.0", ["CSeq: 1 OPTIONS"]),
        "bad_utf8_and_controls": request(
            f"OPTIONS sip:1000@{host} SIP/2.0", ["CSeq: 1 OPTIONS", "Subject: x"]
        ).replace(b"Subject: x", b"Subject: \xff\xfe\x00\x01\x7f"),
        "response_without_request": (
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKnone\r\n"
            b"CSeq: 7 INVITE\r\nCall-ID: none\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
            b"Content-Length: 0\r\n\r\n"
        ),
        "empty": b"\r\n\r\n",
    }


def _mutations(seeds: list[bytes], count: int, rng: random.Random) -> list[bytes]:
    """``count`` mutations of ``seeds``: flipped, inserted, deleted bytes; cut, duplicated,
    dropped or swapped lines; random junk."""
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(7)
            if kind == 0 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)
            elif kind == 1:
                data[rng.randrange(len(data) + 1) : 0] = bytes(
                    rng.randrange(256) for _ in range(rng.randint(1, 16))
                )
            elif kind == 2 and data:
                start = rng.randrange(len(data))
                del data[start : start + rng.randint(1, 32)]
            elif kind == 3:
                del data[rng.randrange(len(data) + 1) :]
            else:
                lines = bytes(data).split(b"\r\n")
                i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
                if kind == 4:
                    lines.insert(i, lines[j])
                elif kind == 5:
                    del lines[i]
                else:
                    lines[i], lines[j] = lines[j], lines[i]
                data = bytearray(b"\r\n".join(lines))
        out.append(bytes(data[:65000]))
    return out


def _worker_usage(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of a process."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    return rss, len(list(Path(f"/proc/{pid}/fd").iterdir()))


def _options_answered(port: int) -> bool:
    agent = UdpAgent(port)
    try:
        call_id = agent.invite(method="OPTIONS")
        reply = agent.finals([call_id], 2.0).get(call_id)
        return reply is not None and reply.status == 200
    finally:
        agent.close()


def _exchange(port: int, packet: bytes) -> list[int]:
    """Send ``packet`` from 127.0.0.1; the statuses of what comes back within 0.3 s."""
    agent = UdpAgent(port)
    try:
        agent.send(packet)
        return [reply.status for reply in agent.receive(0.3)]
    finally:
        agent.close()


def _blast(port: int, packets: list[bytes]) -> None:
    """Send from 127.0.0.1 and 127.0.0.2, paced in bursts the kernel's buffer holds."""
    agents = [UdpAgent(port), UdpAgent(port, source="127.0.0.2")]
    try:
        for index, packet in enumerate(packets):
            agents[index % 2].send(packet)
            if index % 100 == 99:
                for agent in agents:
                    agent.receive(0.02)
    finally:
        for agent in agents:
            agent.close()


@contextlib.asynccontextmanager
async def _daemon(env: dict[str, str], log: Path) -> AsyncIterator[dict[str, Any]]:
    """The daemon (direct mode, a policy that answers every call); yields its worker."""
    env = env | {
        "SIPAI_SIP__REGISTRAR": "",
        "SIPAI_SIP__ALLOW_FROM": "127.0.0.1",
    }
    script = "tests.e2e.answering_supervisor"
    async with DaemonProcess(env, script=script, stderr="inherit", log=log, wait=None) as daemon:
        response = await daemon.ready(workers_up)
        yield response.json()["workers"][0]


async def test_torture_and_mutated_datagrams_leave_the_worker_whole(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """During a call, the torture messages and 5,000 mutated INVITE/OPTIONS datagrams neither
    crash the worker nor end the call; OPTIONS is answered after each; INVITEs whose
    Content-Length disagrees with the body get 400 and none becomes a call; RSS and fds
    return to their baseline. About 30 s (the call in progress spans the whole battery)."""
    port = int(daemon_env["SIPAI_SIP__PORT"])
    log = tmp_path / "daemon.log"
    async with _daemon(daemon_env, log) as worker:
        pid = worker["pid"]
        call = asyncio.create_task(_sipp(port, tmp_path, "-sn", "uac", "-m", "1", "-d", "25000"))
        # The call must be up before the blast: sent alongside it, sipp's INVITE from
        # 127.0.0.1 could find that source's INVITE budget spent by the mutated ones.
        async with asyncio.timeout(20):
            while '"test.answered"' not in log.read_text(errors="replace"):
                await asyncio.sleep(0.05)
        torture = _torture(port, phone_rtp_base())
        seeds = [torture["escaped_uri"], torture["line_folding"], torture["multiple_bodies"]]
        rng = random.Random(4475)
        await asyncio.to_thread(_blast, port, _mutations(seeds, 1000, rng))  # warm-up
        await asyncio.sleep(1.0)
        baseline = _worker_usage(pid)
        unanswered = []
        answers: dict[str, list[int]] = {}
        for name, packet in torture.items():
            answers[name] = await asyncio.to_thread(_exchange, port, packet)
            if not await asyncio.to_thread(_options_answered, port):
                unanswered.append(name)
        started = time.monotonic()
        await asyncio.to_thread(_blast, port, _mutations(seeds, MUTATED, rng))
        blasted = time.monotonic() - started
        assert await asyncio.to_thread(_options_answered, port)
        await asyncio.sleep(1.0)  # pjlib frees a closed socket's handle after 500 ms
        after = _worker_usage(pid)
        stats = await call
    grown = after[0] - baseline[0]
    print(f"torture answers: {answers}")
    print(
        f"{len(torture)} torture messages, {MUTATED} mutated datagrams in {blasted:.1f} s: "
        f"RSS {baseline[0]} -> {after[0]} KiB ({grown:+d}), fds {baseline[1]} -> {after[1]}"
    )
    assert not unanswered, f"OPTIONS unanswered after: {unanswered}"
    for name in ("too_big", "too_small", "huge"):
        assert answers[f"content_length_{name}"] == [400], answers
    assert answers["content_length_negative"] in ([], [400]), answers  # pjsip drops it unparsed
    rang = [name for name, codes in answers.items() if 180 in codes]
    assert not rang, f"torture INVITEs that became calls: {rang}"
    assert int(stats["SuccessfulCall(C)"]) == 1, stats
    assert grown <= RSS_TOLERANCE_KIB, f"RSS grew {grown} KiB (tolerance {RSS_TOLERANCE_KIB})"
    assert after[1] == baseline[1], f"fds {baseline[1]} -> {after[1]}"
