"""The call flows a SIP worker runs, wired to its SIP worker and its supervisor.

- :func:`inbound`: an incoming call the worker has claimed, as a :class:`sip.leg.SipLeg`,
  answered by the realtime agent of ``[agent]`` (:func:`agent`) or by a policy given by path
  (:func:`load_policy`, for tests and benchmarks);
- :func:`run_outbound`: a whole notification call, its audio synthesised by the supervisor
  and carried in the request (so it is here before dialling).

Either is recorded (:mod:`daemon.recording`) when ``[recordings] enabled`` says so, or for an
outbound call its request's ``record``; the recording is finished once the call has ended
and reported with the call's outcome (``inbound_done``, the outbound result).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import importlib
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from config.schema import AgentSettings, ApiSettings, RealtimeSettings, RecordingsSettings
from daemon.blackbox import RecordingInfo
from daemon.calls.inbound import InboundAgent
from daemon.calls.outbound import OutboundCall
from daemon.ipc.connection import Body
from daemon.ipc.messages import Outbound
from daemon.legs.leg import CallLeg, Dialer, LegError
from daemon.logs import get_logger
from daemon.realtime.backends import call_endpoints
from daemon.recording.dialer import RecordingDialer, call_ended
from daemon.recording.writer import Recording, RecordingWriter, recording_path
from daemon.worker.services import WorkerServices
from sip.call_events import CallEvents
from sip.events import IncomingCall, SipEvent
from sip.leg import SipDialer, SipLeg, call_info
from sip.uri import user_of
from sip.worker import SipWorker

log = get_logger(__name__)

T = TypeVar("T")

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
    recordings: RecordingsSettings = field(default_factory=RecordingsSettings)
    recorder: RecordingWriter = field(default_factory=RecordingWriter)  # the worker's only one


async def inbound(ctx: FlowContext, call: IncomingCall, events: asyncio.Queue[SipEvent]) -> None:
    """Run the flow of a claimed incoming call; whatever happens, the call ends with it, and
    its recording (if any) with the call."""
    leg = SipLeg(ctx.worker, call_info(call), events, ctx.calls)
    record_id = f"in-{uuid.uuid4().hex[:16]}"  # the call's record and recording file
    recording = await start_recording(ctx, leg, record_id) if ctx.recordings.enabled else None
    try:
        if ctx.policy is not None:
            await ctx.policy(leg)
        else:
            await agent(ctx, leg, record_id, recording)
    except Exception as exc:
        log.error("call.inbound_failed", call_id=call.call, error=repr(exc))
        with contextlib.suppress(Exception):
            await leg.reject(500)
        with contextlib.suppress(Exception):
            await leg.hangup()
    finally:
        if recording is not None and not recording.closing:  # an agent's call finished it
            await finish_recording(ctx, leg, recording)
        leg.release()


async def agent(
    ctx: FlowContext, leg: CallLeg, record_id: str, recording: Recording | None = None
) -> None:
    """The realtime agent of ``[agent]`` answers the call."""
    services, settings, info = ctx.services, ctx.agent, leg.info
    await services.report(
        "inbound_call",
        {
            "call": info.key,
            "sip_call_id": info.sip_call_id,
            "caller": info.caller,
            "record_id": record_id,
            "extension": user_of(info.headers.get("to", "")),
        },
    )
    target, fallback = call_endpoints(settings, ctx.api, f"{ctx.index}:{info.key}")
    agent_call = InboundAgent(leg, settings, target, ctx.realtime, services, fallback=fallback)
    failure: Exception | None = None
    try:
        await agent_call.run()
    except Exception as exc:  # the record still ends; the flow's caller ends the call
        failure = exc
        with contextlib.suppress(Exception):
            await leg.hangup()
    # The outcome once the call is over (the CallEnded event itself went up already); a part
    # that cannot be had is left out (logged), never the outcome itself.
    ended = await outcome_part(info.key, "ended", call_ended(leg))
    written = None
    if recording is not None:
        written = await outcome_part(info.key, "recording", ctx.recorder.finish(recording))
    try:
        black_box = agent_call.black_box()
    except Exception as exc:
        log.error("call.outcome_failed", call_id=info.key, part="black_box", error=repr(exc))
        black_box = None
    await services.report(
        "inbound_done",
        {
            "call": info.key,
            "cause": agent_call.end_cause if failure is None else f"error: {failure!r}",
            "black_box": black_box,
            "recording": dataclasses.asdict(written) if written is not None else None,
            "connect_seconds": ended.connect_seconds if ended is not None else 0.0,
        },
    )
    if failure is not None:
        raise failure


async def outcome_part(call: str, part: str, step: Awaitable[T]) -> T | None:
    """One part of a call's outcome; None (logged as ``call.outcome_failed``) if it fails."""
    try:
        return await step
    except Exception as exc:
        log.error("call.outcome_failed", call_id=call, part=part, error=repr(exc))
        return None


async def start_recording(ctx: FlowContext, leg: CallLeg, call_id: str) -> Recording | None:
    """Record the call from its first frame on (None: the call is gone already)."""
    try:
        media = await leg.media()
        path = recording_path(ctx.recordings.directory, call_id, time.time())
    except (LegError, ValueError) as exc:
        log.warning("recording.not_started", call_id=call_id, error=str(exc))
        return None
    return ctx.recorder.start(media, call_id, path)


async def finish_recording(
    ctx: FlowContext, leg: CallLeg, recording: Recording
) -> RecordingInfo | None:
    """The recording, once the call has ended (or a few seconds after its flow did)."""
    await call_ended(leg)
    return await ctx.recorder.finish(recording)


async def run_outbound(ctx: FlowContext, request: Outbound) -> Body:
    """One outbound notification call, start to end; the result goes back as the reply."""
    call_id, audio = request.call_id, request.audio

    async def report(status: str) -> None:
        await ctx.services.report("outbound_status", {"call_id": call_id, "status": status})

    async def decide(result: Body) -> None:
        """The outcome before the closing plays: the supervisor may finish the call now."""
        await ctx.services.report("outbound_decided", {"call_id": call_id, "result": result})

    ctx.outbound[call_id] = {"audio": await asyncio.to_thread(summary, audio)}
    dialer: Dialer = SipDialer(ctx.worker, ctx.calls)
    record = request.request.get("record")  # None: as [recordings] says
    recorder: RecordingDialer | None = None
    if ctx.recordings.enabled if record is None else bool(record):
        try:
            path = recording_path(ctx.recordings.directory, call_id, time.time())
        except ValueError as exc:
            log.warning("recording.not_started", call_id=call_id, error=str(exc))
        else:
            dialer = recorder = RecordingDialer(dialer, ctx.recorder, call_id, path)
    outbound = OutboundCall(
        dialer,
        request.request,
        audio,
        ctx.services.transcribe,
        report,
        decide=decide,
        amd=request.amd,
    )
    try:
        result = await outbound.run()  # once the call has ended
    finally:
        # The file is closed on every path, once.
        written = await recorder.finish() if recorder is not None else None
        ctx.outbound.pop(call_id, None)
    if recorder is not None:
        result["recording"] = dataclasses.asdict(written) if written is not None else None
    # Wrapped: a reply with a top-level "error" key means the request failed.
    return {"result": result}


def summary(audio: dict[str, NDArray[np.int16]]) -> Body:
    """Samples and SHA-256 (of the little-endian PCM16) of each sound a call holds."""
    return {
        name: {
            "samples": len(pcm),
            "sha256": hashlib.sha256(pcm.astype("<i2").tobytes()).hexdigest(),
        }
        for name, pcm in audio.items()
    }
