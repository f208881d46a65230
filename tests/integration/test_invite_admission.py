"""Which INVITEs a worker takes: allowed sources, its own extension, a rate, sane framing;
and how long a call whose ACK never comes holds its slot.

"Another host" is 127.0.0.2 (a loopback address a socket can bind to); the worker allows
127.0.0.1 only unless a test says otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from sip.events import CallEnded, IncomingCall, RegistrationChanged
from tests.integration.conftest import Recorded, worker_settings
from tests.integration.test_sip_robustness import _sipp
from tests.peers.kamailio import Kamailio
from tests.peers.phone import TestPhone
from tests.peers.sip_udp import UdpAgent, sdp

MakeWorker = Callable[..., Awaitable[Recorded]]
Phones = Callable[..., Awaitable[TestPhone]]


async def _refused(worker: Recorded) -> dict[str, int]:
    diagnostics = await worker.sip.diagnostics()
    return {k.removeprefix("refused_"): v for k, v in diagnostics.items() if "refused_" in k}


async def test_a_flood_from_another_host_gets_403_and_holds_no_slot(
    make_worker: MakeWorker, tmp_path: Path
) -> None:
    """500 INVITEs from a host outside sip.allow_from, in bursts of 50: every one gets 403, no
    call slot or call event is spent on them, the log names the first at once and counts the
    rest (one line, not 500), and a real call right after is answered."""
    worker = await make_worker(worker_settings(None, allow_from=["127.0.0.1"]))
    port = worker.sip.settings.port

    def flood() -> tuple[dict[str, int], float]:
        scanner = UdpAgent(port, source="127.0.0.2")
        try:
            started = time.monotonic()
            codes: dict[str, int] = {}
            for _ in range(10):  # bursts of 50: more at once overflow the kernel's UDP buffer
                ids = [scanner.invite() for _ in range(50)]
                for reply in scanner.finals(ids, 5).values():
                    codes[str(reply.status)] = codes.get(str(reply.status), 0) + 1
            return codes, time.monotonic() - started
        finally:
            scanner.close()

    with capture_logs() as logs:
        codes, took = await asyncio.to_thread(flood)
    print(f"500 INVITEs from 127.0.0.2: {codes} in {took:.2f} s")
    lines = [e for e in logs if e["event"] == "sip.invite_refused"]
    assert len(lines) == 1 or took >= 10, lines  # one line per reason every 10 s
    assert (lines[0]["reason"], lines[0]["source"].split(":")[0]) == ("forbidden", "127.0.0.2")
    assert codes == {"403": 500}, codes
    diagnostics = await worker.sip.diagnostics()
    assert diagnostics["pjsua_calls"] == 0, diagnostics
    assert (await _refused(worker))["forbidden"] == 500
    assert not [e for e in worker.events if isinstance(e, IncomingCall)]
    worker.answer_all()
    stats = await _sipp(port, tmp_path, "-sn", "uac", "-m", "1", "-d", "100")
    assert int(stats["SuccessfulCall(C)"]) == 1


async def test_only_the_configured_extension_is_answered(make_worker: MakeWorker) -> None:
    """An INVITE for sip:100@ (a scanner's guess) gets 404 and never becomes a call; one for
    the extension, %-escaped or not, rings."""
    worker = await make_worker(worker_settings(None, allow_from=["127.0.0.1"]))
    port = worker.sip.settings.port

    def calls() -> dict[str, int]:
        peer = UdpAgent(port)
        try:
            ids = {user: peer.invite(user=user) for user in ("100", "%31000", "1000x")}
            finals = peer.finals(list(ids.values()), 5)
            return {user: finals[call_id].status for user, call_id in ids.items()}
        finally:
            peer.close()

    statuses = await asyncio.to_thread(calls)
    print(f"INVITE by user part: {statuses}")
    assert statuses == {"100": 404, "%31000": 180, "1000x": 404}, statuses
    incoming = await worker.expect(IncomingCall)
    await worker.sip.reject(incoming.call, 486)
    assert (await _refused(worker))["not_found"] == 2


async def test_invites_beyond_the_rate_get_503_with_retry_after(make_worker: MakeWorker) -> None:
    """At 5 INVITEs a second with bursts of 5, the 6th to 30th INVITE of a burst from one
    source get 503 with Retry-After; another source keeps its own allowance; a second later
    the first source is served again."""
    settings = worker_settings(None, allow_from=["127.0.0.0/8"], invite_rate=5, invite_burst=5)
    worker = await make_worker(settings)
    port = worker.sip.settings.port

    def burst() -> tuple[list[int], list[str], list[int], list[int]]:
        flooder, other = UdpAgent(port), UdpAgent(port, source="127.0.0.2")
        try:
            ids = [flooder.invite(user="100") for _ in range(30)]
            finals = flooder.finals(ids, 5)
            statuses = [finals[i].status for i in ids]
            retry = sorted(
                {finals[i].header("Retry-After") for i in ids if finals[i].status == 503}
            )
            other_ids = [other.invite(user="100") for _ in range(5)]
            other_finals = other.finals(other_ids, 5)
            time.sleep(1.1)  # a worker thread, not the event loop: five tokens come back
            later = [flooder.invite(user="100") for _ in range(5)]
            later_finals = flooder.finals(later, 5)
            return (
                statuses,
                retry,
                [other_finals[i].status for i in other_ids],
                [later_finals[i].status for i in later],
            )
        finally:
            flooder.close()
            other.close()

    statuses, retry, other, later = await asyncio.to_thread(burst)
    print(f"30 INVITEs at once: {statuses.count(404)} x 404, {statuses.count(503)} x 503")
    assert statuses[:5] == [404] * 5, statuses
    assert statuses[5:] == [503] * 25, statuses
    assert retry == ["1"], retry
    assert other == [404] * 5, other
    assert later == [404] * 5, later
    refused = await _refused(worker)
    assert refused["rate_limited"] == 25, refused


async def test_an_invite_whose_content_length_disagrees_gets_400(make_worker: MakeWorker) -> None:
    """An INVITE whose Content-Length is 40 bytes more or less than its SDP body gets 400 and
    never becomes a call; the same INVITE with the right length rings."""
    worker = await make_worker(worker_settings(None, allow_from=["127.0.0.1"]))
    port = worker.sip.settings.port

    def calls() -> dict[str, int]:
        peer = UdpAgent(port)
        try:
            body = sdp(peer.port + 2)
            ids = {
                delta: peer.invite(body=body, content_length=len(body) + delta)
                for delta in (40, -40, 0)
            }
            finals = peer.finals(list(ids.values()), 5)
            return {str(delta): finals[call_id].status for delta, call_id in ids.items()}
        finally:
            peer.close()

    statuses = await asyncio.to_thread(calls)
    print(f"INVITE by Content-Length error: {statuses}")
    assert statuses == {"40": 400, "-40": 400, "0": 180}, statuses
    incoming = await worker.expect(IncomingCall)
    await worker.sip.reject(incoming.call, 486)
    assert (await _refused(worker))["bad_request"] == 2


async def test_an_oddly_framed_request_line_is_screened_too(make_worker: MakeWorker) -> None:
    """INVITEs whose request line pjsip accepts but a strict reader would not (a trailing
    space, runs of spaces or tabs, a blank line before it, a lower-case version, LF line
    endings) get 403 from a host outside sip.allow_from and 404 for another extension:
    none rings."""
    worker = await make_worker(worker_settings(None, allow_from=["127.0.0.1"]))
    port = worker.sip.settings.port

    def variants(user: str) -> dict[str, tuple[str, str]]:
        uri = f"sip:{user}@127.0.0.1:{port}"
        return {
            "trailing space": (f"INVITE {uri} SIP/2.0 ", "\r\n"),
            "two spaces": (f"INVITE  {uri} SIP/2.0", "\r\n"),
            "tab": (f"INVITE\t{uri}\tSIP/2.0", "\r\n"),
            "blank line first": (f"\r\nINVITE {uri} SIP/2.0", "\r\n"),
            "lower-case version": (f"INVITE {uri} sip/2.0", "\r\n"),
            "LF endings": (f"INVITE {uri} SIP/2.0", "\n"),
        }

    def send(source: str, user: str) -> dict[str, int]:
        peer = UdpAgent(port, source=source)
        try:
            ids = {
                name: peer.invite(user=user, start_line=line, eol=eol)
                for name, (line, eol) in variants(user).items()
            }
            finals = peer.finals(list(ids.values()), 3)
            return {name: finals[c].status if c in finals else 0 for name, c in ids.items()}
        finally:
            peer.close()

    stranger = await asyncio.to_thread(send, "127.0.0.2", "1000")
    scanner = await asyncio.to_thread(send, "127.0.0.1", "100")
    print(f"from 127.0.0.2: {stranger}; to sip:100 from 127.0.0.1: {scanner}")
    assert stranger == dict.fromkeys(stranger, 403), stranger
    assert scanner == dict.fromkeys(scanner, 404), scanner
    assert (await worker.sip.diagnostics())["pjsua_calls"] == 0


async def test_unacked_calls_free_their_slots_within_the_sip_timer(
    make_worker: MakeWorker, tmp_path: Path
) -> None:
    """Four answered INVITEs that are never ACKed, whose BYEs are never answered either (a
    scanner), hold the worker's four slots until pjsip gives up on the 200 OK (64 x T1 =
    32 s) plus one second for the BYE, not 64 s; then a real call is answered. Takes ~35 s:
    the SIP timer is what is measured."""
    worker = await make_worker(worker_settings(None, allow_from=["127.0.0.1"]))
    port = worker.sip.settings.port
    worker.answer_all()
    scanner = UdpAgent(port)
    try:
        ids = [scanner.invite() for _ in range(4)]
        answered = await asyncio.to_thread(scanner.finals, ids, 5)
        assert len(answered) == 4, answered
        started = time.monotonic()
        assert (await worker.sip.diagnostics())["pjsua_calls"] == 4
        held = 0.0
        async with asyncio.timeout(80):
            while (await worker.sip.diagnostics())["pjsua_calls"]:
                await asyncio.sleep(0.25)
            held = time.monotonic() - started
    finally:
        scanner.close()
    for _ in range(4):
        ended = await worker.expect(CallEnded)
        assert (ended.code, ended.answered) == (408, False), ended
    print(f"4 un-ACKed calls held 4 slots for {held:.1f} s")
    assert 31 <= held <= 35, f"4 un-ACKed calls held 4 slots for {held:.1f} s"
    stats = await _sipp(port, tmp_path, "-sn", "uac", "-m", "1", "-d", "100")
    assert int(stats["SuccessfulCall(C)"]) == 1


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_by_default_only_the_registrar_may_send_invites(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, host: str
) -> None:
    """With a registrar (given by address or by name) and no sip.allow_from, an INVITE
    straight to the worker from another host gets 403, and a call through Kamailio (its R-URI
    the worker's contact, whose user is sip.username) rings."""
    registrar = kamailio.uri.replace("127.0.0.1", host)
    worker = await make_worker(worker_settings(kamailio, registrar=registrar, domain="127.0.0.1"))
    await worker.expect(RegistrationChanged, registered=True)
    port = worker.sip.settings.port

    def direct() -> int:
        scanner = UdpAgent(port, source="127.0.0.2")
        try:
            call_id = scanner.invite()
            return scanner.finals([call_id], 5)[call_id].status
        finally:
            scanner.close()

    assert await asyncio.to_thread(direct) == 403
    phone = await phones("caller")
    await phone.register(kamailio, "1001")
    await phone.command("dial", uri="sip:1000@127.0.0.1")
    incoming = await worker.expect(IncomingCall)
    await phone.expect("call", state="EARLY", code=180)
    await worker.sip.reject(incoming.call, 486)
    assert (await _refused(worker)) == {
        "forbidden": 1,
        "not_found": 0,
        "rate_limited": 0,
        "bad_request": 0,
    }


async def test_a_registrar_name_that_does_not_resolve_is_logged_not_fatal(
    make_worker: MakeWorker,
) -> None:
    """A registrar whose name does not resolve: the worker starts, logs
    sip.allow_from_unresolved naming it, and refuses every INVITE with 403."""
    with capture_logs() as logs:
        worker = await make_worker(
            worker_settings(None, registrar="sip:no-such-pbx.invalid:5060", password="x")
        )
    errors = [e for e in logs if e["event"] == "sip.allow_from_unresolved"]
    assert errors, logs
    assert "no-such-pbx.invalid" in errors[0]["error"], errors
    assert errors[0]["log_level"] == "error"

    def direct() -> int:
        peer = UdpAgent(worker.sip.settings.port)
        try:
            call_id = peer.invite()
            return peer.finals([call_id], 5)[call_id].status
        finally:
            peer.close()

    assert await asyncio.to_thread(direct) == 403
