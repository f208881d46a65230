"""The per-call audio bridge between pjmedia's conference bridge and the call flow.

pjmedia's clock thread calls :meth:`CallAudioPort.onFrameReceived` (caller audio, one 20 ms
PCM16 frame) and :meth:`CallAudioPort.onFrameRequested` (audio to send) every 20 ms. Both
only copy bytes: received frames are appended to ``CallAudio.uplink`` with their arrival
time (a bounded deque of ``(monotonic, bytes)``; append/popleft are atomic), requested frames
come from ``CallAudio.playout.pull()``. They never block, log, raise or touch asyncio; errors
are counted. The call flow reads ``CallAudio`` from the event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from time import monotonic
from typing import Any

import pjsua2 as pj

from media.playout import PlayoutBuffer
from sip import bytevector

UPLINK_FRAMES = 50  # 1 s of caller audio waiting for the call flow; older frames are dropped
POLL_SECONDS = 0.005


class CallAudio:
    """Shared between the media thread (writes ``uplink``, pulls ``playout``) and the loop."""

    def __init__(self, rate: int, frame_ms: int = 20) -> None:
        self.rate = rate
        self.frame_bytes = 2 * rate * frame_ms // 1000
        # (time.monotonic() on arrival, frame): the media thread appends, the loop pops.
        self.uplink: deque[tuple[float, bytes]] = deque(maxlen=UPLINK_FRAMES)
        self.playout = PlayoutBuffer(rate=rate, frame_ms=frame_ms)
        self.uplink_frames = 0  # written by the media thread only
        self.uplink_dropped = 0  # written by the media thread only
        self.callback_errors = 0  # written by the media thread only
        self.closed = False  # set on the SIP thread when the call ends

    async def frames(self) -> AsyncIterator[bytes]:
        """Caller audio as 20 ms PCM16 frames, until the call ends."""
        async for _, frame in self.stamped_frames():
            yield frame

    async def stamped_frames(self) -> AsyncIterator[tuple[float, bytes]]:
        """(arrival time, frame) pairs: the arrival time is ``time.monotonic()`` when pjmedia
        handed the frame over, for latency metering."""
        while True:
            try:
                yield self.uplink.popleft()
            except IndexError:
                if self.closed:
                    return
                await asyncio.sleep(POLL_SECONDS)


class CallAudioPort(pj.AudioMediaPort):  # type: ignore[misc]
    def __init__(self, audio: CallAudio) -> None:
        super().__init__()
        self.audio = audio

    def onFrameReceived(self, frame: Any) -> None:  # media thread
        audio = self.audio
        try:
            if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO:
                return
            data = bytevector.read(frame.buf)
            if len(data) != audio.frame_bytes:
                return
            if len(audio.uplink) == UPLINK_FRAMES:
                audio.uplink_dropped += 1
            audio.uplink.append((monotonic(), data))
            audio.uplink_frames += 1
        except Exception:
            audio.callback_errors += 1

    def onFrameRequested(self, frame: Any) -> None:  # media thread
        audio = self.audio
        try:
            data = audio.playout.pull()
            frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
            if not bytevector.write(frame.buf, data):
                frame.buf = pj.ByteVector(data)
        except Exception:
            audio.callback_errors += 1


def port_format(rate: int, frame_ms: int = 20) -> Any:
    fmt = pj.MediaFormatAudio()
    fmt.type = pj.PJMEDIA_TYPE_AUDIO
    fmt.clockRate = rate
    fmt.channelCount = 1
    fmt.bitsPerSample = 16
    fmt.frameTimeUsec = frame_ms * 1000
    return fmt
