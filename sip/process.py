"""A SIP worker process: one pjsua2 endpoint, driven by the supervisor over IPC.

``python -m sip.process --socket PATH --index N`` connects to the supervisor's socket, asks
for its settings (``hello``; secrets never travel in argv or the environment), starts the SIP
worker and then:

- forwards every SIP event to the supervisor (``sip_event`` events), and to the call flow
  that owns the event's call only (:class:`sip.call_events.CallEvents`);
- for an inbound call, asks the supervisor to ``claim`` its SIP Call-ID (the PBX forks one
  INVITE to every worker's contact) synchronously from the SIP thread, so a losing copy
  answers 486 and frees its pjsua call slot at once; the winner runs the inbound agent
  (:mod:`daemon.calls.inbound`, a realtime model per ``[agent]``) or a policy given by path;
- serves ``make_call``, ``answer``, ``reject``, ``hangup``, ``send_dtmf``, ``transfer`` and
  ``ping`` requests, and ``outbound``: a whole notification call, its audio synthesised by the
  supervisor and carried in the request (so it is here before dialling); ``ping`` lists the
  outbound calls in progress with the samples and SHA-256 of the audio each one holds;
- on ``shutdown``, SIGTERM or the supervisor's disappearance, stops the endpoint in order
  and exits 0. SIGINT is ignored: a terminal's Ctrl-C reaches the supervisor, which drains.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import ctypes
import dataclasses
import hashlib
import importlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from config.schema import (
    AgentSettings,
    ApiSettings,
    Backend,
    LogFormat,
    LogLevel,
    RealtimeSettings,
    SipSettings,
)
from daemon.calls.inbound import InboundAgent, InboundCall
from daemon.logs import configure_logging, get_logger
from daemon.realtime.backends import endpoint
from media.resample import design
from sip.call_events import CallEvents
from sip.events import IncomingCall, SipEvent
from sip.ipc import Body, Connection, IpcError, UnknownRequest
from sip.outbound_call import OutboundCall
from sip.worker import SipWorker

log = get_logger("sip.process")

InboundPolicy = Callable[[SipWorker, IncomingCall], Awaitable[None]]
CLAIM_SECONDS = 0.5
PR_SET_PDEATHSIG = 1


def load_policy(path: str | None) -> InboundPolicy | None:
    """``module:function`` of an inbound policy; None: the realtime agent of ``[agent]``."""
    if not path:
        return None
    module, _, name = path.partition(":")
    policy: InboundPolicy = getattr(importlib.import_module(module), name)
    return policy


def event_body(event: SipEvent) -> Body:
    return {"type": type(event).__name__, **dataclasses.asdict(event)}


class WorkerProcess:
    def __init__(self, socket_path: str, index: int) -> None:
        self.socket_path = socket_path
        self.index = index
        self.worker: SipWorker | None = None
        self.conn: Connection | None = None
        self.policy: InboundPolicy | None = None
        self.agent: AgentSettings | None = None
        self.api = ApiSettings()
        self.realtime = RealtimeSettings()
        self.calls = CallEvents()  # each call's SIP events, for the flow that owns the call
        self.stop = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._outbound: dict[str, Body] = {}  # outbound calls in progress: the audio they hold
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        self.conn = Connection(reader, writer, "supervisor", self._serve)
        reading = asyncio.create_task(self.conn.run())
        hello = await self.conn.request("hello", {"index": self.index, "pid": os.getpid()})
        configure_logging(LogLevel(hello["log_level"]), LogFormat(hello["log_format"]))
        self.policy = load_policy(hello.get("inbound_policy"))
        self.agent = AgentSettings.model_validate(hello["agent"])
        self.realtime = RealtimeSettings.model_validate(hello["realtime"])
        self.api = ApiSettings.model_validate(hello["api"])
        sip_settings = SipSettings.model_validate(hello["sip"])
        # Resampler designs cost 25-100 ms each: made now, they never stall a call's loop.
        rate = sip_settings.clock_rate
        await asyncio.to_thread(lambda: [design(a, b) for a, b in ((rate, 24000), (24000, rate))])
        self.worker = SipWorker(sip_settings, self.index, self._claim_from_sip_thread)
        await self.worker.start()
        forwarding = asyncio.create_task(self._forward())
        await self.conn.event("ready", {"contact": self.worker.contact})
        closed = asyncio.create_task(self.conn.closed.wait())
        stopping = asyncio.create_task(self.stop.wait())
        await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if closed.done() and not self.stop.is_set():
            log.warning("worker.supervisor_gone", worker=self.index)
        await self.worker.stop()
        for task in (forwarding, reading, closed, stopping, *self._tasks):
            task.cancel()
        await self.conn.aclose()
        return 0

    async def _forward(self) -> None:
        assert self.worker is not None
        assert self.conn is not None
        async for event in self.worker.events():
            with contextlib.suppress(IpcError):
                await self.conn.event("sip_event", event_body(event))
            self.calls.route(event)
            if isinstance(event, IncomingCall):  # claimed now: none of its events is missed
                task = asyncio.create_task(self._inbound(event, self.calls.claim(event.call)))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _run_outbound(self, worker: SipWorker, body: Body) -> Body:
        """One outbound notification call, start to end; the result goes back as the reply."""
        conn = self.conn
        assert conn is not None
        call_id = str(body["call_id"])

        async def transcribe(pcm: NDArray[np.int16], rate: int, hint: str) -> str:
            pcm_b64 = base64.b64encode(pcm.astype("<i2").tobytes()).decode()
            body = {"pcm": pcm_b64, "rate": rate, "hint": hint}
            reply = await conn.request("transcribe", body, within=60)
            return str(reply["text"])

        async def report(status: str) -> None:
            with contextlib.suppress(IpcError):
                await conn.event("outbound_status", {"call_id": call_id, "status": status})

        encoded: dict[str, str] = body["audio"]
        audio = await asyncio.to_thread(lambda: {k: _samples(v) for k, v in encoded.items()})
        self._outbound[call_id] = {"audio": await asyncio.to_thread(_summary, audio)}
        outbound = OutboundCall(
            worker, body["request"], audio, transcribe, report, calls=self.calls
        )
        try:
            # Wrapped: a reply with a top-level "error" key means the request failed.
            return {"result": await outbound.run()}
        finally:
            self._outbound.pop(call_id, None)

    def _claim_from_sip_thread(self, sip_call_id: str) -> bool:  # SIP thread
        """Ask the supervisor, blocking the SIP thread for one IPC round trip (~1 ms)."""
        conn, loop = self.conn, self.loop
        if conn is None or loop is None:
            return False
        future = asyncio.run_coroutine_threadsafe(
            conn.request("claim", {"sip_call_id": sip_call_id}, within=CLAIM_SECONDS), loop
        )
        try:
            return bool(future.result(timeout=CLAIM_SECONDS + 0.1).get("granted"))
        except Exception:
            future.cancel()
            return False

    async def _inbound(self, call: IncomingCall, events: asyncio.Queue[SipEvent]) -> None:
        assert self.worker is not None
        try:
            if self.policy is not None:
                await self.policy(self.worker, call)
            else:
                await self._agent(self.worker, call, events)
        except Exception as exc:
            log.error("call.inbound_failed", call_id=call.call, error=repr(exc))
            with contextlib.suppress(Exception):
                await self.worker.reject(call.call, 500)
            with contextlib.suppress(Exception):
                await self.worker.hangup(call.call)
        finally:
            self.calls.release(call.call)

    async def _agent(
        self, worker: SipWorker, call: IncomingCall, events: asyncio.Queue[SipEvent]
    ) -> None:
        """The realtime agent of ``[agent]`` answers the call."""
        conn, agent = self.conn, self.agent
        assert conn is not None
        assert agent is not None

        async def synthesize(text: str, rate: int) -> NDArray[np.int16]:
            reply = await conn.request("synthesize", {"text": text, "rate": rate}, within=30)
            return _samples(str(reply["pcm"]))

        async def report(type_: str, body: Body) -> None:
            with contextlib.suppress(IpcError):
                await conn.event(type_, body)

        context = InboundCall(worker, call, events, synthesize, report)
        await report(
            "inbound_call",
            {"call": call.call, "sip_call_id": call.sip_call_id, "caller": call.from_user},
        )
        target = endpoint(agent, self.api)
        if agent.backend is Backend.LOCAL:  # the engine files the message under this call
            target = dataclasses.replace(
                target, headers={**target.headers, "X-Sipai-Call": f"{self.index}:{call.call}"}
            )
        agent_call = InboundAgent(context, agent, target, self.realtime)
        await agent_call.run()
        # The outcome once the call is over (the CallEnded event itself went up already).
        await report("inbound_done", {"call": call.call, "cause": agent_call.end_cause})

    async def _serve(self, type_: str, body: Body) -> Body:
        worker = self.worker
        if type_ == "ping":
            if worker is None:
                return {"starting": True}
            diagnostics = await worker.diagnostics()
            return {
                "registered": worker.registration.registered,
                **diagnostics,
                "tasks": len(asyncio.all_tasks()),  # for leak checks: no task outlives a call
                "outbound": self._outbound,
                "fds": len(os.listdir("/proc/self/fd")),
            }
        if worker is None:
            raise RuntimeError("the SIP worker is still starting")
        handlers: dict[str, Callable[[], Awaitable[Any]]] = {
            "make_call": lambda: worker.make_call(body["target"], float(body["ring_timeout"])),
            "answer": lambda: worker.answer(body["call"]),
            "reject": lambda: worker.reject(body["call"], int(body.get("code", 486))),
            "hangup": lambda: worker.hangup(body["call"]),
            "send_dtmf": lambda: worker.send_dtmf(body["call"], body["digits"]),
            "transfer": lambda: worker.transfer(body["call"], body["target"]),
        }
        if type_ == "shutdown":
            self.stop.set()
            return {}
        if type_ == "outbound":
            return await self._run_outbound(worker, body)
        handler = handlers.get(type_)
        if handler is None:
            raise UnknownRequest(type_)
        result = await handler()
        return {"call": result} if type_ == "make_call" else {}


def _samples(text: str) -> NDArray[np.int16]:
    return np.frombuffer(base64.b64decode(text), dtype="<i2").astype(np.int16)


def _summary(audio: dict[str, NDArray[np.int16]]) -> Body:
    """Samples and SHA-256 (of the little-endian PCM16) of each sound a call holds."""
    return {
        name: {
            "samples": len(samples),
            "sha256": hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest(),
        }
        for name, samples in audio.items()
    }


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (even by SIGKILL): no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="sipai-worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args()
    return asyncio.run(WorkerProcess(args.socket, args.index).run())


if __name__ == "__main__":
    sys.exit(main())
