"""Browser calls: what the daemon's WebRTC leg adds to a call's latency, and what it costs.

The "browser" is an aiortc peer in this process (Chromium is for tests, not for timing) whose
microphone plays a 5 ms click every 500 ms and silence between; it hears the other end back
and times each click's return. The other end runs in a subprocess (``python -m bench.webrtc
serve``), on loopback only, with one of:

- ``reference``: a bare aiortc peer that sends back every decoded frame as it arrives - the
  floor of Opus both ways, aiortc's jitter buffer and the loopback network;
- ``leg``: the daemon's :class:`daemon.legs.webrtc.WebRtcLeg` at 8 kHz (an ``audio/pcmu``
  model's rate) whose caller audio is pushed back into its playout by an echo in place of the
  call flow (as ``bench.policies:model_echo`` does for SIP calls, without the model socket):
  48k -> 8k and back, the playout buffer and the leg's paced track. Only the frames of a click
  are pushed (as a model sends audio only when it speaks), so nothing is queued ahead of one
  and the leg's 20 ms clock underruns in between; the wait for its next tick is in the figure.

Per run, over every click: the round trip (click handed to the browser's encoder -> heard
back, on this process's clock) p50/p99; the uplink (-> the click's frame reaching the far end:
the leg's uplink stamp, or the reference peer's decoded frame; ``CLOCK_MONOTONIC`` is shared
by the two processes) and the downlink (that arrival -> heard back); ``added_*_ms`` are the
``leg`` run's p50s minus the ``reference`` run's. CPU of the subprocess per browser call
(% of one core, steady state, with 1 and 4 calls at once), its RSS, and how late its event
loop woke a 10 ms sleep (p99 and max over the run: aiortc holds the GIL for a frame and more).

Where browser calls run is decided by two more sets of runs, each with the largest
``--legs`` count of browser calls up, against the same without any browser call (the spread
of those is the noise of the machine):

- ``engine_path``: the embedded engine, the default backend of SIP calls, is served by the
  supervisor's event loop. A stand-in for its socket (per 20 ms frame: parse an append,
  answer a delta) is served in a process of its own; a probe process plays ``bench.bridge``'s
  4 SIP calls' agents on it (a 20 ms mu-law append every 20 ms each) and times each answer.
  Runs, repeated ``--rounds`` times: ``alone``; ``web_worker`` (browser calls up in another
  process, as web workers hold them: CPU contention only); ``supervisor`` (browser calls on
  the stand-in's own loop, as if the supervisor held them); then ``alone`` once more.
- ``with_sip`` (``--with-sip``, needs sipp and kamailio): ``bench.bridge``'s 4 SIP calls with
  mu-law passthrough (its ``pcmu`` run) alone, with the browser calls up in a process of their
  own, and alone again: the SIP calls' uplink and downlink p99 and CPU per call. SIP media
  runs in SIP workers in either placement, so this bounds both.

``decision`` applies :data:`RULE` to the medians over ``--rounds`` rounds of ``engine_path``:
``placement`` is ``web_worker``, ``supervisor`` or ``undecided``.

Run: .venv/bin/python -m bench.webrtc [--seconds 10] [--legs 1 4] [--with-sip] [--rounds 3].
Prints one JSON object on stdout, logs on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fractions
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import aiortc
import av
import numpy as np
import websockets
from aiortc import RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from numpy.typing import NDArray

from bench import bridge
from bench.calls import _cpu_seconds, _rss_mib
from bench.report import emit
from daemon.legs.leg import CallInfo
from daemon.legs.webrtc import WebRtcLeg, peer_connection, use_ice_addresses
from media import opus_frames
from tests.peers.webrtc_client import FRAME, RATE, ToneTrack, WebRtcClient
from tests.support import free_port

CLICK_EVERY = 25  # frames: a click every 500 ms
CLICK_AT = 240  # the click starts this many samples into its frame
CLICK_SAMPLES = 240  # 5 ms
THRESHOLD = 4000  # a sample above this is the click (Opus noise stays far below)
LEG_RATE = 8000
LAG_PERIOD = 0.01  # the far end's loop is watched with sleeps this long
ENGINE_FRAME = 160  # bytes: 20 ms of 8 kHz mu-law, as a SIP call on PCMU sends it
SETTLE_SECONDS = 2.0  # left out of the CPU figure: connection set-up and Opus start-up


def _first_loud(pcm: NDArray[np.int16]) -> int | None:
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > THRESHOLD)
    return int(loud[0]) if len(loud) else None


class ClickTrack(ToneTrack):
    """The browser's microphone: silence with a 5 ms 2 kHz click every 500 ms."""

    def __init__(self) -> None:
        super().__init__(0.0)
        t = np.arange(CLICK_SAMPLES) / RATE
        self._click = np.zeros(FRAME, dtype=np.int16)
        burst = 20000 * np.sin(2 * np.pi * 2000 * t) * np.hanning(CLICK_SAMPLES)
        self._click[CLICK_AT : CLICK_AT + CLICK_SAMPLES] = np.rint(burst).astype(np.int16)
        self._silence = np.zeros(FRAME, dtype=np.int16)

    def samples(self, index: int) -> NDArray[np.int16]:
        return self._click if index % CLICK_EVERY == CLICK_EVERY - 1 else self._silence

    @property
    def clicks(self) -> list[float]:
        """When each click was handed to the encoder."""
        return [
            at + CLICK_AT / RATE
            for index, at in enumerate(self.sent_at)
            if index % CLICK_EVERY == CLICK_EVERY - 1
        ]


def _browser() -> tuple[WebRtcClient, ClickTrack]:
    """One browser call playing clicks (no data channel)."""
    track = ClickTrack()
    return WebRtcClient(channel=False, track=track), track


def _heard_clicks(browser: WebRtcClient) -> list[float]:
    """When each click came back: a frame's first loud sample, handed over with the frame
    (its sample ``at`` plays ``at`` later than its first would), one per 250 ms at most."""
    heard: list[float] = []
    quiet_until = 0.0
    for arrived, pcm in zip(browser.heard_at, browser.heard, strict=True):
        at = _first_loud(pcm)
        if at is not None and arrived >= quiet_until:
            heard.append(arrived + at / RATE)
            quiet_until = arrived + 0.25
    return heard


# -- the far end (subprocess) -----------------------------------------------------------------


class EchoTrack(MediaStreamTrack):
    """The reference peer's outgoing track: each decoded frame back as it came."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self.queue: asyncio.Queue[NDArray[np.int16]] = asyncio.Queue()
        self.sent = 0

    async def recv(self) -> av.AudioFrame:
        pcm = await self.queue.get()
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self.sent * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent += 1
        return frame


class Arrivals:
    """When each click reached the far end (one per 250 ms at most)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._quiet_until = 0.0

    def frame(self, arrived: float, pcm: NDArray[np.int16], rate: int) -> None:
        at = _first_loud(pcm)
        if at is not None and arrived >= self._quiet_until:
            self.times.append(arrived + at / rate)
            self._quiet_until = arrived + 0.25


async def _reference_call(offer: str, arrivals: Arrivals) -> tuple[Any, asyncio.Task[None]]:
    pc = peer_connection()
    echo = EchoTrack()
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def listen(track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            now = time.monotonic()
            assert isinstance(frame, av.AudioFrame)
            pcm = np.asarray(frame.to_ndarray(), dtype=np.int16).reshape(-1)
            if len(frame.layout.channels) == 2:
                pcm = pcm[0::2]
            arrivals.frame(now, pcm, RATE)
            echo.queue.put_nowait(pcm.copy())

    tasks: list[asyncio.Task[None]] = []
    pc.on("track", lambda track: tasks.append(asyncio.ensure_future(listen(track))))
    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
    pc.addTrack(echo)
    await pc.setLocalDescription(await pc.createAnswer())

    async def run() -> None:
        try:
            await done
        finally:
            for task in tasks:
                task.cancel()
            await pc.close()

    return pc, asyncio.ensure_future(run())


async def _leg_call(offer: str, n: int, arrivals: Arrivals) -> tuple[WebRtcLeg, asyncio.Task[None]]:
    info = CallInfo(f"web-{n}", True, f"webrtc:{n}", "web:bench", kind="web")
    leg = await WebRtcLeg.accept(offer, info, LEG_RATE)

    async def echo() -> None:
        await leg.receive()  # Answered
        media = await leg.media()
        async for arrived, frame in media.stamped_frames():
            pcm = np.frombuffer(frame, dtype=np.int16)
            arrivals.frame(arrived, pcm, LEG_RATE)
            if _first_loud(pcm) is not None:  # only the clicks: nothing queued ahead of one
                media.playout.push("echo", pcm)

    return leg, asyncio.ensure_future(echo())


async def serve(mode: str, port: int, engine_port: int = 0) -> None:
    """Answer offers on ``port`` (one JSON line each way per call); the connection's close
    ends the call, after a last line with the click arrival times. With ``engine_port``, the
    engine's stand-in (:func:`_engine_echo`) is served on the same event loop; mode
    ``engine`` serves only that."""
    use_ice_addresses(["127.0.0.1"])
    opus_frames.prepare()  # as a web worker does at start: no filter design on a call
    calls = iter(range(1, 10**6))
    lags: list[float] = []  # how late the loop woke a 10 ms sleep, ms

    async def watch_loop() -> None:
        while True:
            due = time.monotonic() + LAG_PERIOD
            await asyncio.sleep(LAG_PERIOD)
            lags.append((time.monotonic() - due) * 1000)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        offer = json.loads(await reader.readline())["sdp"]
        arrivals = Arrivals()
        if mode == "reference":
            pc, task = await _reference_call(offer, arrivals)
            answer = pc.localDescription.sdp
        else:
            leg, task = await _leg_call(offer, next(calls), arrivals)
            answer = leg.answer_sdp
        writer.write(json.dumps({"sdp": answer}).encode() + b"\n")
        await writer.drain()
        await reader.readline()  # "done"
        lag = {"p99": _p(lags, 99), "max": round(max(lags, default=0.0), 1)}
        writer.write(json.dumps({"arrivals": arrivals.times, "loop_lag_ms": lag}).encode() + b"\n")
        await writer.drain()
        task.cancel()
        if mode == "reference":
            await pc.close()
        else:
            await leg.hangup()
            await leg.wait_closed()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port)
    watcher = asyncio.ensure_future(watch_loop())
    async with contextlib.AsyncExitStack() as stack:
        if engine_port:
            await stack.enter_async_context(
                websockets.serve(_engine_echo, "127.0.0.1", engine_port, compression=None)
            )
        print("ready", flush=True)
        os.dup2(2, 1)  # what the libraries print from here on goes to stderr
        async with server:
            try:
                await server.serve_forever()
            finally:
                watcher.cancel()


# -- the engine's path: what each placement costs a SIP call --------------------------------


async def _engine_echo(connection: Any) -> None:
    """The embedded engine's socket as a SIP call's agent sees it, per 20 ms frame: parse the
    ``input_audio_buffer.append``, answer one ``response.output_audio.delta`` (JSON and base64
    both ways, as the engine does; no speech work, which runs in its executor anyway)."""
    async for message in connection:
        event = json.loads(message)
        if event.get("type") == "input_audio_buffer.append":
            audio = base64.b64decode(event["audio"])
            delta = {"type": "response.output_audio.delta", "event_id": event["event_id"]}
            await connection.send(json.dumps(delta | {"delta": base64.b64encode(audio).decode()}))


async def probe(url: str, calls: int, seconds: float) -> dict[str, Any]:
    """``calls`` SIP calls' agents on the engine at ``url``: each sends 20 ms of mu-law every
    20 ms and times the answer to each frame (ms; the first second is left out)."""
    frame = base64.b64encode(bytes(ENGINE_FRAME)).decode()
    times: list[float] = []

    async def one(call: int) -> None:
        async with websockets.connect(url, compression=None, max_size=None) as ws:
            sent: dict[str, float] = {}
            start = time.monotonic()

            async def receive() -> None:
                async for message in ws:
                    event = json.loads(message)
                    at = sent.pop(event["event_id"], None)
                    if at is not None and at - start >= 1.0:
                        times.append((time.monotonic() - at) * 1000)

            reader = asyncio.ensure_future(receive())
            for n in range(int(seconds / 0.02)):
                due = start + n * 0.02
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                sent[f"{call}-{n}"] = time.monotonic()
                body = {"type": "input_audio_buffer.append", "event_id": f"{call}-{n}"}
                await ws.send(json.dumps(body | {"audio": frame}))
            await asyncio.sleep(0.5)  # the last answers
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    await asyncio.gather(*(one(c) for c in range(calls)))
    return {
        "frames": len(times),
        "p50": _p(times, 50),
        "p99": _p(times, 99),
        "max": round(max(times, default=0.0), 1),
    }


async def _probe(port: int, seconds: float) -> dict[str, Any]:
    """:func:`probe` in a process of its own (a SIP worker's), its JSON line back."""
    proc = await _this_module("probe", "--port", str(port), "--seconds", str(seconds))
    out, _ = await proc.communicate()
    result: dict[str, Any] = json.loads(out)
    return result


async def _engine_run(placement: str, legs: int, seconds: float) -> dict[str, Any]:
    """The engine's path with ``legs`` browser calls up: none (``alone``), in a process of
    their own beside the engine's (``web_worker``) or on the engine's own loop
    (``supervisor``)."""
    engine_port = free_port()
    async with contextlib.AsyncExitStack() as stack:
        if placement == "supervisor":
            port, _ = await stack.enter_async_context(_far_end("leg", engine_port))
        else:
            await stack.enter_async_context(_far_end("engine", engine_port))
            port = 0
            if placement == "web_worker":
                port, _ = await stack.enter_async_context(_far_end("leg"))
        until = asyncio.Event()
        calls = [asyncio.ensure_future(_one_call(port, until)) for _ in range(legs if port else 0)]
        await asyncio.sleep(SETTLE_SECONDS)
        try:
            path = await _probe(engine_port, seconds)
        finally:
            until.set()
            results = await asyncio.gather(*calls)
    browsers: dict[str, Any] = {}
    if results:  # the browser calls were up: their clicks went round
        figures = _latencies(results)
        browsers = {
            "clicks": figures["clicks"],
            "browser_loop_lag_ms": figures["far_end_loop_lag_ms"],
        }
    return {"placement": placement, "browser_legs": len(results), **path, **browsers}


async def engine_path(legs: int, seconds: float, rounds: int) -> dict[str, Any]:
    """``rounds`` rounds of the three runs (in an order that turns each round), then one more
    with no browser call: the spread of the runs with none is the noise of the machine. (The
    engine's answers and the browser calls' 20 ms work fall in a phase that differs from run
    to run: one run can be lucky.)"""
    order = ["alone", "web_worker", "supervisor"]
    runs: list[dict[str, Any]] = []
    for n in range(rounds):
        for placement in order[n % 3 :] + order[: n % 3]:
            runs.append(await _engine_run(placement, legs, seconds))
    runs.append(await _engine_run("alone", legs, seconds))
    return {"name": "engine_path", "sip_calls": bridge.CALLS, "rounds": rounds, "runs": runs}


# -- the runs ---------------------------------------------------------------------------------


def _pair(sent: list[float], got: list[float], limit: float = 0.4) -> list[float]:
    """Latencies (ms) of each sent click to the first later arrival within ``limit`` s."""
    out: list[float] = []
    for s in sent:
        later = [g for g in got if s <= g < s + limit]
        if later:
            out.append((later[0] - s) * 1000)
    return out


def _p(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(np.percentile(values, q)), 1)


async def _one_call(port: int, until: asyncio.Event) -> dict[str, list[float]]:
    use_ice_addresses(["127.0.0.1"])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    browser, track = _browser()
    writer.write(json.dumps({"sdp": await browser.offer()}).encode() + b"\n")
    await writer.drain()
    await browser.accept(json.loads(await reader.readline())["sdp"])
    await until.wait()
    writer.write(b"done\n")
    await writer.drain()
    last = json.loads(await reader.readline())
    arrivals = last["arrivals"]
    writer.close()
    await browser.close()
    sent, heard = track.clicks[2:], _heard_clicks(browser)  # past Opus's start-up
    return {
        "round_trip": _pair(sent, heard, 0.6),
        "uplink": _pair(sent, arrivals),
        "downlink": _pair(arrivals, heard),
        "loop_lag_max": [last["loop_lag_ms"]["max"]],
        "loop_lag_p99": [last["loop_lag_ms"]["p99"] or 0.0],
    }


async def _this_module(*args: str) -> asyncio.subprocess.Process:
    """``python -m bench.webrtc *args`` with its stdout piped to this process."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.webrtc", *args, stdout=asyncio.subprocess.PIPE, env=os.environ
    )


@contextlib.asynccontextmanager
async def _far_end(mode: str, engine_port: int = 0) -> AsyncIterator[tuple[int, int]]:
    """The far end's subprocess: (its port, its pid)."""
    port = free_port()
    proc = await _this_module(
        "serve", "--mode", mode, "--port", str(port), "--engine-port", str(engine_port)
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(30):
            await proc.stdout.readline()  # "ready"
        yield port, proc.pid
    finally:
        proc.terminate()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def _latencies(results: list[dict[str, list[float]]]) -> dict[str, Any]:
    merged = {k: [v for r in results for v in r[k]] for k in ("round_trip", "uplink", "downlink")}
    return {
        "clicks": len(merged["round_trip"]),
        **{f"{k}_ms": {"p50": _p(v, 50), "p99": _p(v, 99)} for k, v in merged.items()},
        "far_end_loop_lag_ms": {
            "p99": max(v for r in results for v in r["loop_lag_p99"]),
            "max": max(v for r in results for v in r["loop_lag_max"]),
        },
    }


async def _run(mode: str, legs: int, seconds: float) -> dict[str, Any]:
    async with _far_end(mode) as (port, pid):
        until = asyncio.Event()
        calls = [asyncio.ensure_future(_one_call(port, until)) for _ in range(legs)]
        await asyncio.sleep(SETTLE_SECONDS)
        cpu0, t0 = _cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(max(0.5, seconds - SETTLE_SECONDS))
        cpu1, t1 = _cpu_seconds(pid), time.monotonic()
        rss = _rss_mib(pid)
        until.set()
        results = await asyncio.gather(*calls)
    return {
        "name": mode,
        "browser_legs": legs,
        **_latencies(results),
        "cpu_percent_per_browser_leg": round(100 * (cpu1 - cpu0) / (t1 - t0) / legs, 1),
        "process_rss_mb": round(rss, 1),
    }


async def _sip_calls(legs: int) -> dict[str, Any]:
    """``bench.bridge``'s 4 SIP calls (pcmu), with ``legs`` browser calls up meanwhile in a
    process of their own."""
    if not legs:
        return await bridge.run("pcmu")
    async with _far_end("leg") as (port, _):
        until = asyncio.Event()
        calls = [asyncio.ensure_future(_one_call(port, until)) for _ in range(legs)]
        await asyncio.sleep(SETTLE_SECONDS)
        try:
            return await bridge.run("pcmu")
        finally:
            until.set()
            await asyncio.gather(*calls)


async def with_sip(legs: int) -> dict[str, Any]:
    """The SIP calls alone, with ``legs`` browser calls up, and alone again (the spread of
    the two alone runs is the noise of the machine)."""
    runs = [await _sip_calls(0), await _sip_calls(legs), await _sip_calls(0)]
    return {
        "name": "with_sip",
        "browser_legs": [0, legs, 0],
        "sip_calls": bridge.CALLS,
        "sip_uplink_ms_p99": [r.get("uplink_p99_ms") for r in runs],
        "sip_downlink_ms_p99": [r.get("downlink_p99_ms") for r in runs],
        "sip_cpu_percent_per_call": [r["cpu_percent_per_call"] for r in runs],
        "sip_playout_underruns": [r.get("playout_underruns") for r in runs],
    }


def _added(runs: list[dict[str, Any]], legs: int) -> None:
    reference = next(r for r in runs if r["name"] == "reference" and r["browser_legs"] == legs)
    for run in runs:
        if run["name"] == "leg" and run["browser_legs"] == legs:
            for key in ("round_trip", "uplink", "downlink"):
                ours, floor = run[f"{key}_ms"]["p50"], reference[f"{key}_ms"]["p50"]
                if ours is not None and floor is not None:
                    run[f"added_{key}_ms"] = round(ours - floor, 1)


RULE = (
    "a placement of browser calls passes if, with them up, the embedded engine's answer to SIP "
    "calls' frames (engine_path p99, median over the rounds) rises by at most the spread of "
    "the runs without browser calls + 1 ms, and SIP calls' own uplink and downlink p99 "
    "(with_sip) by at most that run's spread + 1 ms and their CPU per call by at most 1 point "
    "(SIP media is in SIP workers in either placement); of two that pass, the one whose rise "
    "is smaller by more than that spread, and if neither is, web_worker (a process of their "
    "own: a browser call's crash or leak never takes the API, the store or the engine)"
)


def _rise(values: list[float | None]) -> tuple[float, float] | None:
    """(rise of the middle run over the mean of the first and last, their spread)."""
    before, during, after = values
    if before is None or during is None or after is None:
        return None
    return round(during - (before + after) / 2, 2), round(abs(after - before), 2)


def _decision(engine: dict[str, Any], sip: dict[str, Any] | None) -> dict[str, Any]:
    """:data:`RULE` applied to the runs (medians over the rounds)."""
    p99s: dict[str, list[float]] = {}
    for run in engine["runs"]:
        if run["p99"] is not None:
            p99s.setdefault(run["placement"], []).append(run["p99"])
    alone = p99s.get("alone", [])
    noise = round(max(alone) - min(alone), 2) if len(alone) >= 2 else None
    rises = {
        name: round(float(np.median(p99s[name]) - np.median(alone)), 2)
        for name in ("web_worker", "supervisor")
        if name in p99s and alone
    }
    media: dict[str, Any] | None = None
    media_met = False
    if sip is not None:
        media = {}
        for key in ("sip_uplink_ms_p99", "sip_downlink_ms_p99", "sip_cpu_percent_per_call"):
            rise = _rise(sip[key])
            bound = 1.0 if key == "sip_cpu_percent_per_call" or rise is None else rise[1] + 1.0
            media[key] = {"rise": rise and rise[0], "spread": rise and rise[1], "bound": bound}
        media_met = all(m["rise"] is not None and m["rise"] <= m["bound"] for m in media.values())
    bound = None if noise is None else round(noise + 1.0, 2)
    passing = sorted(n for n, r in rises.items() if bound is not None and r <= bound)
    placement = "undecided"
    if media_met and len(passing) == 1:
        placement = passing[0]
    elif media_met and len(passing) == 2 and noise is not None:
        low = min(passing, key=lambda name: rises[name])
        placement = low if max(rises.values()) - rises[low] > noise else "web_worker"
    return {
        "placement": placement,
        "rule": RULE,
        "engine_path_p99_rise_ms": rises,
        "engine_path_noise_ms": noise,
        "engine_path_bound_ms": bound,
        "passing": passing if media_met else [],
        "sip_media": media,
    }


async def measure(seconds: float, legs: list[int], sip: bool, rounds: int) -> dict[str, Any]:
    runs: list[dict[str, Any]] = []
    for count in legs:
        for mode in ("reference", "leg"):
            runs.append(await _run(mode, count, seconds))
        _added(runs, count)
    engine = await engine_path(max(legs), seconds, rounds)
    runs.append(engine)
    sip_run: dict[str, Any] | None = None
    if sip:
        sip_run = await with_sip(max(legs))
        runs.append(sip_run)
    decision = _decision(engine, sip_run)
    return {
        "runs": runs,
        "decision": decision,
        "seconds": seconds,
        "cpu_count": os.cpu_count(),
        "aiortc": aiortc.__version__,
        "av": av.__version__,
    }


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.webrtc")
    parser.add_argument("what", nargs="?", default="measure", choices=("measure", "serve", "probe"))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--legs", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--mode", choices=("reference", "leg", "engine"), default="leg")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--engine-port", type=int, default=0)
    parser.add_argument("--with-sip", action="store_true", help="also the SIP calls' run")
    parser.add_argument("--rounds", type=int, default=3, help="of the engine path's runs")
    args = parser.parse_args()
    if args.what == "serve":
        asyncio.run(serve(args.mode, args.port, args.engine_port))
        return 0
    if args.what == "probe":
        url = f"ws://127.0.0.1:{args.port}"
        print(json.dumps(asyncio.run(probe(url, bridge.CALLS, args.seconds))))
        return 0
    return emit(lambda: asyncio.run(measure(args.seconds, args.legs, args.with_sip, args.rounds)))


if __name__ == "__main__":
    sys.exit(main())
