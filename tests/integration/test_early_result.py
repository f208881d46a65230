"""A result decided before the call ends: its webhook goes out at once, and the call's end
(black box, recording, end time) is attached later without a second webhook. Through the
real API app, SQLite store, webhook deliverer and a loopback receiver, with a scripted runner
standing in for the worker, then with a real SIP worker; and the closing line's trimmed tail."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from structlog.testing import capture_logs

from api.app import ApiContext, HealthReport, create_app
from api.webhooks import Deliverer
from daemon.calls.runner import (
    CLOSING,
    TAIL_KEEP_SECONDS,
    TAIL_LEVEL,
    PoolRunner,
    trim_tail,
)
from daemon.ipc.messages import Ping
from daemon.metrics import Metrics, ObservedRunner
from daemon.observe import FinishedCall
from daemon.outbound import CallResult, OutboundService, Report
from daemon.speech import TextToSpeech
from daemon.speech.local import PiperSynthesizer
from daemon.store import Store
from media.wav import write_wav
from tests.audio import tone
from tests.integration.conftest import Pool
from tests.peers.kamailio import Kamailio
from tests.peers.receiver import Receiver
from tests.support import callee

DECIDED = {
    "status": "completed",
    "duration_seconds": 6.5,  # the planned end: answer to the closing's last sample
    "message_played": True,
    "choice_response": "confirmed",
    "choice_raw_text": "yes I confirm",
    "sip_code": 200,
}
BLACK_BOX = {"outbound": {"answer_to_first_audio_ms": 40.0}}


@dataclass
class DecidingRunner:
    """Reports ``decided`` as a worker does once the answer matched, then waits (the closing
    words playing) until released, and returns the call's end, or fails if told to."""

    decided: dict[str, Any] = field(default_factory=lambda: dict(DECIDED))
    fail: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    recording: dict[str, Any] | None = None

    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        await report("ringing")
        await report("answered", answered_at=time.time())
        await report("decided", result=self.decided)
        await self.release.wait()
        if self.fail:
            raise RuntimeError("the worker went away during the closing")
        return CallResult(
            **{**DECIDED, "duration_seconds": 6.9},
            black_box=BLACK_BOX,
            recording=self.recording,
        )


@dataclass
class Watcher:
    """The observer's side: the finished calls it was told of."""

    finished: list[FinishedCall] = field(default_factory=list)

    def call_finished(self, call: FinishedCall) -> None:
        self.finished.append(call)

    def webhook_attempted(self, kind: str, state: str, queued_at: float, now: float) -> None:
        return


@dataclass
class Rig:
    client: httpx.AsyncClient
    runner: DecidingRunner
    watcher: Watcher
    receiver: Receiver
    service: OutboundService
    deliverer: Deliverer
    store: Store

    async def post(self) -> str:
        body = {
            "extension": "1001",
            "message": "Your parcel arrives tomorrow.",
            "callback_url": self.receiver.url,
            "choice": {"prompt": "Say yes to confirm.", "options": [{"value": "confirmed"}]},
        }
        answer = await self.client.post("/call", json=body)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["call_id"])

    async def view(self, call_id: str) -> dict[str, Any]:
        return dict((await self.client.get(f"/call/{call_id}")).json())


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    store = Store(tmp_path / "sipai.db")
    await store.open()
    runner, watcher, receiver = DecidingRunner(), Watcher(), Receiver()
    deliverer = Deliverer(store, "secret", waits=(0.2,) * 7)
    service = OutboundService(
        store, runner, 1, on_final=deliverer.wake, max_queued=10, observer=watcher
    )
    service.start()
    deliverer.start()
    ctx = ApiContext(
        health=lambda: HealthReport("healthy", False, "test", 1.0, 0, 0, []),
        store=store,
        outbound=service,
    )
    transport = httpx.ASGITransport(app=create_app(ctx), client=("127.0.0.1", 40000))
    client = httpx.AsyncClient(transport=transport, base_url="http://sipai")
    yield Rig(client, runner, watcher, receiver, service, deliverer, store)
    runner.release.set()
    await client.aclose()
    await service.stop()
    await deliverer.stop()
    await store.close()
    receiver.close()


async def _webhooks(rig: Rig, count: int) -> list[dict[str, Any]]:
    async with asyncio.timeout(10):
        while len(rig.receiver.requests()) < count:
            await asyncio.sleep(0.01)
    return [json.loads(r.body) for r in rig.receiver.requests()]


async def _ended(rig: Rig, call_id: str) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while (view := await rig.view(call_id))["ended_at"] is None:
            await asyncio.sleep(0.01)
    return view


async def test_the_webhook_goes_before_the_call_ends_and_the_end_is_attached(
    rig: Rig, tmp_path: Path
) -> None:
    """The receiver gets the decided result while the runner still waits on the closing; GET
    /call is final at once; once the call ends its black box, recording and end time are
    attached, the observer hears of it, and no second webhook is sent."""
    rig.runner.recording = {
        "path": str(tmp_path / "rec.wav"),
        "duration_seconds": 7.0,
        "bytes": 112044,
        "sha256": "00" * 32,
        "complete": True,
        "dropped_frames": 0,
        "rate": 8000,
    }
    call_id = await rig.post()
    [payload] = await _webhooks(rig, 1)
    assert not rig.runner.release.is_set(), "the webhook came only once the call ended"
    assert payload == {
        "call_id": call_id,
        "status": "completed",
        "extension": "1001",
        "duration_seconds": 6.5,
        "message_played": True,
        "choice_response": "confirmed",
        "choice_raw_text": "yes I confirm",
        "error": None,
    }
    early = await rig.view(call_id)
    assert (early["status"], early["call_status"], early["ended_at"]) == (
        "not_found",
        "completed",
        None,
    )
    assert (early["choice_response"], early["black_box"], early["sip_code"]) == (
        "confirmed",
        None,
        200,
    )
    assert rig.watcher.finished == [], "the observer waits for the call's end"

    rig.runner.release.set()
    view = await _ended(rig, call_id)
    assert view["black_box"] == BLACK_BOX
    assert view["recording"] is not None
    assert view["duration_seconds"] == 6.5, "the result stays the one the webhook carried"
    [finished] = rig.watcher.finished
    assert (finished.call_id, finished.status, finished.black_box) == (
        call_id,
        "completed",
        BLACK_BOX,
    )
    assert finished.recording is not None
    await asyncio.sleep(0.3)  # a second webhook would be on its way by now
    assert len(rig.receiver.requests()) == 1
    assert [h["kind"] for h in view["webhooks"]] == ["result"]


async def test_a_runner_failing_after_the_decision_leaves_the_result(rig: Rig) -> None:
    """The worker lost during the closing: the call stays completed with the decided result
    (no failure, no second webhook), and its end time is still recorded."""
    rig.runner.fail = True
    call_id = await rig.post()
    await _webhooks(rig, 1)
    rig.runner.release.set()
    view = await _ended(rig, call_id)
    assert (view["call_status"], view["error"], view["choice_response"]) == (
        "completed",
        None,
        "confirmed",
    )
    [finished] = rig.watcher.finished
    assert finished.status == "completed"
    await asyncio.sleep(0.3)
    assert len(rig.receiver.requests()) == 1


async def test_a_malformed_decision_is_ignored_and_the_call_ends_as_before(rig: Rig) -> None:
    """A decided result that is not a final status is logged and dropped: the result and its
    webhook come when the call ends, with the call's end."""
    rig.runner.decided = {**DECIDED, "status": "answered"}
    with capture_logs() as logs:
        call_id = await rig.post()
        async with asyncio.timeout(5):
            while not any(e["event"] == "call.decided_invalid" for e in logs):
                await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert rig.receiver.requests() == [], "no webhook before the call ended"
    assert (await rig.view(call_id))["call_status"] == "answered"
    rig.runner.release.set()
    [payload] = await _webhooks(rig, 1)
    assert payload["duration_seconds"] == 6.9, "the end's result, as without a decision"
    view = await _ended(rig, call_id)
    assert view["black_box"] == BLACK_BOX


async def test_a_decision_that_cannot_be_stored_leaves_the_end_result(rig: Rig) -> None:
    """A decided result whose webhook cannot be built (a duration given as text) is logged,
    and the call finishes with the end result when it ends: one webhook, never unfinished."""
    rig.runner.decided = {**DECIDED, "duration_seconds": "6.5"}
    with capture_logs() as logs:
        call_id = await rig.post()
        async with asyncio.timeout(5):
            while (await rig.view(call_id))["call_status"] != "answered":
                await asyncio.sleep(0.01)
        rig.runner.release.set()
        [payload] = await _webhooks(rig, 1)
        view = await _ended(rig, call_id)
    assert payload["duration_seconds"] == 6.9, "the end's result"
    assert (view["call_status"], view["black_box"]) == ("completed", BLACK_BOX)
    events = [e["event"] for e in logs]
    assert {"call.decided_invalid", "call.decided_failed"} & set(events), events
    assert "call.runner_failed" not in events, events
    await asyncio.sleep(0.3)
    assert len(rig.receiver.requests()) == 1


async def test_a_decision_the_store_refuses_leaves_the_end_result(rig: Rig) -> None:
    """The store fails while finishing the call early (a black box it cannot encode): that
    is logged (call.decided_failed) and the end result finishes the call, with one webhook."""
    rig.runner.decided = {**DECIDED, "black_box": {"unencodable": {1, 2}}}
    with capture_logs() as logs:
        call_id = await rig.post()
        async with asyncio.timeout(5):
            while (await rig.view(call_id))["call_status"] != "answered":
                await asyncio.sleep(0.01)
        rig.runner.release.set()
        [payload] = await _webhooks(rig, 1)
        view = await _ended(rig, call_id)
    assert payload["duration_seconds"] == 6.9, "the end's result"
    assert (view["call_status"], view["black_box"]) == ("completed", BLACK_BOX)
    events = [e["event"] for e in logs]
    assert "call.decided_failed" in events, events
    assert "call.runner_failed" not in events, events


async def test_a_stop_during_the_closing_still_records_an_end(rig: Rig) -> None:
    """The service stopped while the closing plays (the runner never returns): the call stays
    completed and has an end time, and the observer heard of it."""
    call_id = await rig.post()
    await _webhooks(rig, 1)
    await rig.service.stop()
    record = await rig.store.get_call(call_id)
    assert record is not None
    assert (record["status"], record["ended_at"] is not None) == ("completed", True), record
    assert [f.status for f in rig.watcher.finished] == ["completed"]


async def test_recover_gives_an_end_to_a_decided_call_left_without_one(tmp_path: Path) -> None:
    """At start-up a call that is final and answered but has no end time (the process died
    during the closing) gets its last update as its end, and keeps its status."""
    store = Store(tmp_path / "sipai.db")
    await store.open()
    try:
        await store.insert_call("c1", {"extension": "1001", "message": "Hi."})
        await store.update_call("c1", status="answered", answered_at=time.time())
        await store.finish_call("c1", "completed", {"call_id": "c1", "status": "completed"})
        left = await store.get_call("c1")
        assert left is not None
        watcher = Watcher()
        await OutboundService(store, None, 1, max_queued=10, observer=watcher).recover()
        record = await store.get_call("c1")
        assert record is not None
        assert (record["status"], record["ended_at"]) == ("completed", left["updated_at"])
        assert [f.status for f in watcher.finished] == ["completed"]
    finally:
        await store.close()


@dataclass
class DyingRunner(DecidingRunner):
    """Decides the call, then loses its worker during the closing (as PoolRunner reports)."""

    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        await report("answered", answered_at=time.time())
        await report("decided", result=self.decided)
        return CallResult("failed", error="SIP worker 0 died during the call")


async def test_the_metrics_count_a_decided_call_by_its_decision(tmp_path: Path) -> None:
    """A call decided (message played, completed) whose worker dies during the closing is
    counted completed/completed in sipai_calls_total, as it is stored, not callee_hangup."""
    store = Store(tmp_path / "sipai.db")
    await store.open()
    metrics = Metrics(lambda: HealthReport("healthy", False, "test", 1.0, 0, 0, []), dict, dict)
    runner = ObservedRunner(DyingRunner(), metrics)
    service = OutboundService(store, runner, 1, max_queued=10, observer=metrics)
    service.start()
    try:
        await service.submit("c1", {"extension": "1001", "message": "Hi."})
        async with asyncio.timeout(10):
            while (record := await store.get_call("c1"))["ended_at"] is None:
                await asyncio.sleep(0.01)
        assert record["status"] == "completed"
        exposition = metrics.exposition({}).decode()
        counted = [
            line for line in exposition.splitlines() if line.startswith("sipai_calls_total{")
        ]
        assert counted == [
            'sipai_calls_total{direction="outbound",end_cause="completed",status="completed"} 1.0'
        ], counted
    finally:
        await service.stop()
        await store.close()


async def test_a_decision_after_the_finish_changes_nothing(tmp_path: Path) -> None:
    """A decided result stored after the call was finished (failed) is not published: one
    final status for the console, one call.finished, and the call stays failed."""
    store = Store(tmp_path / "sipai.db")
    await store.open()
    try:
        service = OutboundService(store, None, 1, max_queued=10)
        statuses: list[str] = []
        service.status_listeners.append(lambda call_id, status, record: statuses.append(status))
        await store.insert_call("c1", {"extension": "1001", "message": "Hi."})
        record = await store.get_call("c1")
        assert record is not None
        with capture_logs() as logs:
            await service._finish("c1", record, CallResult("failed", error="internal error"))
            await service._finish("c1", record, CallResult(**DECIDED), early=True)
        assert statuses == ["failed"]
        assert [e["event"] for e in logs].count("call.finished") == 1, logs
        assert (await store.get_call("c1") or {})["status"] == "failed"
    finally:
        await store.close()


async def test_the_console_is_told_when_the_end_is_attached(rig: Rig) -> None:
    """The status listeners hear of the call again once its end is attached: by then GET
    /call shows its end time and black box."""
    seen: list[tuple[str, Any]] = []

    def listener(call_id: str, status: str, record: dict[str, Any]) -> None:
        seen.append((status, asyncio.ensure_future(rig.store.get_call(call_id))))

    rig.service.status_listeners.append(listener)
    call_id = await rig.post()
    await _webhooks(rig, 1)
    rig.runner.release.set()
    await _ended(rig, call_id)
    async with asyncio.timeout(5):
        while len([s for s, _ in seen if s == "completed"]) < 2:
            await asyncio.sleep(0.01)
    last_status, last_view = seen[-1]
    last = await last_view
    assert (last_status, last["ended_at"] is not None, last["black_box"]) == (
        "completed",
        True,
        BLACK_BOX,
    )


def test_the_closing_loses_its_trailing_silence_but_its_last_sound() -> None:
    """trim_tail cuts what follows the last sample above -50 dBFS, keeping 60 ms for the
    decay; audio that is all silence is kept whole."""
    rate = 8000
    voice = tone(440, rate, 0.5)
    quiet = np.full(rate // 4, 50, dtype=np.int16)  # 0.25 s at -56 dBFS
    trimmed = trim_tail(np.concatenate((voice, quiet)), rate)
    loud_end = int(np.flatnonzero(np.abs(voice.astype(np.int32)) > 103)[-1]) + 1
    assert len(trimmed) == loud_end + round(TAIL_KEEP_SECONDS * rate)
    print(f"trailing silence trimmed: {(len(voice) + len(quiet) - len(trimmed)) / rate:.3f} s")
    silent = np.zeros(800, dtype=np.int16)
    assert trim_tail(silent, rate) is silent
    assert len(trim_tail(voice, rate)) == len(voice)


async def test_the_spoken_closing_ends_with_its_last_word() -> None:
    """Piper's "Thank you. Goodbye." at 8 kHz loses its trailing silence but 60 ms (about
    0.1 s of call time: its last 0.17 s are under -50 dBFS) and nothing above -50 dBFS."""
    model = PiperSynthesizer()
    audio = await TextToSpeech(model, model.name).synthesize(CLOSING, 8000)
    trimmed = trim_tail(audio, 8000)
    cut = audio[len(trimmed) :]
    saved = len(cut) / 8000
    print(f"closing {len(audio) / 8000:.3f} s -> {len(trimmed) / 8000:.3f} s (-{saved:.3f} s)")
    assert np.array_equal(trimmed, audio[: len(trimmed)])
    assert saved >= 0.05, f"only {saved:.3f} s of trailing silence trimmed"
    last_loud = int(np.flatnonzero(np.abs(trimmed.astype(np.int32)) > TAIL_LEVEL)[-1])
    assert len(trimmed) - last_loud - 1 == round(TAIL_KEEP_SECONDS * 8000)
    assert int(np.abs(cut.astype(np.int32)).max()) <= TAIL_LEVEL, "a sound was cut"


async def test_a_key_decides_the_call_and_its_webhook_goes_before_the_hang_up(
    kamailio: Kamailio, make_pool: Callable[..., Awaitable[Pool]], tmp_path: Path
) -> None:
    """Through a real SIP worker: the callee presses 1 while the daemon listens; the worker's
    outbound_decided reaches the service through PoolRunner, the webhook is attempted before
    the call has ended (by about the closing's length), and the end is attached after; the
    worker got the closing without its trailing silence."""
    pool = await make_pool(kamailio, 1)
    piper = await asyncio.to_thread(PiperSynthesizer)
    tts = TextToSpeech(piper, piper.name)
    store = Store(tmp_path / "sipai.db")
    await store.open()
    receiver = Receiver()
    deliverer = Deliverer(store, "secret", waits=(0.2,) * 7)
    service = OutboundService(
        store, PoolRunner(pool.pool, tts), 1, on_final=deliverer.wake, max_queued=10
    )
    service.start()
    deliverer.start()
    message, prompt = "Your parcel arrives tomorrow.", "Press 1 to confirm."
    talk = 0.0  # seconds of the message and the prompt (cached: the very audio sent)
    for text in (message, prompt):
        talk += len(await tts.synthesize(text, 8000)) / 8000
    silent = tmp_path / "silent.wav"
    write_wav(silent, 8000, np.zeros(160, dtype=np.int16))
    try:
        async with callee(kamailio, "1012") as phone:
            await service.submit(
                "early-1",
                {
                    "extension": "1012",
                    "message": message,
                    "callback_url": receiver.url,
                    "ring_timeout": 10,
                    "choice": {
                        "prompt": prompt,
                        "options": [{"value": "confirmed", "synonyms": [], "dtmf": "1"}],
                        "timeout_seconds": 8,
                        "repeat_count": 1,
                    },
                },
            )
            incoming = await phone.expect("incoming", timeout=20)
            call = incoming["call"]
            await phone.expect("media", call=call, status="active")
            held = (await pool.pool.request(0, Ping())).outbound["early-1"].audio["closing"]
            closing = await tts.synthesize(CLOSING, 8000)
            assert held.samples == len(trim_tail(closing, 8000)) < len(closing), (
                f"the worker holds a closing of {held.samples} samples, {len(closing)} untrimmed"
            )
            # the prompt heard (talk time, not a timer), then a 600 ms pause: listening
            await phone.command(
                "reply", call=call, wav=str(silent), after_s=0.9 * talk, silence_ms=600
            )
            await phone.expect("replied", call=call, timeout=30)
            await phone.command("dtmf", call=call, digits="1", method="rfc4733")
            async with asyncio.timeout(30):
                while not receiver.requests():
                    await asyncio.sleep(0.01)
            payload = json.loads(receiver.requests()[0].body)
            assert (payload["choice_response"], payload["choice_raw_text"]) == (
                "confirmed",
                "dtmf:1",
            )
            await phone.expect("call", call=call, state="DISCONNECTED", timeout=20)
            async with asyncio.timeout(10):
                while (record := await store.get_call("early-1"))["ended_at"] is None:
                    await asyncio.sleep(0.02)
        [hook] = record["webhooks"]
        sent = hook["attempts"][0]["at"]
        ahead = record["ended_at"] - sent
        print(f"webhook attempted {ahead:.3f} s before the call ended")
        assert ahead > 0, f"the webhook went {-ahead:.3f} s after the call ended"
        assert record["black_box"] is not None
        assert len(receiver.requests()) == 1
    finally:
        await service.stop()
        await deliverer.stop()
        await store.close()
        receiver.close()
