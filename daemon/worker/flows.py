"""The call flows a SIP worker runs, wired to its SIP worker and its supervisor.

- :func:`inbound`: an incoming call the worker has claimed, as a :class:`sip.leg.SipLeg`,
  answered by the realtime agent of ``[agent]`` (:func:`agent`) or by a policy given by path
  (:func:`load_policy`, for tests and benchmarks);
- :func:`run_outbound`: a whole notification call, its audio synthesised by the supervisor
  and carried in the request (so it is here before dialling).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from config.schema import AgentSettings, ApiSettings, Backend, RealtimeSettings
from daemon.calls.inbound import InboundAgent
from daemon.calls.outbound import OutboundCall
from daemon.ipc.connection import Body
from daemon.ipc.messages import Outbound
from daemon.legs.leg import CallLeg
from daemon.logs import get_logger
from daemon.realtime.backends import endpoint
from daemon.worker.services import WorkerServices
from sip.call_events import CallEvents
from sip.events import IncomingCall, SipEvent
from sip.leg import SipDialer, SipLeg, call_info
from sip.worker import SipWorker

log = get_logger(__name__)

InboundPolicy = Callable[[CallLeg], Awaitable[None]]  # answers (or not) and runs a call


def load_policy(path: str | None) -> InboundPolicy | None:
    """``module:function`` of an inbound policy; None: the realtime agent of ``[agent]``."""
    if not path:
        return None
    module, _, name = path.partition(":")
    policy: InboundPolicy = getattr(importlib.import_module(module), name)
    return policy


@dataclass
class FlowContext:
    """What the flows of one worker process share (set up once ``hello`` is answered)."""

    index: int
    worker: SipWorker
    calls: CallEvents  # each call's SIP events, for the flow that owns the call
    services: WorkerServices
    policy: InboundPolicy | None
    agent: AgentSettings
    api: ApiSettings
    realtime: RealtimeSettings
    outbound: dict[str, Body] = field(default_factory=dict)  # calls in progress: their audio


async def inbound(ctx: FlowContext, call: IncomingCall, events: asyncio.Queue[SipEvent]) -> None:
    """Run the flow of a claimed incoming call; whatever happens, the call ends with it."""
    leg = SipLeg(ctx.worker, call_info(call), events, ctx.calls)
    try:
        if ctx.policy is not None:
            await ctx.policy(leg)
        else:
            await agent(ctx, leg)
    except Exception as exc:
        log.error("call.inbound_failed", call_id=call.call, error=repr(exc))
        with contextlib.suppress(Exception):
            await leg.reject(500)
        with contextlib.suppress(Exception):
            await leg.hangup()
    finally:
        leg.release()


async def agent(ctx: FlowContext, leg: CallLeg) -> None:
    """The realtime agent of ``[agent]`` answers the call."""
    services, settings, info = ctx.services, ctx.agent, leg.info
    await services.report(
        "inbound_call",
        {"call": info.key, "sip_call_id": info.sip_call_id, "caller": info.caller},
    )
    target = endpoint(settings, ctx.api)
    if settings.backend is Backend.LOCAL:  # the engine files the message under this call
        target = dataclasses.replace(
            target, headers={**target.headers, "X-Sipai-Call": f"{ctx.index}:{info.key}"}
        )
    agent_call = InboundAgent(leg, settings, target, ctx.realtime, services)
    await agent_call.run()
    # The outcome once the call is over (the CallEnded event itself went up already).
    await services.report("inbound_done", {"call": info.key, "cause": agent_call.end_cause})


async def run_outbound(ctx: FlowContext, request: Outbound) -> Body:
    """One outbound notification call, start to end; the result goes back as the reply."""
    call_id, audio = request.call_id, request.audio

    async def report(status: str) -> None:
        await ctx.services.report("outbound_status", {"call_id": call_id, "status": status})

    ctx.outbound[call_id] = {"audio": await asyncio.to_thread(summary, audio)}
    dialer = SipDialer(ctx.worker, ctx.calls)
    outbound = OutboundCall(dialer, request.request, audio, ctx.services.transcribe, report)
    try:
        # Wrapped: a reply with a top-level "error" key means the request failed.
        return {"result": await outbound.run()}
    finally:
        ctx.outbound.pop(call_id, None)


def summary(audio: dict[str, NDArray[np.int16]]) -> Body:
    """Samples and SHA-256 (of the little-endian PCM16) of each sound a call holds."""
    return {
        name: {
            "samples": len(pcm),
            "sha256": hashlib.sha256(pcm.astype("<i2").tobytes()).hexdigest(),
        }
        for name, pcm in audio.items()
    }
