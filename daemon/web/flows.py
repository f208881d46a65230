"""The call flow a web worker runs for a browser call: the inbound agent of ``[agent]``.

:func:`web_agent` is what :func:`daemon.worker.flows.agent` is for a SIP call, on a browser's
:class:`~daemon.legs.webrtc.WebRtcLeg`: it reports the call (``inbound_call`` with
``direction: "web"``), names it to the local engine as ``"<worker>:<call>"`` (the
``X-Sipai-Call`` header, so the receptionist's message lands in the call's record), runs
:class:`~daemon.calls.inbound.InboundAgent` on the leg, and reports the outcome
(``inbound_done`` with the black box and, when ``[recordings] enabled``, the recording). The
outcome is reported on every path, a failing flow included, so no record stays in progress.
The browser's connection (the leg's ``Answered``, a SIP call's ACK) is told to the supervisor
as a SIP call's answer is (``CallAnswered``), so the record's ``answered_at`` and
``call_status`` follow it alike. Runs on the web worker's event loop; nothing here imports
pjsua2.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Protocol

from config.schema import AgentSettings, ApiSettings, RealtimeSettings, RecordingsSettings
from daemon.blackbox import RecordingInfo
from daemon.calls.inbound import AgentServices, InboundAgent
from daemon.legs.leg import Answered, CallInfo, CallLeg, Ended, LegError, LegEvent
from daemon.legs.media import LegMedia
from daemon.logs import get_logger
from daemon.realtime.backends import call_endpoints
from daemon.recording.dialer import call_ended
from daemon.recording.writer import Recording, RecordingWriter, recording_path
from sip.events import CallAnswered, SipEvent

log = get_logger(__name__)


class WebServices(AgentServices, Protocol):
    """What a browser call's flow needs from its process: the agent's, and call events."""

    async def sip_event(self, event: SipEvent) -> None: ...


class ConnectedLeg:
    """``leg`` as its flow sees it, telling ``services`` once the browser has connected."""

    def __init__(self, leg: CallLeg, services: WebServices) -> None:
        self._leg = leg
        self._services = services
        self._told = False

    @property
    def info(self) -> CallInfo:
        return self._leg.info

    async def receive(self) -> LegEvent:
        event = await self._leg.receive()
        if isinstance(event, Answered) and not self._told:
            self._told = True
            await self._services.sip_event(CallAnswered(call=self._leg.info.key))
        return event

    async def answer(self) -> None:
        await self._leg.answer()

    async def reject(self, code: int = 486) -> None:
        await self._leg.reject(code)

    async def hangup(self) -> None:
        await self._leg.hangup()

    async def send_dtmf(self, digits: str) -> None:
        await self._leg.send_dtmf(digits)

    async def transfer(self, target: str) -> None:
        await self._leg.transfer(target)

    async def media(self) -> LegMedia:
        return await self._leg.media()

    def release(self) -> None:
        self._leg.release()


@dataclass
class WebContext:
    """What the browser calls of one process share (set up once the settings are known)."""

    index: int  # the worker's index in records and logs (WEB_WORKER_BASE + i)
    services: WebServices
    agent: AgentSettings
    api: ApiSettings
    realtime: RealtimeSettings
    recordings: RecordingsSettings = field(default_factory=RecordingsSettings)
    recorder: RecordingWriter = field(default_factory=RecordingWriter)  # the process's only one


async def web_agent(ctx: WebContext, leg: CallLeg, record_id: str) -> None:
    """The realtime agent of ``[agent]`` answers the browser call ``leg``; returns once the
    call is over and its outcome reported."""
    services, settings, info = ctx.services, ctx.agent, leg.info
    await services.report(
        "inbound_call",
        {
            "call": info.key,
            "sip_call_id": info.sip_call_id,
            "caller": info.caller,
            "record_id": record_id,
            "direction": "web",
        },
    )
    recording = await _start_recording(ctx, leg, record_id) if ctx.recordings.enabled else None
    target, fallback = call_endpoints(settings, ctx.api, f"{ctx.index}:{info.key}")
    agent_call = InboundAgent(
        ConnectedLeg(leg, services), settings, target, ctx.realtime, services, fallback=fallback
    )
    cause = ""
    ended: Ended | None = None
    written: RecordingInfo | None = None
    try:  # whatever fails below, the call's record is closed by inbound_done
        try:
            await agent_call.run()
            cause = agent_call.end_cause
        except Exception as exc:
            log.error("call.web_failed", call_id=info.key, error=repr(exc))
            cause = "internal error"
            await services.report(
                "agent_failed", {"call": info.key, "kind": "internal", "error": repr(exc)}
            )
            try:
                await leg.hangup()
            except Exception as failed:
                log.warning("call.web_hangup_failed", call_id=info.key, error=repr(failed))
        try:
            ended = await call_ended(leg)
        except Exception as failed:
            log.warning("call.web_end_unknown", call_id=info.key, error=repr(failed))
        if recording is not None:
            written = await ctx.recorder.finish(recording)
    finally:
        await services.report(
            "inbound_done",
            {
                "call": info.key,
                "cause": cause or agent_call.end_cause or "ended",
                "black_box": agent_call.black_box(),
                "recording": dataclasses.asdict(written) if written is not None else None,
                "connect_seconds": ended.connect_seconds if ended is not None else 0.0,
            },
        )


async def _start_recording(ctx: WebContext, leg: CallLeg, record_id: str) -> Recording | None:
    """Record the call from its first frame on (None: the call is gone already)."""
    try:
        media = await leg.media()
        path = recording_path(ctx.recordings.directory, record_id, time.time())
    except (LegError, ValueError) as exc:
        log.warning("recording.not_started", call_id=record_id, error=str(exc))
        return None
    return ctx.recorder.start(media, record_id, path)
