"""Everything a SIP worker process asks of its supervisor, and everything it tells it.

One method per IPC message the worker sends (:mod:`daemon.ipc.messages`): requests
(``hello``, ``claim``, ``synthesize``, ``transcribe``) wait for the reply; events (``ready``,
``sip_event`` and the flows' reports) are fire-and-forget, and a report lost to a closed
connection is not an error for the call. Nothing else in the worker names a message.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
from numpy.typing import NDArray
from pydantic import ValidationError

from daemon.ipc import messages as msg
from daemon.ipc.connection import Body, Connection, IpcError
from daemon.logs import get_logger
from sip.events import SipEvent

log = get_logger(__name__)

CLAIM_SECONDS = 0.5


class WorkerServices:
    def __init__(self, conn: Connection, index: int) -> None:
        self.conn = conn
        self.index = index

    async def hello(self) -> Body:
        """The worker's settings (secrets never travel in argv or the environment)."""
        reply = await self.conn.request(msg.Hello(index=self.index, pid=os.getpid()))
        return reply.body()

    async def claim(self, sip_call_id: str) -> bool:
        """May this worker take the call with this SIP Call-ID (forked INVITEs: one wins)?"""
        claim = msg.Claim(sip_call_id=sip_call_id)
        return (await self.conn.request(claim, within=CLAIM_SECONDS)).granted

    async def synthesize(self, text: str, rate: int) -> NDArray[np.int16]:
        reply = await self.conn.request(msg.Synthesize(text=text, rate=rate), within=30)
        return reply.pcm

    async def transcribe(self, pcm: NDArray[np.int16], rate: int, hint: str) -> str:
        request = msg.Transcribe(pcm=pcm, rate=rate, hint=hint)
        return (await self.conn.request(request, within=60)).text

    async def report(self, kind: str, body: Body) -> None:
        """A flow's event for the supervisor (outbound status, transcript, outcome), checked
        against its message: one that does not fit is logged and not sent."""
        cls = msg.EVENTS.get(kind)
        if cls is None:
            log.error("ipc.unknown_report", kind=kind)
            return
        try:
            event = cls.model_validate(body)
        except ValidationError as exc:
            log.error("ipc.bad_report", kind=kind, error=msg.first_error(exc))
            return
        with contextlib.suppress(IpcError):
            await self.conn.event(event)

    async def ready(self, contact: str) -> None:
        await self.conn.event(msg.Ready(contact=contact))

    async def sip_event(self, event: SipEvent) -> None:
        with contextlib.suppress(IpcError):
            await self.conn.event(msg.SipEventMessage(event=event))
