"""Inbound policies for tests, loaded by SIP worker processes by dotted path."""

from __future__ import annotations

import numpy as np

from sip.events import IncomingCall
from sip.worker import SipWorker


async def echo(worker: SipWorker, call: IncomingCall) -> None:
    """Answer and send the caller's audio straight back (content checks at the phone)."""
    await worker.answer(call.call)
    audio = await worker.audio(call.call)
    async for frame in audio.frames():
        audio.playout.push("echo", np.frombuffer(frame, dtype="<i2"))
