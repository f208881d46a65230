"""WebRTC audio frames (Opus at 48 kHz) to and from a call leg's 20 ms PCM16 frames.

A browser call's audio reaches us from aiortc's Opus decoder as 20 ms frames of 960 samples
at 48 kHz, packed stereo (L and R interleaved: 1920 int16 values), and goes back as 960-sample
mono frames to its encoder. A call flow works at the leg's rate (8000 for ``audio/pcmu``
models, 24000 for ``audio/pcm``). :class:`UplinkFrames` folds stereo to mono (the mean of L
and R) and resamples 48 kHz down to the leg rate; :class:`DownlinkFrames` resamples a leg
frame up to 48 kHz. Each holds one :class:`media.resample.Resampler` for the whole call (never
reset) and cuts its output into exact frames, so the result is the same bit for bit whether
audio is fed frame by frame or in one block. The filter adds 5.0-5.1 ms each way at 8 kHz and
1.7 ms at 24 kHz (:attr:`delay_seconds`).

Pure: numpy in, numpy or bytes out; no av, no I/O (the leg wraps these in ``av.AudioFrame``).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from media.resample import Resampler, design

WEBRTC_RATE = 48000  # Opus in WebRTC: always 48 kHz on the wire and out of the decoder
FRAME_MS = 20
WEBRTC_FRAME_SAMPLES = WEBRTC_RATE * FRAME_MS // 1000  # 960
LEG_RATES = (8000, 24000)  # the rates a call flow's media may run at (the model's formats)


def prepare(rates: tuple[int, ...] = LEG_RATES) -> None:
    """Design the filters for every leg rate now (a few ms each), not on a call's first frame."""
    for rate in rates:
        design(WEBRTC_RATE, rate)
        design(rate, WEBRTC_RATE)


def to_mono(samples: NDArray[np.int16], channels: int) -> NDArray[np.int16]:
    """Interleaved ``channels``-channel int16 audio as mono: the mean of the channels."""
    flat = samples.reshape(-1)
    if channels == 1:
        return flat.astype(np.int16, copy=True)
    if channels != 2:
        raise ValueError(f"expected mono or stereo audio, got {channels} channels")
    if len(flat) % 2:
        raise ValueError(f"stereo audio needs an even number of samples, got {len(flat)}")
    pairs = flat.reshape(-1, 2).astype(np.int32)
    # Floor of the mean: both channels in int16 range, so the sum fits int32 and the mean int16.
    return ((pairs[:, 0] + pairs[:, 1]) >> 1).astype(np.int16)


class UplinkFrames:
    """What the browser sends: 48 kHz frames (mono or stereo) -> 20 ms PCM16 frames at ``rate``.

    One owner feeds it (the leg's uplink task).
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame_samples = rate * FRAME_MS // 1000
        self._resampler = Resampler(WEBRTC_RATE, rate)
        self._pending = np.zeros(0, dtype=np.int16)

    @property
    def delay_seconds(self) -> float:
        return self._resampler.delay_seconds

    def push(self, samples: NDArray[np.int16], channels: int) -> list[bytes]:
        """Feed decoded audio (any length, interleaved); every whole leg frame it completes."""
        out = self._resampler.process(to_mono(samples, channels))
        pending = np.concatenate((self._pending, out)) if len(self._pending) else out
        size = self.frame_samples
        whole = len(pending) - len(pending) % size
        frames = [pending[i : i + size].tobytes() for i in range(0, whole, size)]
        self._pending = pending[whole:]
        return frames


class DownlinkFrames:
    """What the browser hears: 20 ms PCM16 frames at ``rate`` -> 960-sample 48 kHz mono frames.

    One owner feeds it (the leg's outgoing track).
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.frame_bytes = 2 * rate * FRAME_MS // 1000
        self._resampler = Resampler(rate, WEBRTC_RATE)
        self._pending = np.zeros(0, dtype=np.int16)

    @property
    def delay_seconds(self) -> float:
        return self._resampler.delay_seconds

    def push(self, frame: bytes) -> list[NDArray[np.int16]]:
        """Feed leg audio (whole samples, any length); every whole 48 kHz frame it completes."""
        if len(frame) % 2:
            raise ValueError(f"PCM16 audio has an even number of bytes, got {len(frame)}")
        out = self._resampler.process(np.frombuffer(frame, dtype=np.int16))
        pending = np.concatenate((self._pending, out)) if len(self._pending) else out
        size = WEBRTC_FRAME_SAMPLES
        whole = len(pending) - len(pending) % size
        frames = [pending[i : i + size] for i in range(0, whole, size)]
        self._pending = pending[whole:]
        return frames
