"""The web worker process under the supervisor's pool, answering an aiortc browser on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from structlog.testing import capture_logs

from api.app import WebCallRefused
from api.webhooks import Deliverer
from config import Settings
from config.schema import AgentSettings, ApiSettings, RealtimeSettings
from daemon.call_feed import CallFeed
from daemon.inbound_records import InboundRecords, inbound_view
from daemon.legs.leg import CallLeg, LegError
from daemon.legs.memory import MediaClock, MemoryNetwork
from daemon.legs.webrtc import consent_bounds, use_ice_addresses
from daemon.store import Store
from daemon.web import WEB_WORKER_BASE
from daemon.web.flows import WebContext, web_agent
from daemon.web.pool import OFFER_SECONDS, REFRESH_SECONDS, WebPool
from sip.events import CallAnswered, SipEvent
from tests.peers.realtime_server import FakeRealtime, FakeSession

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz
GREETING = (np.sin(2 * np.pi * 700 * np.arange(8000) / 8000) * 8000).astype(np.int16)


class ToneTrack(MediaStreamTrack):
    """The browser's microphone: a 440 Hz tone in 20 ms frames, paced in real time."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._sent = 0
        self._start: float | None = None

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        self._start = now if self._start is None else self._start
        due = self._start + self._sent * 0.02
        if due > now:
            await asyncio.sleep(due - now)
        t = (np.arange(FRAME) + self._sent * FRAME) / RATE
        pcm = (np.sin(2 * np.pi * 440 * t) * 6000).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._sent * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self._sent += 1
        return frame


@dataclass
class Browser:
    """An aiortc peer playing the browser's part: offers, plays a tone, hears the daemon."""

    pc: RTCPeerConnection
    messages: list[Any] = field(default_factory=list)  # on the "sipai" channel
    peak: int = 0  # loudest sample heard
    closed: asyncio.Event = field(default_factory=asyncio.Event)  # hung up or disconnected
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    async def offer(cls) -> tuple[Browser, str]:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        browser = cls(pc)
        channel = pc.createDataChannel("sipai")

        @channel.on("message")
        def on_message(message: str) -> None:
            browser.messages.append(json.loads(message))
            if browser.messages[-1].get("type") == "hangup":
                browser.closed.set()

        @pc.on("connectionstatechange")
        def on_state() -> None:
            if pc.connectionState in ("closed", "failed"):
                browser.closed.set()

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            browser.tasks.append(asyncio.create_task(browser._hear(track)))

        pc.addTrack(ToneTrack())
        await pc.setLocalDescription(await pc.createOffer())
        return browser, pc.localDescription.sdp

    async def _hear(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                self.peak = max(self.peak, int(np.abs(frame.to_ndarray()).max()))

    async def answered(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="answer"))

    async def close(self) -> None:
        await self.pc.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


@dataclass
class Rig:
    pool: WebPool
    store: Store
    fake: FakeRealtime
    fed: list[dict[str, Any]]  # what the console's live feed was told, in order
    answers: list[tuple[int, Any]]  # the browsers' connections, as the pool told them
    browsers: list[Browser] = field(default_factory=list)

    async def call(self) -> tuple[Browser, str]:
        """A browser offers to the agent; (the browser, the call's id)."""
        browser, sdp = await Browser.offer()
        self.browsers.append(browser)
        call, answer = await self.pool.offer(sdp, "agent", None, "web:default", "aiortc")
        await browser.answered(answer)
        return browser, call

    async def record(
        self, call: str, until: Callable[[dict[str, Any]], bool], within: float = 15.0
    ) -> dict[str, Any]:
        """The call's record once ``until`` holds for it."""
        async with asyncio.timeout(within):
            while True:
                record = await self.store.get_inbound(call)
                if record is not None and until(record):
                    return record
                await asyncio.sleep(0.05)


Script = Callable[[FakeSession], Awaitable[None]]
MakeRig = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[MakeRig]:
    """A WebPool (real ``python -m daemon.web``) with its events stored as inbound records,
    the agent on the scripted fake model; everything on 127.0.0.1."""
    use_ice_addresses(["127.0.0.1"])  # this process's browsers gather on loopback only
    stack = contextlib.AsyncExitStack()
    made: list[Rig] = []

    async def make(
        script: Script,
        offer_seconds: float = OFFER_SECONDS,
        refresh_seconds: float = REFRESH_SECONDS,
        inbound_url: str = "",
        **web: Any,
    ) -> Rig:
        fake = await stack.enter_async_context(FakeRealtime("ga", script))
        store = Store(tmp_path / "sipai.db")
        await store.open()
        stack.push_async_callback(store.close)
        feed = CallFeed()
        records = InboundRecords(store, Deliverer(store), inbound_url, feed=feed)
        fed: list[dict[str, Any]] = []

        async def follow() -> None:
            async for event in feed.subscribe():
                fed.append(event)

        following = asyncio.create_task(follow())
        stack.callback(following.cancel)
        settings = Settings(
            agent=AgentSettings(backend="url", url=fake.url, greeting="hello"),
            web={"ice_addresses": ["127.0.0.1"], **web},
            daemon={"runtime_dir": str(tmp_path / "run")},
            # the engine's /v1/realtime (engine calls) is the fake model too
            api={"host": "127.0.0.1", "port": int(fake.url.split(":")[2].split("/")[0])},
        )
        pool = WebPool(settings, offer_seconds=offer_seconds, refresh_seconds=refresh_seconds)
        pool.inbound_listeners.append(records.on_inbound)
        pool.call_listeners.append(records.on_sip_event)
        answers: list[tuple[int, Any]] = []
        pool.call_listeners.append(lambda worker, event: answers.append((worker, event)))
        stack.push_async_callback(pool.stop)
        await pool.start()
        made.append(Rig(pool, store, fake, fed, answers))
        return made[-1]

    yield make
    for made_rig in made:
        for browser in made_rig.browsers:
            await browser.close()
    await stack.aclose()
    use_ice_addresses([])


async def greet_then_end(session: FakeSession) -> None:
    """The model greets, hears the caller, says goodbye and ends the call."""
    await session.respond(GREETING, transcript="Hello, how can I help?")
    await session.caller_said("I would like a call back.")
    await session.respond(GREETING[:4000], transcript="Goodbye.")
    await asyncio.sleep(0.6)  # the goodbye plays out
    await session.call_tool("end_call", {})


async def keep_talking(session: FakeSession) -> None:
    """The model greets and then only listens: the call lasts until someone hangs up."""
    await session.respond(GREETING, transcript="Hello.")
    await asyncio.Event().wait()


async def test_an_offer_gets_an_answer_and_the_call_a_web_record(rig: MakeRig) -> None:
    """An aiortc browser's offer is answered by a real web worker; the agent greets it (the
    browser hears audio), the model hears the browser, its connection is told as a call's
    answer, and the call's record is a finished ``web`` call of ``web:default`` with its
    transcript and black box, viewed as such; the console's live feed is told its start, its
    turns and its end, as a web call."""
    made = await rig(greet_then_end)
    browser, call = await made.call()
    assert call.startswith("in-"), call
    record = await made.record(call, lambda r: r["status"] != "in_progress")
    session = await made.fake.session()
    view = inbound_view(record)
    assert (record["direction"], view["direction"]) == ("web", "web"), record
    assert record["caller"] == "web:default"
    assert record["worker"] == WEB_WORKER_BASE, record
    assert record["status"] == "completed", record
    assert made.answers == [(WEB_WORKER_BASE, CallAnswered(call="web-1"))], made.answers
    assert record["answered_at"] is not None, record
    turns = [(t["role"], t["text"]) for t in record["transcript"]]
    assert ("caller", "I would like a call back.") in turns, turns
    assert ("agent", "Goodbye.") in turns, turns
    box = record["black_box"]
    assert box is not None, record
    assert box["connect_seconds"] > 0.5, box
    assert session.input_ms > 500, f"the model heard {session.input_ms} ms of the browser"
    assert browser.peak > 2000, f"the browser heard a peak of {browser.peak}"
    async with asyncio.timeout(5):
        await browser.closed.wait()  # end_call hung up the browser
    assert {"type": "hangup"} in browser.messages, browser.messages
    # the feed is told after the store wrote the end: its follower may be a step behind
    async with asyncio.timeout(5):
        while not [e for e in made.fed if e["call_id"] == call and e["status"] != "in_progress"]:
            await asyncio.sleep(0.02)
    fed = [e for e in made.fed if e["call_id"] == call]
    assert [e["direction"] for e in fed] == ["web"] * len(fed), fed
    assert fed[0]["status"] == "in_progress", fed
    assert "answered" in [e["call_status"] for e in fed], fed  # a turn came once connected
    assert fed[0]["caller"] == "web:default", fed
    assert {"role": "caller", "text": "I would like a call back."} in [
        {k: e["turn"][k] for k in ("role", "text")} for e in fed if "turn" in e
    ], fed
    assert fed[-1]["call_status"] == "completed", fed


async def test_a_full_web_worker_refuses_with_503_and_a_detail(rig: MakeRig) -> None:
    """With ``max_calls = 1`` a second offer is refused with 503 and a detail naming the
    full worker, while the first call goes on."""
    made = await rig(keep_talking, max_calls=1)
    _, first = await made.call()
    browser, sdp = await Browser.offer()
    made.browsers.append(browser)
    with pytest.raises(WebCallRefused) as refused:
        await made.pool.offer(sdp, "agent", None, "web:default", "aiortc")
    assert refused.value.status == 503
    assert "full (1 calls)" in refused.value.detail, refused.value
    record = await made.store.get_inbound(first)
    assert record is not None
    assert record["status"] == "in_progress", record


async def test_a_killed_web_worker_fails_its_call_and_comes_back(rig: MakeRig) -> None:
    """kill -9 of the web worker mid-call: the call's record ends failed, the worker is
    restarted, and a new offer is answered."""
    made = await rig(keep_talking)
    _, call = await made.call()
    await made.record(call, lambda r: bool(r["transcript"]))  # the greeting is being heard
    worker = made.pool.workers[0]
    assert worker.pid is not None
    os.kill(worker.pid, signal.SIGKILL)
    record = await made.record(call, lambda r: r["status"] != "in_progress")
    assert record["status"] == "failed", record
    assert "died" in (record["error"] or ""), record
    assert record["end_cause"].startswith("worker_died: web worker 1000 died"), record
    async with asyncio.timeout(15):
        while not made.pool.health()["up"]:
            await asyncio.sleep(0.05)
    assert made.pool.health()["restarts"] == 1, made.pool.health()
    _, again = await made.call()
    assert again != call


async def test_drain_hangs_up_browser_calls_within_the_bound(rig: MakeRig) -> None:
    """Draining refuses new offers with 503; once the bound (1 s) is over, stopping the pool
    hangs up the browser, which sees the hang-up within 3 s of the drain's start."""
    made = await rig(keep_talking)
    browser, call = await made.call()
    await made.record(call, lambda r: bool(r["transcript"]))
    started = time.monotonic()
    draining = asyncio.create_task(made.pool.drain())
    late, sdp = await Browser.offer()
    made.browsers.append(late)
    with pytest.raises(WebCallRefused) as refused:
        await made.pool.offer(sdp, "agent", None, "web:default", "aiortc")
    assert refused.value.status == 503, refused.value
    done, _ = await asyncio.wait({draining}, timeout=1.0)
    assert not done, "the drain ended with a call up"
    draining.cancel()
    await made.pool.stop()
    async with asyncio.timeout(3):
        await browser.closed.wait()
    elapsed = time.monotonic() - started
    assert elapsed < 3.0, f"the browser saw the hang-up {elapsed:.2f} s after the drain began"
    print(f"hang-up seen {elapsed:.2f} s after the drain began")
    record = await made.record(call, lambda r: r["status"] != "in_progress")
    assert record["status"] == "completed", record


def test_aiortc_loads_in_the_web_worker_only() -> None:
    """Importing the supervisor (with its web pool) and the SIP worker's process loads none of
    aiortc, aioice, pylibsrtp or av; the web worker's process loads aiortc."""
    probe = (
        "import sys\n"
        "import daemon.supervisor, daemon.worker.process\n"
        "libs = ('aiortc', 'aioice', 'pylibsrtp', 'av')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(libs)))\n"
        "import daemon.web.process\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & set(libs)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    ).stdout.splitlines()
    assert out[0] == "[]", f"the supervisor or a SIP worker loads {out[0]}"
    assert "'aiortc'" in out[1], out


class FailingLeg:
    """A browser call's leg whose answer fails unexpectedly and whose hang-up raises once it
    has torn the call down (as a leg racing its own end may); the rest is the memory leg."""

    def __init__(self, leg: CallLeg) -> None:
        self._leg = leg

    def __getattr__(self, name: str) -> Any:
        return getattr(self._leg, name)

    async def answer(self) -> None:
        raise RuntimeError("boom")

    async def hangup(self) -> None:
        await self._leg.hangup()
        raise LegError("call already gone")


@dataclass
class WebReports:
    """The web worker's side of the supervisor: the reports and call events a flow sent."""

    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def report(self, kind: str, body: dict[str, Any]) -> None:
        self.sent.append((kind, body))

    async def sip_event(self, event: SipEvent) -> None:
        self.sent.append(("sip_event", {"event": event}))


async def test_a_failing_browser_call_whose_hangup_raises_still_ends_its_record() -> None:
    """A browser call whose agent fails and whose hang-up then raises still sends
    ``inbound_done`` (cause ``internal error``), so its record does not stay in progress."""
    reports = WebReports()
    async with FakeRealtime("ga") as fake, MediaClock(speed=1.0) as clock:
        memory_leg, _phone = MemoryNetwork(clock, rate=8000).incoming("web")
        ctx = WebContext(
            index=0,
            services=reports,
            agent=AgentSettings(backend="url", url=fake.url, greeting=""),
            api=ApiSettings(),
            realtime=RealtimeSettings(),
        )
        with capture_logs() as logs:
            async with asyncio.timeout(15):
                await web_agent(ctx, FailingLeg(memory_leg), "web-fails")  # type: ignore[arg-type]
    done = [body for kind, body in reports.sent if kind == "inbound_done"]
    assert [body["cause"] for body in done] == ["internal error"], reports.sent
    failed = [e["error"] for e in logs if e["event"] == "call.web_hangup_failed"]
    assert failed == ["LegError('call already gone')"], failed


async def engine_closes(session: FakeSession) -> None:
    """The engine's session ends itself at once (a closed WebSocket)."""
    await session.ws.close()


async def test_calls_that_end_by_themselves_leave_no_entry_in_the_pool(rig: MakeRig) -> None:
    """Four engine calls that end by themselves (the engine closes their sessions) and an agent
    call that ends with end_call, while another call keeps the worker busy, leave only that
    call in the pool's map of calls, each gone within 5 s of its end. The pool's refresh (which
    would also find them gone) is set to 60 s, past the test's end: the worker's report of each
    end (web_call_ended) is what clears them."""

    async def first_stays(session: FakeSession) -> None:
        opened = session.server.sessions.index(session)  # in the order the calls came
        if opened == 0:
            await keep_talking(session)
        elif opened <= 4:
            await engine_closes(session)
        else:
            await greet_then_end(session)

    made = await rig(first_stays, refresh_seconds=60.0)
    keeper, sdp = await Browser.offer()
    made.browsers.append(keeper)
    kept, answer = await made.pool.offer(sdp, "engine", None, "web:default", "aiortc")
    await keeper.answered(answer)
    for _ in range(4):
        browser, sdp = await Browser.offer()
        made.browsers.append(browser)
        _, answer = await made.pool.offer(sdp, "engine", None, "web:default", "aiortc")
        await browser.answered(answer)
    _, agent_call = await made.call()
    await made.record(agent_call, lambda r: r["status"] != "in_progress", within=20)
    deadline = time.monotonic() + 5
    while made.pool.known_calls != [kept] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    left = made.pool.known_calls
    print(f"calls known to the pool once the others ended: {len(left)}")
    assert left == [kept], left
    assert made.pool.health()["calls"] == 1, made.pool.health()


VANISHING_BROWSER = """
import asyncio, json, sys
from daemon.legs.webrtc import use_ice_addresses
from tests.peers.webrtc_client import WebRtcClient

async def main() -> None:
    use_ice_addresses(["127.0.0.1"])
    client = WebRtcClient()
    print(json.dumps(await client.offer()), flush=True)
    answer = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await client.accept(json.loads(answer))
    await client.connected.wait()
    print("connected", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_a_vanished_browser_ends_its_engine_session_within_seconds(rig: MakeRig) -> None:
    """A browser killed mid-call (no hang-up, no DTLS close: a closed tab or a lost network)
    has its engine session's WebSocket closed within the longest consent expiry for [web]
    consent_seconds (2 s here, to stay quick: at most 4.9 s) plus 3 s; aioice's own consent
    timing took about 30 s, the default setting up to 14.5 s. Waits up to 45 s to report the
    time either way."""
    consent = 2.0
    bound = consent_bounds(consent)[1] + 3.0
    made = await rig(keep_talking, consent_seconds=consent)
    browser = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        VANISHING_BROWSER,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert browser.stdin is not None
    assert browser.stdout is not None
    try:
        offer = json.loads(await asyncio.wait_for(browser.stdout.readline(), 30))
        _, answer = await made.pool.offer(offer, "engine", None, "web:default", "aiortc")
        browser.stdin.write(json.dumps(answer).encode() + b"\n")
        await browser.stdin.drain()
        assert await asyncio.wait_for(browser.stdout.readline(), 15) == b"connected\n"
        session = await made.fake.session()
        await session.wait_for_input(lambda pcm: len(pcm) >= 8000, 15)  # 1 s of the track
        browser.kill()
        await browser.wait()
        gone = time.monotonic()
        await asyncio.wait_for(session.ws.wait_closed(), 45)
        elapsed = time.monotonic() - gone
        print(f"engine session closed {elapsed:.1f} s after the browser went (bound {bound:.1f} s)")
        assert elapsed < bound, f"the engine session closed {elapsed:.1f} s after the browser went"
    finally:
        if browser.returncode is None:
            browser.kill()
            await browser.wait()


async def test_an_offer_a_worker_answers_too_late_never_runs_a_second_call(rig: MakeRig) -> None:
    """A web worker that answers an offer after the pool gave up on it (stopped for 2 s, the
    offer bound here) does not run a call under the id of the call the next worker answered:
    each attempt has its own record id, and the late call is hung up at once, leaving no
    record and queuing no inbound.ended webhook (no browser ever had that call)."""
    started: list[tuple[int, str]] = []  # (worker, record id) of each inbound_call
    done: list[int] = []

    def heard(worker: int, kind: str, body: Any) -> None:
        if kind == "inbound_call":
            started.append((worker, body["record_id"]))
        elif kind == "inbound_done":
            done.append(worker)

    made = await rig(
        keep_talking, offer_seconds=2.0, inbound_url="http://127.0.0.1:9/inbound", workers=2
    )
    made.pool.inbound_listeners.append(heard)
    slow = made.pool.workers[0]  # asked first: the fewest calls, the lowest index
    assert slow.pid is not None
    with capture_logs() as logs:
        os.kill(slow.pid, signal.SIGSTOP)
        try:
            _, call = await made.call()
        finally:
            os.kill(slow.pid, signal.SIGCONT)
        resumed = time.monotonic()

        def seen(event: str) -> list[dict[str, Any]]:
            return [e for e in logs if e["event"] == event and e.get("worker") == slow.index]

        async with asyncio.timeout(15):  # the late call is answered, hung up and over
            while not (seen("web.late_call_done") or slow.index in done):
                await asyncio.sleep(0.05)
        [hung_up] = seen("web.late_answer_hung_up")
    late = hung_up["call_id"]
    print(
        f"late call {late} on worker {slow.index} over"
        f" {time.monotonic() - resumed:.2f} s after it woke"
    )
    assert late != call
    assert started == [(slow.index + 1, call)], f"the late call was reported: {started}"
    assert done == [], done
    assert await made.store.get_inbound(late) is None, "the late call left a record"
    history = [r["call_id"] for r in await made.store.list_inbound(10, direction="web")]
    assert history == [call], history
    queued = [w.call_id for w in await made.store.due_webhooks(time.time() + 3600)]
    assert queued == [], f"webhooks queued: {queued}"
    record = await made.store.get_inbound(call)
    assert record is not None
    assert record["status"] == "in_progress", record  # the browser's call goes on
    assert record["worker"] == slow.index + 1, record


async def test_a_restart_that_cannot_spawn_is_tried_again(rig: MakeRig) -> None:
    """A killed web worker whose restart fails to spawn (the supervisor out of file
    descriptors: EMFILE) is logged as web.spawn_failed and restarted on a later backoff step
    once descriptors are free again, instead of never again."""
    made = await rig(keep_talking)
    worker = made.pool.workers[0]
    assert worker.pid is not None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with capture_logs() as logs:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (0, hard))  # no descriptor can open
            os.kill(worker.pid, signal.SIGKILL)
            async with asyncio.timeout(10):
                while not any(e["event"] == "web.spawn_failed" for e in logs):
                    await asyncio.sleep(0.05)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        freed = time.monotonic()
        async with asyncio.timeout(20):
            while not worker.up:
                await asyncio.sleep(0.05)
    [failed, *_] = [e for e in logs if e["event"] == "web.spawn_failed"]
    print(f"spawn failed ({failed['error']}); up again {time.monotonic() - freed:.1f} s later")
    assert "Too many open files" in failed["error"], failed
    assert worker.restarts >= 2, worker.restarts
