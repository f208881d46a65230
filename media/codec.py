"""Wire formats of model audio, and streaming conversion to and from call-rate PCM.

The call side is always int16 PCM at the conference bridge's rate (8 kHz, or 16 kHz). The model
side is what the realtime session reports: mu-law or A-law at 8 kHz, or 16-bit PCM (usually at
24 kHz). A :class:`Decoder` or :class:`Encoder` lives as long as the call's audio direction,
so resampler state and a PCM byte split across two chunks carry over.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from media import g711
from media.resample import Resampler


class Encoding(StrEnum):
    PCM16 = "pcm16"  # little-endian signed 16-bit
    ULAW = "ulaw"
    ALAW = "alaw"


@dataclass(frozen=True)
class AudioFormat:
    encoding: Encoding
    rate: int

    @property
    def bytes_per_sample(self) -> int:
        return 2 if self.encoding is Encoding.PCM16 else 1

    def duration_ms(self, byte_count: int) -> float:
        return byte_count / self.bytes_per_sample * 1000 / self.rate


PCMU = AudioFormat(Encoding.ULAW, 8000)
PCMA = AudioFormat(Encoding.ALAW, 8000)
PCM24K = AudioFormat(Encoding.PCM16, 24000)


class Decoder:
    """Model audio bytes in ``source`` format -> int16 samples at ``rate``."""

    def __init__(self, source: AudioFormat, rate: int) -> None:
        self.source = source
        self.rate = rate
        self._resampler = Resampler(source.rate, rate)
        self._odd_byte = b""  # half of a PCM16 sample split across chunks

    def decode(self, data: bytes) -> NDArray[np.int16]:
        encoding = self.source.encoding
        if encoding is Encoding.ULAW:
            pcm = g711.ulaw_decode(data)
        elif encoding is Encoding.ALAW:
            pcm = g711.alaw_decode(data)
        else:
            data = self._odd_byte + data
            whole = len(data) & ~1
            self._odd_byte = data[whole:]
            pcm = np.frombuffer(data[:whole], dtype="<i2").astype(np.int16)
        return self._resampler.process(pcm)


class Encoder:
    """int16 samples at ``rate`` -> model audio bytes in ``target`` format."""

    def __init__(self, rate: int, target: AudioFormat) -> None:
        self.rate = rate
        self.target = target
        self._resampler = Resampler(rate, target.rate)

    def encode(self, pcm: NDArray[np.int16]) -> bytes:
        converted = self._resampler.process(pcm)
        encoding = self.target.encoding
        if encoding is Encoding.ULAW:
            return g711.ulaw_encode(converted).tobytes()
        if encoding is Encoding.ALAW:
            return g711.alaw_encode(converted).tobytes()
        return converted.astype("<i2").tobytes()
