"""A :class:`~daemon.legs.leg.Dialer` that records the call it places.

The outbound flow dials through it unaware: the new leg's media gets its tap before any
audio flows (the call is only ringing when ``dial`` returns), and :meth:`RecordingDialer.finish`
hands back the recording once the call has ended. Runs on the worker's event loop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from daemon.blackbox import RecordingInfo
from daemon.legs.leg import CallLeg, Dialer, Ended, LegError
from daemon.logs import get_logger
from daemon.recording.writer import Recording, RecordingWriter

log = get_logger(__name__)

ENDED_SECONDS = 5.0  # finish() waits this long for the call's end before closing the file


class RecordingDialer:
    def __init__(self, dialer: Dialer, writer: RecordingWriter, call_id: str, path: Path):
        self._dialer = dialer
        self._writer = writer
        self._call_id = call_id
        self._path = path
        self._leg: CallLeg | None = None
        self.recording: Recording | None = None

    async def dial(self, target: str, ring_timeout: float) -> CallLeg:
        leg = self._leg = await self._dialer.dial(target, ring_timeout)
        try:
            media = await leg.media()
        except LegError as exc:  # gone already: nothing to record
            log.info("recording.not_started", call_id=self._call_id, error=str(exc))
            return leg
        self.recording = self._writer.start(media, self._call_id, self._path)
        return leg

    async def finish(self) -> RecordingInfo | None:
        """The recording once the call has ended (None: never dialled, or no audio)."""
        leg, recording = self._leg, self.recording
        if leg is None or recording is None:
            return None
        await call_ended(leg, ENDED_SECONDS)
        return await self._writer.finish(recording)


async def call_ended(leg: CallLeg, within: float = ENDED_SECONDS) -> Ended | None:
    """The call's end as its leg reports it (again, if its flow read it already); None if it
    has not ended within ``within`` seconds. Other events are dropped: the flow is over."""
    try:
        async with asyncio.timeout(within):
            while not isinstance(event := await leg.receive(), Ended):
                pass
    except TimeoutError:
        return None
    return event
