"""An inbound policy for recording tests, loaded by SIP worker processes by dotted path."""

from __future__ import annotations

from daemon.legs.leg import CallLeg, Ended
from tests.audio import tone


async def play_1000_hz(leg: CallLeg) -> None:
    """Answer, play 3 s of 1000 Hz, wait for the caller to hang up."""
    await leg.answer()
    media = await leg.media()
    media.playout.push("tone", tone(1000, media.rate, 3.0))
    media.playout.end_item("tone")
    while not isinstance(await leg.receive(), Ended):
        pass
