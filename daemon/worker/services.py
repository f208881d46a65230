"""Everything a SIP worker process asks of its supervisor, and everything it tells it.

One method per IPC message the worker sends: requests (``hello``, ``claim``, ``synthesize``,
``transcribe``) wait for the reply; events (``ready``, ``sip_event`` and the flows' reports)
are fire-and-forget, and a report lost to a closed connection is not an error for the call.
Nothing else in the worker names a message.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os

import numpy as np
from numpy.typing import NDArray

from sip.events import SipEvent
from sip.ipc import Body, Connection, IpcError

CLAIM_SECONDS = 0.5


def event_body(event: SipEvent) -> Body:
    return {"type": type(event).__name__, **dataclasses.asdict(event)}


def samples(text: str) -> NDArray[np.int16]:
    """PCM16 samples from their base64 (little-endian) on the wire."""
    return np.frombuffer(base64.b64decode(text), dtype="<i2").astype(np.int16)


class WorkerServices:
    def __init__(self, conn: Connection, index: int) -> None:
        self.conn = conn
        self.index = index

    async def hello(self) -> Body:
        """The worker's settings (secrets never travel in argv or the environment)."""
        return await self.conn.request("hello", {"index": self.index, "pid": os.getpid()})

    async def claim(self, sip_call_id: str) -> bool:
        """May this worker take the call with this SIP Call-ID (forked INVITEs: one wins)?"""
        reply = await self.conn.request("claim", {"sip_call_id": sip_call_id}, within=CLAIM_SECONDS)
        return bool(reply.get("granted"))

    async def synthesize(self, text: str, rate: int) -> NDArray[np.int16]:
        reply = await self.conn.request("synthesize", {"text": text, "rate": rate}, within=30)
        return samples(str(reply["pcm"]))

    async def transcribe(self, pcm: NDArray[np.int16], rate: int, hint: str) -> str:
        pcm_b64 = base64.b64encode(pcm.astype("<i2").tobytes()).decode()
        body = {"pcm": pcm_b64, "rate": rate, "hint": hint}
        reply = await self.conn.request("transcribe", body, within=60)
        return str(reply["text"])

    async def report(self, kind: str, body: Body) -> None:
        """A flow's event for the supervisor (outbound status, transcript, outcome)."""
        with contextlib.suppress(IpcError):
            await self.conn.event(kind, body)

    async def ready(self, contact: str) -> None:
        await self.conn.event("ready", {"contact": contact})

    async def sip_event(self, event: SipEvent) -> None:
        with contextlib.suppress(IpcError):
            await self.conn.event("sip_event", event_body(event))
