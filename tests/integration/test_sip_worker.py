"""One SIP worker against Kamailio and pjsua2 test phones, all on loopback."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import pytest

from media.wav import read_wav, write_wav
from sip.events import (
    CallAnswered,
    CallEnded,
    CallRinging,
    DtmfReceived,
    IncomingCall,
    RegistrationChanged,
    TransferProgress,
)
from tests.audio import tone, tone_level_db
from tests.integration.conftest import Recorded, worker_settings
from tests.peers.kamailio import Kamailio, running_kamailio
from tests.peers.phone import TestPhone

MakeWorker = Callable[..., Awaitable[Recorded]]
Phones = Callable[..., Awaitable[TestPhone]]
FULL = 20 * np.log10(10000)  # level of the test tones


def _tone_wav(path: Path, freq: float, seconds: float = 1.5) -> str:
    write_wav(path, 8000, tone(freq, 8000, seconds))
    return str(path)


async def _uplink(worker: Recorded, call: str, frames: int) -> np.ndarray:
    audio = await worker.sip.audio(call)
    got: list[bytes] = []
    async with asyncio.timeout(10):
        async for frame in audio.frames():
            got.append(frame)
            if len(got) == frames:
                break
    return np.frombuffer(b"".join(got), dtype="<i2")


async def _call_in(worker: Recorded, phone: TestPhone) -> tuple[str, int]:
    """The phone dials the daemon's extension; the worker answers. Returns both call ids."""
    dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
    incoming = await worker.expect(IncomingCall)
    await worker.sip.answer(incoming.call)
    await worker.expect(CallAnswered, call=incoming.call)
    await phone.expect("media", call=dialled["call"], status="active")
    return incoming.call, dialled["call"]


async def test_registers_and_wrong_password_is_refused(
    kamailio: Kamailio, make_worker: MakeWorker
) -> None:
    """The right password registers (200); a wrong one reports 401 and is not registered."""
    good = await make_worker(worker_settings(kamailio))
    event = await good.expect(RegistrationChanged)
    assert (event.registered, event.code) == (True, 200)
    assert good.sip.registration.registered
    [contact] = kamailio.contacts("1000")
    assert contact.split(";")[0] == good.sip.contact

    await good.stop()  # one pjsua2 endpoint per process
    bad = await make_worker(worker_settings(kamailio, password="wrong"))
    event = await bad.expect(RegistrationChanged)
    assert (event.registered, event.code) == (False, 401)
    assert event.retry_in is not None  # it keeps trying, with backoff
    assert bad.sip.registration.code == 401


async def test_interval_too_brief_is_handled(make_worker: MakeWorker, tmp_path: Path) -> None:
    """A registrar answering 423 Min-Expires 60 to expires=20 gets a 60 s registration."""
    async with running_kamailio(tmp_path / "k423", min_expires=60) as kamailio:
        worker = await make_worker(worker_settings(kamailio, register_expires=20))
        event = await worker.expect(RegistrationChanged, registered=True)
        assert event.code == 200
        [left] = await asyncio.to_thread(kamailio.expires, "1000")
        assert 50 <= left <= 60
        await worker.stop()


async def test_registration_returns_after_pbx_restart(
    kamailio: Kamailio, make_worker: MakeWorker
) -> None:
    """Kamailio stopped and started again: the contact is back within 15 s of its return."""
    worker = await make_worker(worker_settings(kamailio, register_expires=10))
    await worker.expect(RegistrationChanged, registered=True)
    await asyncio.to_thread(kamailio.stop)
    await asyncio.sleep(3)
    await asyncio.to_thread(kamailio.start)
    returned = asyncio.get_running_loop().time()
    async with asyncio.timeout(15):
        while not await asyncio.to_thread(kamailio.contacts, "1000"):
            await asyncio.sleep(0.5)
    assert asyncio.get_running_loop().time() - returned < 15
    assert worker.sip.registration.registered


async def test_inbound_call_audio_both_ways(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """A phone calls in: caller info arrives, each side hears the other's tone, and the end
    reports the call's media counters (RTP packets, uplink frames, no callback errors)."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    phone = await phones("caller")
    await phone.register(kamailio, "1001")
    dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
    incoming = await worker.expect(IncomingCall)
    assert incoming.from_user == "1001"
    assert incoming.sip_call_id
    assert incoming.headers["to"].startswith("sip:1000@")
    await phone.expect("call", state="EARLY", code=180)
    await worker.sip.answer(incoming.call)
    await worker.expect(CallAnswered, call=incoming.call)
    await phone.expect("media")

    audio = await worker.sip.audio(incoming.call)
    audio.playout.push("greeting", tone(1000, 8000, 1.5))
    audio.playout.end_item("greeting")
    await phone.command("record", call=dialled["call"], wav=str(tmp_path / "heard.wav"))
    await phone.command("play", call=dialled["call"], wav=_tone_wav(tmp_path / "t.wav", 600))
    uplink = await _uplink(worker, incoming.call, 50)
    await phone.expect("played", timeout=5)
    await phone.command("stop_record", call=dialled["call"])
    await worker.sip.hangup(incoming.call)
    ended = await worker.expect(CallEnded, call=incoming.call)

    assert tone_level_db(uplink[800:], 600, 8000) > FULL - 3
    assert tone_level_db(uplink[800:], 1000, 8000) < FULL - 40
    heard = read_wav(tmp_path / "heard.wav").samples
    assert tone_level_db(heard[:8000], 1000, 8000) > FULL - 6
    assert (ended.code, ended.answered, ended.local_cause) == (200, True, "hangup")
    assert ended.stats is not None
    assert ended.stats.rx_packets > 40
    assert ended.stats.tx_packets > 40
    assert ended.stats.uplink_frames >= len(uplink) // 160, ended.stats
    assert ended.stats.callback_errors == 0, ended.stats


async def test_outbound_ringing_answered_ended(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones
) -> None:
    """The worker dials an extension: 180, then 200, then the callee's BYE ends it."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    phone = await phones("callee")
    await phone.register(kamailio, "1002")
    await phone.command("mode", on_incoming="answer", answer_after_ms=300)
    call = await worker.sip.make_call("1002", ring_timeout=10)
    assert (await worker.expect(CallRinging, call=call)).code == 180
    await worker.expect(CallAnswered, call=call)
    incoming = await phone.expect("incoming")
    await phone.expect("media")
    await phone.command("hangup", call=incoming["call"])
    ended = await worker.expect(CallEnded, call=call)
    assert (ended.code, ended.answered, ended.local_cause) == (200, True, "")


@pytest.mark.parametrize(("mode", "code"), [("busy", 486), ("decline", 603)])
async def test_outbound_refusals_are_reported_with_their_code(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, mode: str, code: int
) -> None:
    """Busy and decline end the call with 486 / 603 within 1 s of the phone's reply."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    phone = await phones("callee")
    await phone.register(kamailio, "1003")
    await phone.command("mode", on_incoming=mode)
    call = await worker.sip.make_call("1003", ring_timeout=10)
    replied = (await phone.expect("incoming"))["at"]
    ended = await worker.expect(CallEnded, call=call)
    assert (ended.code, ended.answered) == (code, False)
    assert worker.last_arrival - replied < 1.0


async def test_no_answer_is_cancelled_at_the_ring_timeout(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones
) -> None:
    """A phone that never answers is CANCELled after ring_timeout and reported at once."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    phone = await phones("callee")
    await phone.register(kamailio, "1004")
    await phone.command("mode", on_incoming="ignore")
    started = asyncio.get_running_loop().time()
    call = await worker.sip.make_call("1004", ring_timeout=2)
    await worker.expect(CallRinging, call=call)
    ended = await worker.expect(CallEnded, call=call)
    assert ended.local_cause == "ring_timeout"
    assert ended.code == 487  # the INVITE was cancelled
    assert 2.0 <= worker.last_arrival - started < 3.0
    cancelled = await phone.expect("call", state="DISCONNECTED")
    assert cancelled["code"] == 487


async def test_four_calls_then_a_fifth_is_refused(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones
) -> None:
    """Four inbound calls are held; a fifth gets 486; a fifth outbound waits for a slot and
    is dialled once one of the four has ended."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    first, second = await phones("a"), await phones("b")
    await first.register(kamailio, "1001")
    await second.register(kamailio, "1002")
    held = [(await _call_in(worker, first))[0] for _ in range(4)]
    assert await worker.sip.call_count() == 4
    fifth = await second.command("dial", uri="sip:1000@127.0.0.1")
    refused = await second.expect("call", call=fifth["call"], state="DISCONNECTED")
    assert refused["code"] == 486
    dialling = asyncio.ensure_future(worker.sip.make_call("1002"))
    await asyncio.sleep(1.0)
    assert not dialling.done()  # waiting for a slot, nothing sent
    assert await worker.sip.call_count() == 4
    await worker.sip.hangup(held[0])
    await worker.expect(CallEnded, call=held[0])
    call = await asyncio.wait_for(dialling, 10)
    await second.expect("incoming", timeout=10)
    assert await worker.sip.call_count() == 4
    await worker.sip.hangup(call)


async def test_dtmf_both_ways(kamailio: Kamailio, make_worker: MakeWorker, phones: Phones) -> None:
    """RFC 4733 digits from the phone arrive as events; digits sent reach the phone."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    phone = await phones("caller")
    await phone.register(kamailio, "1001")
    call, phone_call = await _call_in(worker, phone)
    await phone.command("dtmf", call=phone_call, digits="19#")
    received = [await worker.expect(DtmfReceived, call=call) for _ in range(3)]
    assert [d.digit for d in received] == ["1", "9", "#"]
    assert {d.method for d in received} == {"rfc4733"}
    await worker.sip.send_dtmf(call, "*42")
    assert [(await phone.expect("dtmf"))["digit"] for _ in range(3)] == ["*", "4", "2"]
    await phone.command("dtmf", call=phone_call, digits="7", method="info")
    info = await worker.expect(DtmfReceived, call=call)
    assert (info.digit, info.method) == ("7", "info")


async def test_hold_and_unhold_keep_the_audio_bridge(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """Hold then resume (two re-INVITEs): the phone's audio still reaches the worker, once."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    phone = await phones("caller")
    await phone.register(kamailio, "1001")
    call, phone_call = await _call_in(worker, phone)
    before = await worker.sip.diagnostics()
    await phone.command("hold", call=phone_call)
    await phone.expect("media", call=phone_call, status="local_hold")
    await phone.command("unhold", call=phone_call)
    await phone.expect("media", call=phone_call, status="active")
    await asyncio.sleep(0.3)  # let the re-INVITEs settle
    assert await worker.sip.diagnostics() == before  # no second bridge, no lost port
    audio = await worker.sip.audio(call)
    audio.uplink.clear()
    await phone.command("play", call=phone_call, wav=_tone_wav(tmp_path / "t.wav", 700))
    uplink = await _uplink(worker, call, 50)
    level = tone_level_db(uplink[800:], 700, 8000)
    assert FULL - 3 < level < FULL + 1  # present once: a doubled bridge would add 6 dB or lag


async def test_blind_transfer_with_refer(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones
) -> None:
    """REFER sends the caller to another phone; the worker hears the transfer succeed."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    caller, target = await phones("caller"), await phones("target")
    await caller.register(kamailio, "1001")
    await target.register(kamailio, "1005")
    await target.command("mode", on_incoming="answer", answer_after_ms=100)
    call, _ = await _call_in(worker, caller)
    await worker.sip.transfer(call, "1005")
    await caller.expect("transfer_request")
    await target.expect("incoming")
    final = await worker.expect(TransferProgress, call=call, final=True)
    assert final.code == 200
    await worker.sip.hangup(call)
    await worker.expect(CallEnded, call=call)


async def test_simultaneous_calls_keep_their_audio_apart(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """Two calls at once, each with its own tone each way: nothing leaks across."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    a, b = await phones("a"), await phones("b")
    await a.register(kamailio, "1001")
    await b.register(kamailio, "1002")
    calls = [await _call_in(worker, a), await _call_in(worker, b)]
    plan = [(a, 500, 1300), (b, 900, 1700)]  # (phone, phone's tone, daemon's tone)
    for (call, phone_call), (phone, sent, back) in zip(calls, plan, strict=True):
        audio = await worker.sip.audio(call)
        audio.playout.push("x", tone(back, 8000, 1.5))
        await phone.command("record", call=phone_call, wav=str(tmp_path / f"{sent}.wav"))
        await phone.command("play", call=phone_call, wav=_tone_wav(tmp_path / f"p{sent}.wav", sent))
    uplinks = [await _uplink(worker, call, 50) for call, _ in calls]
    for phone in (a, b):
        await phone.expect("played", timeout=5)
    for (call, phone_call), (phone, _, _) in zip(calls, plan, strict=True):
        await phone.command("stop_record", call=phone_call)
        await worker.sip.hangup(call)
    for uplink, (_, sent, _) in zip(uplinks, plan, strict=True):
        other = 900 if sent == 500 else 500
        assert tone_level_db(uplink[800:], sent, 8000) > FULL - 3
        assert tone_level_db(uplink[800:], other, 8000) < FULL - 40
    for _, sent, back in plan:
        heard = read_wav(tmp_path / f"{sent}.wav").samples[:8000]
        other = 1700 if back == 1300 else 1300
        assert tone_level_db(heard, back, 8000) > FULL - 6
        assert tone_level_db(heard, other, 8000) < FULL - 40


async def test_calls_in_a_row_keep_their_audio(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones, tmp_path: Path
) -> None:
    """Three calls one after another: each uplink carries that call's tone only."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    phone = await phones("caller")
    await phone.register(kamailio, "1001")
    previous: list[int] = []
    for freq in (450, 1100, 2100):
        call, phone_call = await _call_in(worker, phone)
        await phone.command("play", call=phone_call, wav=_tone_wav(tmp_path / f"{freq}.wav", freq))
        uplink = await _uplink(worker, call, 40)
        await worker.sip.hangup(call)
        await worker.expect(CallEnded, call=call)
        assert tone_level_db(uplink[800:], freq, 8000) > FULL - 3
        for old in previous:
            assert tone_level_db(uplink[800:], old, 8000) < FULL - 40
        previous.append(freq)


async def test_many_short_calls_leak_nothing(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones
) -> None:
    """200 short calls (answered, 100 ms of audio, hung up) leave ports, threads and files.

    pjlib keeps a closed socket's ioqueue slot for 500 ms; short calls with media pace the
    loop the way real calls would (a loop of instant calls runs out of its 64 slots).
    """
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    phone = await phones("callee")
    await phone.register(kamailio, "1002")
    await phone.command("mode", on_incoming="answer", answer_after_ms=0)

    async def one_call() -> None:
        call = await worker.sip.make_call("1002", ring_timeout=10)
        await worker.expect(CallAnswered, call=call)
        assert len(await _uplink(worker, call, 5)) == 5 * 160
        await worker.sip.hangup(call)
        assert (await worker.expect(CallEnded, call=call)).answered

    async def settled() -> dict[str, int]:
        await asyncio.sleep(0.5)  # conference ports are removed asynchronously
        return await worker.sip.diagnostics()

    await one_call()  # warm up: codecs, transports and caches are created once
    before = await settled()
    threads, files = threading.active_count(), len(os.listdir("/proc/self/fd"))
    native_threads = len(os.listdir("/proc/self/task"))
    for _ in range(200):
        await one_call()
    after = await settled()
    assert after == before
    assert after["calls"] == 0
    assert threading.active_count() == threads
    assert len(os.listdir("/proc/self/task")) <= native_threads
    assert len(os.listdir("/proc/self/fd")) <= files


async def test_our_refusal_is_486_not_603(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones
) -> None:
    """With max_calls = 1 our own check refuses the second call: 486, never pjsua's 603."""
    worker = await make_worker(worker_settings(kamailio, max_calls=1))
    await worker.expect(RegistrationChanged, registered=True)
    phone = await phones("caller")
    await phone.register(kamailio, "1001")
    await _call_in(worker, phone)
    second = await phone.command("dial", uri="sip:1000@127.0.0.1")
    refused = await phone.expect("call", call=second["call"], state="DISCONNECTED")
    assert refused["code"] == 486
    assert await worker.sip.call_count() == 1


async def test_a_slot_freed_by_a_hang_up_can_be_dialled_at_once(
    kamailio: Kamailio, make_worker: MakeWorker, phones: Phones
) -> None:
    """With all four slots busy, each hang-up lets a new call be placed as soon as it ends."""
    worker = await make_worker(worker_settings(kamailio))
    await worker.expect(RegistrationChanged, registered=True)
    callee = await phones("callee")
    await callee.register(kamailio, "1002")
    await callee.command("mode", on_incoming="answer", answer_after_ms=0)
    calls = [await worker.sip.make_call("1002", ring_timeout=10) for _ in range(4)]
    for call in calls:
        await worker.expect(CallAnswered, call=call)
    for _ in range(12):
        oldest = calls.pop(0)
        await worker.sip.hangup(oldest)
        await worker.expect(CallEnded, call=oldest)
        calls.append(await worker.sip.make_call("1002", ring_timeout=10))
        await worker.expect(CallAnswered, call=calls[-1])
    for call in calls:
        await worker.sip.hangup(call)
        await worker.expect(CallEnded, call=call)
    assert await worker.sip.call_count() == 0
