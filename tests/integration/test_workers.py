"""Several SIP worker processes under the supervisor's pool, against a forking Kamailio."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from daemon.calls.runner import PoolRunner
from daemon.ipc.connection import MAX_FRAME
from daemon.ipc.messages import MakeCall
from daemon.speech import TextToSpeech
from daemon.speech.local import PiperSynthesizer
from daemon.workers import WorkerPool
from media.wav import read_wav, write_wav
from sip.events import CallAnswered, CallEnded
from tests.audio import tone, tone_level_db
from tests.integration.conftest import Pool
from tests.peers.kamailio import Kamailio
from tests.peers.phone import TestPhone

Phones = Callable[..., Awaitable[TestPhone]]
ECHO = "tests.e2e.policies:echo"
FULL = 20 * np.log10(10000)  # level of the test tones


def _level(samples: Any, freq: float) -> float:
    return tone_level_db(samples, freq, 8000)


def _loudest_second(samples: Any) -> Any:
    """The loudest 1 s of a recording (where the echo is, however late it came back)."""
    if len(samples) <= 8000:
        return samples
    energy = np.concatenate(([0.0], np.cumsum(samples.astype(np.float64) ** 2)))
    start = int(np.argmax(energy[8000:] - energy[:-8000]))
    return samples[start : start + 8000]


async def _place(pool: WorkerPool, target: str, ring_timeout: float = 10) -> tuple[int, str]:
    """Dial the way outbound calls are placed: a slot reserved on the least loaded worker,
    which then dials (``make_call``); (worker index, call id)."""
    index = await pool.reserve_slot()
    reply = await pool.request(index, MakeCall(target=target, ring_timeout=ring_timeout))
    return index, reply.call


@pytest.mark.parametrize("workers", [2, 3])
async def test_workers_register_the_same_extension(
    kamailio: Kamailio, make_pool: Callable[..., Awaitable[Pool]], workers: int
) -> None:
    """Each worker registers the same AOR with its own Contact."""
    pool = await make_pool(kamailio, workers)
    contacts = await asyncio.to_thread(kamailio.contacts, "1000")
    assert len(contacts) == workers
    ports = sorted(int(c.split(";")[0].rsplit(":", 1)[1]) for c in contacts)
    base = pool.pool.settings.sip.port
    assert ports == list(range(base, base + workers))
    assert pool.pool.registered


async def test_forked_calls_are_answered_once_up_to_capacity(
    kamailio: Kamailio,
    make_pool: Callable[..., Awaitable[Pool]],
    phones: Phones,
    tmp_path: Path,
) -> None:
    """10 phones call at once with 2 workers: 8 answered once with their own audio, 2 busy."""
    pool = await make_pool(kamailio, 2, inbound_policy=ECHO)
    callers = [await phones(f"p{n}") for n in range(10)]
    users = [str(1001 + n) for n in range(10)]
    await asyncio.gather(*(p.register(kamailio, u) for p, u in zip(callers, users, strict=True)))
    tones = [400 + 130 * n for n in range(10)]
    for freq in tones:
        write_wav(tmp_path / f"{freq}.wav", 8000, tone(freq, 8000, 2.0))
    dialled = await asyncio.gather(*(p.command("dial", uri="sip:1000@127.0.0.1") for p in callers))
    outcomes = []
    for phone, call in zip(callers, dialled, strict=True):
        outcome = await phone.find(
            lambda e, c=call["call"]: (
                e["event"] == "call"
                and e["call"] == c
                and e["state"] in ("CONFIRMED", "DISCONNECTED")
            ),
            timeout=20,
        )
        outcomes.append(outcome)
    answered = [i for i, o in enumerate(outcomes) if o["state"] == "CONFIRMED"]
    busy = [i for i, o in enumerate(outcomes) if o["state"] == "DISCONNECTED"]
    assert len(answered) == 8
    assert [outcomes[i]["code"] for i in busy] == [486, 486]
    per_worker = [len(w.calls) for w in pool.pool.workers]
    assert per_worker == [4, 4]

    for i in answered:
        call = dialled[i]["call"]
        await callers[i].expect("media", call=call, status="active")
        await callers[i].command("record", call=call, wav=str(tmp_path / f"heard-{i}.wav"))
        await callers[i].command("play", call=call, wav=str(tmp_path / f"{tones[i]}.wav"))
    for i in answered:
        await callers[i].expect("played", timeout=10)
        await callers[i].command("stop_record", call=dialled[i]["call"])
    for i in answered:
        heard = _loudest_second(read_wav(tmp_path / f"heard-{i}.wav").samples)
        own = _level(heard, tones[i])
        assert own > FULL - 6, (i, own)  # the echo of its own tone is there
        for j in answered:
            if j != i:
                assert _level(heard, tones[j]) < own - 40, (i, j)

    # Exactly one 200 per call: one CallAnswered per answered call, no extra branches.
    assert len(pool.of(CallAnswered)) == 8
    for i in answered:
        assert [
            e["state"]
            for e in callers[i].events
            if e.get("call") == dialled[i]["call"] and e["event"] == "call"
        ].count("CONFIRMED") == 1
    for i in answered:
        await callers[i].command("hangup", call=dialled[i]["call"])
    await pool.wait_for(lambda: pool.pool.active_calls == 0)


async def test_outbound_calls_spread_over_workers(
    kamailio: Kamailio, make_pool: Callable[..., Awaitable[Pool]], phones: Phones
) -> None:
    """12 outbound calls with 3 workers are up at once (4 each); a 13th finds no slot until
    one is released."""
    pool = await make_pool(kamailio, 3)
    callees = [await phones(f"c{n}") for n in range(3)]
    for n, phone in enumerate(callees):
        await phone.register(kamailio, str(1011 + n))
        await phone.command("mode", on_incoming="answer", answer_after_ms=0)
    placed = []
    for n in range(12):
        placed.append(await _place(pool.pool, str(1011 + n % 3)))
    await pool.wait_for(lambda: len(pool.of(CallAnswered)) == 12)
    assert sorted(w for w, _ in placed) == [0] * 4 + [1] * 4 + [2] * 4
    assert pool.pool.active_calls == 12
    assert pool.pool.free_slots == 0
    thirteenth = asyncio.ensure_future(pool.pool.reserve_slot())
    await asyncio.sleep(1.0)
    assert not thirteenth.done()
    for worker, call in placed:
        await pool.pool.command(worker, "hangup", call=call)
        pool.pool.release_slot(worker)
    assert await asyncio.wait_for(thirteenth, 20) in (0, 1, 2)
    await pool.wait_for(lambda: pool.pool.active_calls == 0)


async def test_killed_worker_fails_its_call_and_comes_back(
    kamailio: Kamailio, make_pool: Callable[..., Awaitable[Pool]], phones: Phones
) -> None:
    """SIGKILL one worker mid-call: its call ends as failed, it re-registers, the other lives."""
    pool = await make_pool(kamailio, 2)
    callees = [await phones("c0"), await phones("c1")]
    for n, phone in enumerate(callees):
        await phone.register(kamailio, str(1011 + n))
        await phone.command("mode", on_incoming="answer", answer_after_ms=0)
    first = await _place(pool.pool, "1011")
    second = await _place(pool.pool, "1012")
    assert (first[0], second[0]) == (0, 1)
    await pool.wait_for(lambda: len(pool.of(CallAnswered)) == 2)

    victim = pool.pool.workers[0]
    old_pid = victim.pid
    assert old_pid is not None
    os.kill(old_pid, signal.SIGKILL)
    await pool.wait_for(lambda: any(e.local_cause == "worker_died" for e in pool.of(CallEnded)))
    [failed] = [e for e in pool.of(CallEnded) if e.local_cause == "worker_died"]
    assert failed.call == first[1]
    await pool.wait_for(lambda: victim.registered and victim.pid != old_pid, within=30)
    assert victim.restarts == 1
    assert len(await asyncio.to_thread(kamailio.contacts, "1000")) >= 2

    # The other worker's call was untouched and ends normally.
    assert second[1] in pool.pool.workers[1].calls
    assert not [e for e in callees[1].events if e.get("state") == "DISCONNECTED"]
    await pool.pool.command(1, "hangup", call=second[1])
    await pool.wait_for(lambda: any(e.call == second[1] for e in pool.of(CallEnded)))


SENTENCES = (
    "Hello, this is the clinic calling with the details of your visit next week.",
    "Please arrive fifteen minutes early and bring your insurance card and a photo ID.",
    "The parking garage on Maple Street is free for patients for the first two hours.",
    "If you take any medicine every day, bring the list of names and doses with you.",
)


def _long_message(characters: int) -> str:
    """Natural text of exactly ``characters`` characters (the API's limit is 5,000)."""
    text = ""
    for sentence in itertools.cycle(SENTENCES):
        if len(text) >= characters:
            return (text[: characters - 1].rstrip() + ".").ljust(characters)
        text += sentence + " "
    raise AssertionError("unreachable")


async def test_longest_message_reaches_the_worker_intact_before_dialling(
    kamailio: Kamailio, make_pool: Callable[..., Awaitable[Pool]], phones: Phones
) -> None:
    """5,000 characters of Piper speech (minutes of audio, many IPC frames) are in the worker
    sample for sample by the time the callee's phone rings."""
    pool = await make_pool(kamailio, 1)
    piper = await asyncio.to_thread(PiperSynthesizer)
    tts = TextToSpeech(piper, piper.name)  # the daemon's own TTS, as the supervisor builds it
    runner = PoolRunner(pool.pool, tts)
    callee = await phones("callee")
    await callee.register(kamailio, "1011")
    await callee.command("mode", on_incoming="ignore")
    message = _long_message(5000)
    rate = pool.pool.settings.sip.clock_rate
    expected = await tts.synthesize(message, rate)  # cached: the runner sends this very audio
    reports: list[str] = []

    async def report(status: str) -> None:
        reports.append(status)

    request = {"message": message, "extension": "1011", "ring_timeout": 6}
    running = asyncio.ensure_future(runner.run("long-1", request, report))
    try:
        await callee.expect("incoming", timeout=60)
        ping = await pool.pool.command(0, "ping")
    finally:
        result = await asyncio.wait_for(running, 60)
    held = ping["outbound"]["long-1"]["audio"]["message"]
    digest = hashlib.sha256(expected.astype("<i2").tobytes()).hexdigest()
    encoded = len(base64.b64encode(expected.astype("<i2").tobytes()))
    print(
        f"{len(message)} characters: {len(expected) / rate:.0f} s of speech, "
        f"{encoded} bytes of base64 ({encoded / MAX_FRAME:.1f} x the frame limit), intact"
    )
    assert len(message) == 5000
    assert encoded > 4 * MAX_FRAME  # far beyond what one frame carries
    assert held == {"samples": len(expected), "sha256": digest}, (held, len(expected))
    assert (result.status, reports) == ("no_answer", ["ringing"]), (result, reports)
