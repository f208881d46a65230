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
  into blocks nor on how numpy and its BLAS order the additions of a dot product.
  :func:`design` checks the bound this rests on (largest possible sum below 2**53).
- **No output held back.** Every output sample whose window of input has arrived is returned
  by the call that completes it: fed 20 ms frames, the stream owes nothing (unlike a block
  resampler such as libsoxr's, which holds back up to 73 ms at 8k -> 24k). The only latency
  is the filter's group delay.
- **Known, fixed delay.** The filter is symmetric with an odd length, so the group delay is
  ``(length - 1) / 2`` samples at ``rate_in * L``: :attr:`Resampler.delay_seconds`. Where the
  down factor is small the length is chosen so the delay is a whole number of output samples.
- **Stop-band >= 90 dB from the lower Nyquist frequency up, pass-band within +-0.02 dB** up to
  0.9 x the lower Nyquist frequency, checked on every design. Pairs among 8k, 16k, 24k and
  48k use the shortest equiripple (Parks-McClellan) filter that meets this, keeping the per-
  frame cost and the delay low (5.0-5.1 ms for 8k <-> 24k and 8k <-> 16k, 2.5 ms for 16k <->
  24k); pairs with 22.05k (speech synthesis output, resampled whole, not per frame) would need
  tens of thousands of taps and use a Kaiser window designed for 91 dB instead (2.6-7.2 ms).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from numpy.lib.stride_tricks import as_strided
from numpy.typing import NDArray
from scipy import signal

SUPPORTED_RATES = (8000, 16000, 22050, 24000, 48000)
PASSBAND_EDGE = 0.9  # fraction of the lower Nyquist frequency kept flat
STOPBAND_DB = 90.0  # every design is checked to reach this from the lower Nyquist frequency up
PASSBAND_RIPPLE_DB = 0.02  # and to stay within +-this up to PASSBAND_EDGE
KAISER_STOPBAND_DB = 91.0  # window design used where the equiripple one is too long to compute
_COEFFICIENT_BITS = 30
# Designs longer than this use a Kaiser window: Parks-McClellan does not converge there.
_MAX_EQUIRIPPLE_TAPS = 4000
# Up to this down factor, designs are lengthened so the delay is a whole number of outputs.
_MAX_WHOLE_DELAY_DOWN = 8


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
    # Whole phases: the extra (oldest) taps are zero.
    per_phase = -(-length // up)
    padded = np.zeros(per_phase * up)
    padded[:length] = taps
    # phases[p, j] multiplies x[k - j]; store reversed so a window x[k-K+1 .. k] dots directly.
    phases = np.ascontiguousarray(padded.reshape(per_phase, up).T[:, ::-1])
    # In units of 2**-30, the largest sum one output can reach: it must stay below 2**53.
    largest_sum = float(np.abs(phases).sum(axis=1).max()) * 2.0**_COEFFICIENT_BITS * 32768
    if largest_sum >= 2.0**53:
        raise RuntimeError(f"{rate_in}->{rate_out}: sums of products could be inexact in float64")
    return FilterDesign(up, down, per_phase, length, phases, stopband, ripple)


def _whole_delay(length: int, down: int) -> int:
    """Grow an odd length until its delay (length - 1) / 2 is a whole number of outputs."""
    if down <= _MAX_WHOLE_DELAY_DOWN:
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
    if len(taps) <= _MAX_EQUIRIPPLE_TAPS:
        freqs = np.concatenate(
            (np.linspace(0, edges[0], 512), np.linspace(edges[1], high_rate / 2, 8192))
        )
        _, response = signal.freqz(taps, worN=freqs, fs=high_rate)
        magnitude = 20 * np.log10(np.maximum(np.abs(response), 1e-15))
        return float(-magnitude[512:].max()), float(np.abs(magnitude[:512]).max())
    # Long (Kaiser) designs: one FFT, at least 8 points per high_rate / length (the width of a
    # side lobe) instead of evaluating the polynomial at each frequency (0.25 s at 50k taps).
    points = 1 << (8 * len(taps)).bit_length()
    freqs, response = signal.freqz(taps, worN=points, fs=high_rate)
    magnitude = 20 * np.log10(np.maximum(np.abs(response), 1e-15))
    stop = magnitude[freqs >= edges[1]]
    passband = magnitude[freqs <= edges[0]]
    return float(-stop.max()), float(np.abs(passband).max())


class Resampler:
    """Converts an int16 stream from ``rate_in`` to ``rate_out``, one block at a time.

    Not thread-safe: one owner feeds it. Output for a stream is identical whatever the block
    sizes; :meth:`flush` returns the tail still inside the filter at the end of a stream.

    The input is kept (as float64) in a buffer that holds the last ``taps - 1`` samples of the
    previous blocks followed by the new block. Outputs ``up`` apart share a phase and have
    windows ``down`` inputs apart, so each of the (at most ``up``) phases in a block is one
    numpy call: a correlation over the buffer when ``down`` is 1, else a matrix-vector product
    over a strided view of every window of the buffer.
    """

    def __init__(self, rate_in: int, rate_out: int) -> None:
        self.rate_in = rate_in
        self.rate_out = rate_out
        self._design = None if rate_in == rate_out else design(rate_in, rate_out)
        self._consumed = 0  # input samples seen
        self._produced = 0  # output samples made
        # Input kept from one block to the next: the next output's window starts at most this
        # far back (an output is made as soon as the last sample of its window has arrived).
        self._keep = 0 if self._design is None else self._design.taps_per_phase - 1
        self._buffer = np.zeros(self._keep)
        self._windows = self._buffer[None, :]
        self._grow(self._keep + 4096)

    def _grow(self, size: int) -> None:
        """A larger buffer (the kept samples carried over) and the view of all its windows."""
        buffer = np.zeros(size)
        buffer[: self._keep] = self._buffer[: self._keep]
        taps = self._keep + 1
        # Row i is buffer[i : i + taps]: a view, no copy (rows overlap).
        self._windows = as_strided(
            buffer, (size - taps + 1, taps), (buffer.itemsize, buffer.itemsize), writeable=False
        )
        self._buffer = buffer

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
        filled = keep + size
        if len(self._buffer) < filled:
            self._grow(keep + 2 * size)
        buffer = self._buffer
        buffer[keep:filled] = pcm
        start = self._produced
        end = ((self._consumed + size) * d.up - 1) // d.down + 1
        count = max(0, end - start)
        sums = np.empty(count)
        # buffer[0] is input consumed - keep; output o's window ends at input (o * down) // up.
        base = self._consumed - keep
        for r in range(min(d.up, count)):
            at = (start + r) * d.down
            first = at // d.up - base - keep  # where the window of output start + r begins
            n = -(-(count - r) // d.up)  # outputs start+r, start+r+up, ...
            coefficients = d.phases[at % d.up]
            if d.down == 1:
                sums[r :: d.up] = np.correlate(buffer[first : first + n + keep], coefficients)
            else:
                windows = self._windows[first : first + (n - 1) * d.down + 1 : d.down]
                sums[r :: d.up] = np.dot(windows, coefficients)
        self._produced += count
        buffer[:keep] = buffer[size:filled]
        self._consumed += size
        return _to_int16(sums)

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


_LOWEST, _HIGHEST = -32768.0, 32767.0


def _to_int16(sums: NDArray[np.float64]) -> NDArray[np.int16]:
    """Round half to even and saturate."""
    np.rint(sums, out=sums)
    np.minimum(sums, _HIGHEST, out=sums)  # two ufuncs cost less than np.clip on a frame
    np.maximum(sums, _LOWEST, out=sums)
    return sums.astype(np.int16)


def resample(pcm: NDArray[np.int16], rate_in: int, rate_out: int) -> NDArray[np.int16]:
    """Resample a whole signal, delay compensated: output sample i is at time i / rate_out."""
    if rate_in == rate_out:
        return pcm.copy()
    resampler = Resampler(rate_in, rate_out)
    out = np.concatenate((resampler.process(pcm), resampler.flush()))
    skip = round(resampler.delay_samples)
    wanted = math.ceil(len(pcm) * rate_out / rate_in)
    return out[skip : skip + wanted]
