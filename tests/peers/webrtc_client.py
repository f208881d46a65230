"""A browser stand-in for tests: an aiortc peer that offers audio and a ``sipai`` data channel.

Its track plays a tone (or silence) in 20 ms Opus-sized frames at 48 kHz, paced in real time,
as a browser's microphone would; it keeps every frame it hears (mono, 48 kHz) and every data
channel message. Host candidates only, with no STUN server (the daemon's leg module decides
the addresses: importing it limits this process's peers to ``[web] ice_addresses``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from typing import Any

import av
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from numpy.typing import NDArray

RATE = 48000
FRAME = 960  # 20 ms at 48 kHz


class ToneTrack(MediaStreamTrack):
    """A microphone playing ``freq`` Hz (0: silence) at ``amplitude``, one 20 ms frame per tick."""

    kind = "audio"

    def __init__(self, freq: float, amplitude: float = 8000.0) -> None:
        super().__init__()
        self.freq = freq
        self.amplitude = amplitude
        self.sent = 0
        self.sent_at: list[float] = []  # monotonic time each frame was handed to the encoder
        self._start: float | None = None

    def samples(self, index: int) -> NDArray[np.int16]:
        t = (np.arange(FRAME) + index * FRAME) / RATE
        return np.rint(self.amplitude * np.sin(2 * np.pi * self.freq * t)).astype(np.int16)

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self.sent * 0.02
        if due > now:
            await asyncio.sleep(due - now)
        frame = av.AudioFrame.from_ndarray(
            self.samples(self.sent).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = RATE
        frame.pts = self.sent * FRAME
        frame.time_base = fractions.Fraction(1, RATE)
        self.sent += 1
        self.sent_at.append(time.monotonic())
        return frame


class WebRtcClient:
    """One browser call: :meth:`offer`, hand the SDP to the daemon, :meth:`accept` its answer."""

    def __init__(
        self, freq: float = 440.0, channel: bool = True, track: ToneTrack | None = None
    ) -> None:
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track = track if track is not None else ToneTrack(freq)
        self.pc.addTrack(self.track)
        self.heard: list[NDArray[np.int16]] = []  # mono 48 kHz frames, as received
        self.heard_at: list[float] = []
        self.messages: list[Any] = []
        self.connected = asyncio.Event()
        self.closed = asyncio.Event()
        self.hangup_received = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self.channel = self.pc.createDataChannel("sipai") if channel else None
        if self.channel is not None:
            self.channel.on("message", self._on_message)
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        description = self.pc.localDescription
        assert description is not None
        return description.sdp

    async def accept(self, answer: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))

    def candidates(self) -> tuple[list[str], list[str]]:
        """The IP addresses of the local and remote ICE candidates of the audio transport."""
        ice = self.pc.getTransceivers()[0].sender.transport.transport
        local = [c.ip for c in ice.iceGatherer.getLocalCandidates()]
        remote = [c.ip for c in ice.getRemoteCandidates()]
        return local, remote

    def send(self, body: dict[str, Any]) -> None:
        assert self.channel is not None
        self.channel.send(json.dumps(body))

    def heard_pcm(self) -> NDArray[np.int16]:
        return np.concatenate(self.heard) if self.heard else np.zeros(0, dtype=np.int16)

    async def close(self) -> None:
        self.track.stop()
        await self.pc.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def _on_state(self) -> None:
        state = self.pc.connectionState
        if state == "connected":
            self.connected.set()
        elif state in ("closed", "failed"):
            self.closed.set()

    def _on_message(self, message: str | bytes) -> None:
        with contextlib.suppress(ValueError):
            body = json.loads(message)
            self.messages.append(body)
            if isinstance(body, dict) and body.get("type") == "hangup":
                self.hangup_received.set()

    def _on_track(self, track: MediaStreamTrack) -> None:
        task = asyncio.ensure_future(self._listen(track))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, av.AudioFrame)
            pcm = np.asarray(frame.to_ndarray(), dtype=np.int16).reshape(-1)
            channels = len(frame.layout.channels)
            if channels == 2:
                pcm = ((pcm[0::2].astype(np.int32) + pcm[1::2]) >> 1).astype(np.int16)
            self.heard.append(pcm)
            self.heard_at.append(time.monotonic())
