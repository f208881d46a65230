"""The per-call audio bridge between pjmedia's conference bridge and the call flow.

pjmedia's clock thread calls :meth:`CallAudioPort.onFrameReceived` (caller audio, one 20 ms
PCM16 frame) and :meth:`CallAudioPort.onFrameRequested` (audio to send) every 20 ms. Both
only copy bytes: received frames are appended to ``CallAudio.uplink`` with their arrival
time (a bounded deque of ``(monotonic, bytes)``; append/popleft are atomic), requested frames
come from ``CallAudio.playout.pull()``; a recorded call's tap gets both (the frame handed to
pjmedia exactly as pulled). They never block, log, raise or touch asyncio; errors
are counted. The call flow reads ``CallAudio`` (:class:`daemon.legs.media.LegMedia`) from the
event loop.
"""

from __future__ import annotations

from time import monotonic
from typing import Any

import pjsua2 as pj

from daemon.legs.media import UPLINK_FRAMES, LegMedia
from sip import bytevector

CallAudio = LegMedia  # the name the SIP side has always used


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
            audio.tap_heard(data)
        except Exception:
            audio.callback_errors += 1

    def onFrameRequested(self, frame: Any) -> None:  # media thread
        audio = self.audio
        try:
            data = audio.playout.pull()
            audio.tap_played(data)
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
