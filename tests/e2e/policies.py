"""Inbound policies for tests, loaded by SIP worker processes by dotted path."""

from __future__ import annotations

import numpy as np

from daemon.legs.leg import CallLeg


async def echo(leg: CallLeg) -> None:
    """Answer and send the caller's audio straight back (content checks at the phone)."""
    await leg.answer()
    media = await leg.media()
    async for frame in media.frames():
        media.playout.push("echo", np.frombuffer(frame, dtype="<i2"))
