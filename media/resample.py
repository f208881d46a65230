"""A streaming, band-limited polyphase resampler for int16 audio.

For rates ``rate_in -> rate_out`` reduced to ``L / M`` (up by L, down by M), one linear-phase
FIR low-pass is designed at ``rate_in * L`` (transition band from 0.9 to 1.0 of the lower
Nyquist frequency) and split into L phases. Output sample
``n`` is the dot product of phase ``(n * M) mod L`` with the input ending at ``(n * M) // L``.

Properties the call path relies on:

- **State lives for the whole stream.** The last ``taps - 1`` input samples are carried from
  one :meth:`Resampler.process` call to the next and nothing is reset on silence.
- **Block-size independence, bit for bit.** Coefficients are rounded to multiples of 2**-30 and
  the samples are integers, so every product and every partial sum is exactly representable in
  float64: the result does not depend on summation order, hence not on how the input was cut
  into blocks nor on how BLAS blocks the matrix product.
- **Known, fixed delay.** The filter is symmetric with an odd length, so the group delay is
  ``(length - 1) / 2`` samples at ``rate_in * L``: :attr:`Resampler.delay_seconds`. Where the
  down factor is small the length is chosen so the delay is a whole number of output samples.
- **Stop-band >= 70 dB from the lower Nyquist frequency up, pass-band within +-0.02 dB** up to
  0.9 x the lower Nyquist frequency, checked on every design. Pairs among 8k, 16k, 24k and
  48k use the shortest equiripple (Parks-McClellan) filter that meets this, keeping the per-
  frame cost and the delay low; pairs with 22.05k (speech synthesis output, not per-frame)
  would need tens of thousands of taps and use a Kaiser window designed for 80 dB instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.typing import NDArray
from scipy import signal

SUPPORTED_RATES = (8000, 16000, 22050, 24000, 48000)
PASSBAND_EDGE = 0.9  # fraction of the lower Nyquist frequency kept flat
STOPBAND_DB = 70.0  # every design is checked to reach this from the lower Nyquist frequency up
PASSBAND_RIPPLE_DB = 0.02  # and to stay within +-this up to PASSBAND_EDGE
KAISER_STOPBAND_DB = 80.0  # window design used where the equiripple one is too long to compute
_COEFFICIENT_BITS = 30
# Designs longer than this use a Kaiser window: Parks-McClellan does not converge there.
_MAX_EQUIRIPPLE_TAPS = 4000
# Above this many phases, outputs are computed by gathering rows instead of one matrix
# product per block (both exact, so both give identical results).
_MAX_PHASE_LOOP = 8


@dataclass(frozen=True)
class FilterDesign:
    up: int
    down: int
    taps_per_phase: int
    length: int  # designed (odd) length before zero padding to a multiple of ``up``
    phases: NDArray[np.float64]  # (up, taps_per_phase), each row reversed for windows
    stopband_db: float  # measured worst attenuation from the lower Nyquist frequency up
    passband_ripple_db: float  # measured worst deviation up to PASSBAND_EDGE

    @property
    def delay_high_rate(self) -> float:
        return (self.length - 1) / 2


@cache
def design(rate_in: int, rate_out: int) -> FilterDesign:
    """The polyphase filter for one rate pair (computed once per process and pair)."""
    for rate in (rate_in, rate_out):
        if rate not in SUPPORTED_RATES:
            raise ValueError(f"unsupported sample rate {rate}; supported: {SUPPORTED_RATES}")
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    high_rate = rate_in * up
    nyquist_low = min(rate_in, rate_out) / 2
    edges = (PASSBAND_EDGE * nyquist_low, nyquist_low)
    kaiser_length, beta = signal.kaiserord(
        KAISER_STOPBAND_DB, (edges[1] - edges[0]) / (high_rate / 2)
    )
    if kaiser_length <= _MAX_EQUIRIPPLE_TAPS:
        taps = _equiripple(edges, high_rate, down, start=int(kaiser_length * 0.5))
    else:
        length = _whole_delay(kaiser_length | 1, down)
        taps = signal.firwin(length, sum(edges) / 2, window=("kaiser", beta), fs=high_rate)
    stopband, ripple = _measure(taps, edges, high_rate)
    taps = np.round(taps * up * 2.0**_COEFFICIENT_BITS) / 2.0**_COEFFICIENT_BITS
    length = len(taps)
    per_phase = -(-length // up)
    padded = np.zeros(per_phase * up)
    padded[:length] = taps
    # phases[p, j] multiplies x[k - j]; store reversed so a window x[k-K+1 .. k] dots directly.
    phases = np.ascontiguousarray(padded.reshape(per_phase, up).T[:, ::-1])
    return FilterDesign(up, down, per_phase, length, phases, stopband, ripple)


def _whole_delay(length: int, down: int) -> int:
    """Grow an odd length until its delay (length - 1) / 2 is a whole number of outputs."""
    if down <= _MAX_PHASE_LOOP:
        while ((length - 1) // 2) % down:
            length += 2
    return length


def _equiripple(
    edges: tuple[float, float], high_rate: float, down: int, start: int
) -> NDArray[np.float64]:
    """The shortest Parks-McClellan low-pass (odd length) that meets the specification."""
    length = _whole_delay(start | 1, down)
    # Weigh the bands so that both tolerances are reached together.
    weight = (10 ** (PASSBAND_RIPPLE_DB / 20) - 1) / 10 ** (-STOPBAND_DB / 20)
    bands = [0, edges[0], edges[1], high_rate / 2]
    for _ in range(200):
        taps = signal.remez(length, bands, [1, 0], weight=[1, weight], fs=high_rate)
        stopband, ripple = _measure(taps, edges, high_rate)
        if stopband >= STOPBAND_DB and ripple <= PASSBAND_RIPPLE_DB:
            return np.asarray(taps, dtype=np.float64)
        length = _whole_delay(length + 2, down)
    raise RuntimeError(f"no equiripple design met the specification below {length} taps")


def _measure(
    taps: NDArray[np.float64], edges: tuple[float, float], high_rate: float
) -> tuple[float, float]:
    """Worst stop-band attenuation and worst pass-band deviation, in dB."""
    freqs = np.concatenate(
        (np.linspace(0, edges[0], 512), np.linspace(edges[1], high_rate / 2, 8192))
    )
    _, response = signal.freqz(taps, worN=freqs, fs=high_rate)
    magnitude = 20 * np.log10(np.maximum(np.abs(response), 1e-15))
    return float(-magnitude[512:].max()), float(np.abs(magnitude[:512]).max())


class Resampler:
    """Converts an int16 stream from ``rate_in`` to ``rate_out``, one block at a time.

    Not thread-safe: one owner feeds it. Output for a stream is identical whatever the block
    sizes; :meth:`flush` returns the tail still inside the filter at the end of a stream.

    For pairs with a small up factor (every pair among 8k, 16k, 24k and 48k) a block costs one
    matrix product: the input is viewed (without copying) as one row per period of ``up``
    outputs, and a period-wide matrix holds each output's phase at its offset in the row.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        self._design = None if rate_in == rate_out else design(rate_in, rate_out)
        self._consumed = 0  # input samples seen
        self._produced = 0  # output samples made
        if self._design is None:
            return
        d = self._design
        # Longest reach of a period's outputs past the period's first input index.
        self._reach = ((d.up - 1) * d.down) // d.up
        self._period = np.zeros((d.taps_per_phase + self._reach, d.up))
        for r in range(d.up):
            offset = (r * d.down) // d.up
            self._period[offset : offset + d.taps_per_phase, r] = d.phases[(r * d.down) % d.up]
        # Decimating, the rows above overlap by all but ``down`` samples and BLAS would need a
        # copy of them; instead the input is viewed as rows of ``down`` samples (no overlap),
        # multiplied by the period matrix cut into groups of ``down`` rows, and each output is
        # the sum along a diagonal of that product (see _by_diagonal).
        self._groups = -(-len(self._period) // d.down)
        grouped = np.zeros((self._groups * d.down, d.up))
        grouped[: len(self._period)] = self._period
        self._grouped = np.ascontiguousarray(
            grouped.reshape(self._groups, d.down, d.up).transpose(1, 0, 2).reshape(d.down, -1)
        )
        # Input kept from one block to the next: a window plus one period's step.
        self._keep = d.taps_per_phase - 1 + d.down
        self._buffer = np.zeros(self._keep + 4096 + self._reach + self._groups * d.down)

    @property
    def delay_seconds(self) -> float:
        """Group delay of the filter: an impulse in comes out this much later."""
        return self.delay_samples / self.rate_out

    @property
    def delay_samples(self) -> float:
        """Group delay in output samples (a whole number for 8k/16k/24k/48k pairs)."""
        if self._design is None:
            return 0.0
        return self._design.delay_high_rate / self._design.down

    def process(self, pcm: NDArray[np.int16]) -> NDArray[np.int16]:
        """Feed a block of input; return every output sample it completes."""
        if pcm.dtype != np.int16 or pcm.ndim != 1:
            raise TypeError(f"expected a 1-D int16 array, got {pcm.ndim}-D {pcm.dtype}")
        d = self._design
        if d is None:
            return pcm.copy()
        keep, size = self._keep, len(pcm)
        if len(self._buffer) < keep + size + self._reach + self._groups * d.down:
            grown = np.zeros(keep + 2 * size + self._reach + self._groups * d.down)
            grown[:keep] = self._buffer[:keep]
            self._buffer = grown
        buffer = self._buffer
        buffer[keep : keep + size] = pcm
        if self._reach:
            buffer[keep + size : keep + size + self._reach] = 0.0
        base = self._consumed - keep  # absolute input index of buffer[0]
        start = self._produced
        end = ((self._consumed + size) * d.up - 1) // d.down + 1
        if end > start:
            if d.up > _MAX_PHASE_LOOP:
                out = self._by_gather(start, end, base)
            elif d.up == 1:
                out = self._by_window(start, end, base)
            elif d.down >= d.up:
                out = self._by_diagonal(start, end, base)
            else:
                out = self._by_period(start, end, base)
        else:
            out = np.zeros(0)
        buffer[:keep] = buffer[size : size + keep]
        self._consumed += size
        self._produced = max(start, end)
        return _to_int16(out)

    def flush(self) -> NDArray[np.int16]:
        """End the stream: return the samples still held back by the filter's delay.

        Afterwards the resampler starts a new stream, as if just created.
        """
        if self._design is None:
            return np.zeros(0, dtype=np.int16)
        owed = math.ceil(self._consumed * self.rate_out / self.rate_in + self.delay_samples)
        already = self._produced
        out = self.process(np.zeros(self._design.taps_per_phase, dtype=np.int16))
        self._buffer[:] = 0.0
        self._consumed = self._produced = 0
        return out[: max(0, owed - already)]

    def _by_period(self, start: int, end: int, base: int) -> NDArray[np.float64]:
        d = self._design
        assert d is not None
        first, last = start // d.up, (end - 1) // d.up + 1
        row0 = first * d.down - (d.taps_per_phase - 1) - base
        rows = np.ndarray(
            (last - first, len(self._period)),
            dtype=np.float64,
            buffer=self._buffer,
            offset=row0 * 8,
            strides=(d.down * 8, 8),
        )
        # np.dot copies the overlapping rows into one block for BLAS; matmul on the strided
        # view would take numpy's own, several times slower, loop.
        out: NDArray[np.float64] = np.dot(rows, self._period).ravel()
        return out[start - first * d.up : end - first * d.up]

    def _by_window(self, start: int, end: int, base: int) -> NDArray[np.float64]:
        """Decimation by a whole factor: one window of the input per output."""
        d = self._design
        assert d is not None
        row0 = start * d.down - (d.taps_per_phase - 1) - base
        windows = np.ndarray(
            (end - start, d.taps_per_phase),
            dtype=np.float64,
            buffer=self._buffer,
            offset=row0 * 8,
            strides=(d.down * 8, 8),
        )
        out: NDArray[np.float64] = np.dot(windows, d.phases[0])
        return out

    def _by_diagonal(self, start: int, end: int, base: int) -> NDArray[np.float64]:
        d = self._design
        assert d is not None
        first, last = start // d.up, (end - 1) // d.up + 1
        row0 = first * d.down - (d.taps_per_phase - 1) - base
        groups, width = self._groups, self._groups * d.up
        blocks = np.ndarray(
            (last - first + groups - 1, d.down),
            dtype=np.float64,
            buffer=self._buffer,
            offset=row0 * 8,
            strides=(d.down * 8, 8),
        )
        products = blocks @ self._grouped  # [row, group * up + phase]
        diagonals = np.ndarray(
            (last - first, groups, d.up),
            dtype=np.float64,
            buffer=products,
            strides=(width * 8, (width + d.up) * 8, 8),
        )
        out: NDArray[np.float64] = diagonals.sum(axis=1).ravel()
        return out[start - first * d.up : end - first * d.up]

    def _by_gather(self, start: int, end: int, base: int) -> NDArray[np.float64]:
        d = self._design
        assert d is not None
        windows = np.ndarray(
            (len(self._buffer) - d.taps_per_phase + 1, d.taps_per_phase),
            dtype=np.float64,
            buffer=self._buffer,
            strides=(8, 8),
        )
        position = np.arange(start, end, dtype=np.int64) * d.down
        rows = windows[position // d.up - (d.taps_per_phase - 1) - base]
        out: NDArray[np.float64] = np.einsum("ij,ij->i", rows, d.phases[position % d.up])
        return out


def _to_int16(samples: NDArray[np.float64]) -> NDArray[np.int16]:
    np.clip(samples, -32768.0, 32767.0, out=samples)
    return np.rint(samples).astype(np.int16)


def resample(pcm: NDArray[np.int16], rate_in: int, rate_out: int) -> NDArray[np.int16]:
    """Resample a whole signal, delay compensated: output sample i is at time i / rate_out."""
    if rate_in == rate_out:
        return pcm.copy()
    resampler = Resampler(rate_in, rate_out)
    out = np.concatenate((resampler.process(pcm), resampler.flush()))
    skip = round(resampler.delay_samples)
    wanted = math.ceil(len(pcm) * rate_out / rate_in)
    return out[skip : skip + wanted]
