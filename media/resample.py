"""A streaming, band-limited resampler for int16 audio, on libsoxr (``soxr.ResampleStream``).

Properties the call path relies on:

- **State lives for the whole stream.** One soxr stream per :class:`Resampler`; nothing is
  reset on silence, only :meth:`Resampler.flush` (the end of a stream) starts a new one.
- **Block-size independence, bit for bit.** soxr runs in single-precision float here and the
  samples go in as they are (int16 values are exact in float32); the one rounding to int16 is
  done on the way out. soxr's float path gives the same samples whatever the block sizes; its
  int16 path does not (it dithers and rounds inside, per call: up to 2 LSB apart between 20 ms
  frames and one block), which is why it is not used.
- **Aligned output.** soxr removes its filter's delay: output sample ``i`` is at time
  ``i / rate_out``, so :attr:`Resampler.delay_seconds` is 0. soxr filters in blocks, though,
  and holds back up to a block of output until the input completes it
  (:attr:`Resampler.held_seconds`; ``bench/media.py`` measures it).
- **Quality.** soxr's HQ recipe (linear phase, pass-band to 0.91 of the lower Nyquist frequency);
  after the rounding to int16 the stop-band measures above 80 dB from the lower Nyquist
  frequency up (``tests/unit/media/test_resample.py``). VHQ costs the same per frame and
  measures the same in int16, but holds back twice as long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
import soxr
from numpy.typing import NDArray

SUPPORTED_RATES = (8000, 16000, 22050, 24000, 48000)
QUALITY = "HQ"
_EMPTY = np.zeros(0, dtype=np.float32)


@dataclass(frozen=True)
class StreamDesign:
    """The resampler configuration used for one rate pair."""

    rate_in: int
    rate_out: int
    quality: str


@cache
def design(rate_in: int, rate_out: int) -> StreamDesign:
    """Check a rate pair and run one frame through a stream of it (a warm-up, once per pair)."""
    for rate in (rate_in, rate_out):
        if rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported sample rate {rate}; supported: {SUPPORTED_RATES}")
    if rate_in != rate_out:
        stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality=QUALITY)
        stream.resample_chunk(np.zeros(rate_in // 50, dtype=np.float32), last=True)
    return StreamDesign(rate_in, rate_out, QUALITY)


_LOWEST, _HIGHEST = np.float32(-32768), np.float32(32767)


def _to_int16(samples: NDArray[np.float32]) -> NDArray[np.int16]:
    """Round half to even and saturate: the one rounding of the stream."""
    np.rint(samples, out=samples)
    np.minimum(samples, _HIGHEST, out=samples)  # two ufuncs cost less than np.clip on a frame
    np.maximum(samples, _LOWEST, out=samples)
    return samples.astype(np.int16)


class Resampler:
    """Converts an int16 stream from ``rate_in`` to ``rate_out``, one block at a time.

    Not thread-safe: one owner feeds it. Output for a stream is identical whatever the block
    sizes; :meth:`flush` returns the tail still inside the filter at the end of a stream.
    ``quality`` is soxr's recipe name (``bench/media.py`` compares HQ and VHQ).
    """

    def __init__(self, rate_in: int, rate_out: int, *, quality: str = QUALITY) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        design(rate_in, rate_out)
        self._stream = (
            None
            if rate_in == rate_out
            else soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality=quality)
        )

    @property
    def delay_seconds(self) -> float:
        """Offset of the output stream against the input: 0, soxr compensates its delay."""
        return self.delay_samples / self.rate_out

    @property
    def delay_samples(self) -> float:
        return 0.0

    @property
    def held_seconds(self) -> float:
        """Output the stream holds back now, until more input completes its block."""
        if self._stream is None:
            return 0.0
        return float(self._stream.delay()) / self.rate_out

    def process(self, pcm: NDArray[np.int16]) -> NDArray[np.int16]:
        """Feed a block of input; return every output sample it completes."""
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise TypeError(f"expected a 1-D int16 array, got {pcm.ndim}-D {pcm.dtype}")
        if self._stream is None:
            return pcm.copy()
        out: NDArray[np.float32] = self._stream.resample_chunk(pcm.astype(np.float32))
        return _to_int16(out)

    def flush(self) -> NDArray[np.int16]:
        """End the stream: return the samples still held back by the filter.

        Afterwards the resampler starts a new stream, as if just created.
        """
        if self._stream is None:
            return np.zeros(0, dtype=np.int16)
        out: NDArray[np.float32] = self._stream.resample_chunk(_EMPTY, last=True)
        self._stream.clear()
        return _to_int16(out)


def resample(pcm: NDArray[np.int16], rate_in: int, rate_out: int) -> NDArray[np.int16]:
    """Resample a whole signal: output sample i is at time i / rate_out, ceil(n * ratio) long."""
    if rate_in == rate_out:
        return pcm.copy()
    resampler = Resampler(rate_in, rate_out)
    out = np.concatenate((resampler.process(pcm), resampler.flush()))
    wanted = math.ceil(len(pcm) * rate_out / rate_in)
    if len(out) < wanted:
        out = np.concatenate((out, np.zeros(wanted - len(out), dtype=np.int16)))
    return out[:wanted]
