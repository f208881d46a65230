"""Is the caller's audio only the agent's own voice coming back? The barge-in echo guard.

A line that echoes (a speakerphone, some trunks) returns what the caller was sent after a
bulk delay of tens to a few hundred milliseconds, 6-30 dB weaker and through G.711 twice, and
the model's VAD takes it for the caller speaking. :class:`EchoDetector` keeps the caller's
recent frames with their clock stamps (:meth:`EchoDetector.heard`) and, when asked about the
last milliseconds of them (:meth:`EchoDetector.judge`), compares them with what the playout
handed out around then (:meth:`media.playout.PlayoutBuffer.reference`, on the same clock):

1. The bulk delay: normalised cross-correlation of the uplink window against the played
   reference, over every lag of 0 to ``max_delay_ms`` (one FFT). The best lag is kept and
   reported (refreshed each time the correlation is strong).
2. The echo path as one gain: ``residual = uplink - g * reference(t - delay)`` with the
   least-squares ``g``. ERLE, the uplink energy over the residual's, is high for echo alone;
   caller speech over the echo is not explained by the reference and leaves a residual near
   the uplink level. The residual is taken in 80 ms blocks, each matched on its own over
   the whole delay range and with its own gain (a receiving jitter buffer re-syncs at each
   talk spurt, or drops or repeats a frame, and moves the echo mid-window); the lowest ERLE
   of the blocks louder than the predicted echo is judged too, so speech that starts at the
   window's end counts, and a concealed frame (as loud as echo, unlike it) does not.

Echo when the correlation is at least ``min_correlation`` and the ERLE at least
``min_erle_db`` over the window and ``min_block_erle_db`` in every block that carries sound;
or when the uplink is ``quiet_db`` or more below what was played and still correlates with
it, with the ERLE at least ``min_block_erle_db``. Nothing played over the window (the aligned
reference quieter than ``reference_floor_dbfs``) is never echo, nor is an uplink that does not
correlate, nor one quieter than ``sound_floor_dbfs`` (``silent``: there is nothing to judge).

The line's own noise (a speakerphone's room, a trunk's hiss) is in the uplink too and no
reference explains it: it caps the ERLE at the echo-to-noise ratio. ``heard`` keeps the level
of each 20 ms frame over the last ``noise_seconds`` and the noise floor is a low percentile
of them, once 200 ms of the line is heard (the digital silence before its first sound left
out: no line yet), at most ``noise_ceiling_dbfs`` (on a line without noise and without pauses
that percentile is the echo's quiet frames, not a noise). What is left once the echo is taken
out counts as sound only ``noise_margin_db`` above that floor: an uplink no louder than that
is ``silent`` (a pause: only the line's noise), a residual no louder than that is echo over
noise (``echo``, if it correlates at least ``UNCORRELATED``), and a block whose residual is no
louder does not count for the lowest block ERLE.

Pure numpy, called on the event loop; no state shared with the media threads beyond the
playout's reference ring. Rates that are multiples of 8 kHz are judged at 8 kHz (block
means): the speech band is what matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

JUDGE_RATE = 8000
BLOCK_MS = 80
EXCESS_DB = 2.0  # a block this much louder than the echo predicted carries another sound
UNCORRELATED = 0.3  # below this the uplink has nothing to do with what was played
CONFIDENT = 0.7  # a correlation this strong refreshes the bulk delay kept
NOISE_FRAMES = 10  # the line's frames (200 ms) heard before a noise floor is taken
_FULL_SCALE = 32768.0


class PlayedAudio(Protocol):
    """What the detector reads of the playout (:class:`media.playout.PlayoutBuffer`)."""

    def reference(self, until: float, samples: int) -> NDArray[np.int16]: ...


@dataclass(frozen=True)
class EchoVerdict:
    echo: bool
    reason: str  # echo | quiet_echo | speech | uncorrelated | no_reference | silent | no_line
    delay_ms: float | None  # the bulk delay found (None: nothing to correlate)
    correlation: float  # normalised, at that delay (absolute value)
    erle_db: float  # uplink over residual, whole window
    block_erle_db: float  # the lowest over the blocks that carry sound
    uplink_dbfs: float
    played_dbfs: float  # the reference, aligned at the delay
    window_ms: int
    noise_dbfs: float = -120.0  # the line's noise floor when judged

    def fields(self) -> dict[str, Any]:
        """The figures, rounded, for a log line."""
        return {
            "echo": self.echo,
            "reason": self.reason,
            "delay_ms": None if self.delay_ms is None else round(self.delay_ms, 1),
            "correlation": round(self.correlation, 3),
            "erle_db": round(self.erle_db, 1),
            "block_erle_db": round(self.block_erle_db, 1),
            "uplink_dbfs": round(self.uplink_dbfs, 1),
            "played_dbfs": round(self.played_dbfs, 1),
            "window_ms": self.window_ms,
            "noise_dbfs": round(self.noise_dbfs, 1),
        }


@dataclass(frozen=True)
class EchoParameters:
    max_delay_ms: int = 500
    max_window_ms: int = 1000
    min_correlation: float = 0.5
    min_erle_db: float = 6.0
    min_block_erle_db: float = 3.0
    quiet_db: float = 24.0  # uplink this far under the played level, correlated: echo
    reference_floor_dbfs: float = -50.0  # quieter than this over the window: nothing played
    sound_floor_dbfs: float = -65.0  # quieter than this: silent (a block: not judged alone)
    noise_seconds: float = 5.0  # the frame levels the noise floor is taken from
    noise_percentile: float = 10.0
    noise_margin_db: float = 9.0  # a residual this close to the noise floor is no sound
    noise_ceiling_dbfs: float = -50.0  # the floor never higher (no line is that noisy)


def _dbfs(energy: float, samples: int) -> float:
    if samples <= 0 or energy <= 0.0:
        return -120.0
    return 10 * float(np.log10(energy / samples)) - 20 * float(np.log10(_FULL_SCALE))


class EchoDetector:
    """The caller's recent frames (``heard``) and the verdict on a window of them."""

    def __init__(
        self, rate: int, frame_ms: int = 20, parameters: EchoParameters | None = None
    ) -> None:
        self.rate = rate
        self.parameters = p = parameters or EchoParameters()
        self._step = rate // JUDGE_RATE if rate % JUDGE_RATE == 0 else 1
        self._judge_rate = rate // self._step
        # The caller's last max_window_ms (and a frame), written on the loop by ``heard``.
        size = rate * (p.max_window_ms + 2 * frame_ms) // 1000
        self._uplink = np.zeros(size, dtype=np.float64)
        self._written = 0  # samples heard so far
        self._last_stamp: float | None = None  # clock stamp of the last frame heard
        self.delay_ms: float | None = None  # the last bulk delay found with confidence
        self.judged = 0
        self._last: tuple[int, int, EchoVerdict] | None = None  # (heard, window, verdict)
        # The energy per sample of each frame heard over the last noise_seconds.
        self._levels = np.zeros(max(1, round(p.noise_seconds * 1000 / frame_ms)))
        self._frames = 0

    @property
    def noise_dbfs(self) -> float:
        """The line's noise floor: a low percentile of the recent frame levels."""
        count = min(self._frames, len(self._levels))
        if count < NOISE_FRAMES:
            return -120.0  # too little of the line heard to tell its noise
        p = self.parameters
        level = float(np.percentile(self._levels[:count], p.noise_percentile))
        return min(_dbfs(level, 1), p.noise_ceiling_dbfs)

    def heard(self, stamp: float, frame: bytes | NDArray[np.int16]) -> None:
        """A caller frame (PCM16 at ``rate``) and when it arrived, on the playout's clock."""
        pcm = np.frombuffer(frame, dtype="<i2") if isinstance(frame, bytes) else frame
        size = len(self._uplink)
        start = self._written % size
        end = start + len(pcm)
        if end <= size:
            self._uplink[start:end] = pcm
        else:
            split = size - start
            self._uplink[start:] = pcm[:split]
            self._uplink[: end - size] = pcm[split:]
        self._written += len(pcm)
        self._last_stamp = stamp
        x = pcm.astype(np.float64)
        energy = float(x @ x)
        if energy > 0.0 or self._frames:  # digital silence first: no line yet, not its noise
            self._levels[self._frames % len(self._levels)] = energy / len(x)
            self._frames += 1

    def _recent(self, samples: int) -> NDArray[np.float64]:
        size = len(self._uplink)
        samples = min(samples, self._written, size)
        end = self._written % size
        index = np.arange(end - samples, end) % size
        recent: NDArray[np.float64] = self._uplink[index]
        return recent

    def _decimate(self, pcm: NDArray[Any]) -> NDArray[np.float64]:
        x = np.asarray(pcm, dtype=np.float64)
        step = self._step
        if step == 1:
            return x
        usable = len(x) - len(x) % step
        means: NDArray[np.float64] = x[len(x) - usable :].reshape(-1, step).mean(axis=1)
        return means

    def judge(self, played: PlayedAudio, window_ms: int) -> EchoVerdict:
        """Is the caller's last ``window_ms`` (at most ``max_window_ms``) only echo? Asked
        again with nothing heard since, the same verdict (judged once)."""
        last = self._last
        if last is not None and last[:2] == (self._written, window_ms):
            return last[2]
        verdict = self._judge(played, window_ms)
        self._last = (self._written, window_ms, verdict)
        return verdict

    def _judge(self, played: PlayedAudio, window_ms: int) -> EchoVerdict:
        p = self.parameters
        self.judged += 1
        window_ms = max(BLOCK_MS, min(window_ms, p.max_window_ms))
        rate = self._judge_rate
        window = window_ms * self.rate // 1000
        max_delay = p.max_delay_ms * self.rate // 1000
        uplink = self._decimate(self._recent(window))
        w = len(uplink)
        if self._last_stamp is None or w < BLOCK_MS * rate // 1000:
            return EchoVerdict(False, "no_reference", None, 0.0, 0.0, 0.0, -120.0, -120.0, 0)
        reference = self._decimate(played.reference(self._last_stamp, window + max_delay))
        lags = len(reference) - w + 1  # lag k: uplink[n] ~ reference[n + k]
        energy_u = float(uplink @ uplink)
        uplink_dbfs = _dbfs(energy_u, w)
        squares = np.concatenate(([0.0], np.cumsum(reference * reference)))
        energy_r = squares[w : w + lags] - squares[:lags]  # reference energy at each lag
        loudest = float(energy_r.max(initial=0.0))
        noise_dbfs = self.noise_dbfs
        sound_dbfs = max(p.sound_floor_dbfs, noise_dbfs + p.noise_margin_db)
        if uplink_dbfs < sound_dbfs:
            figures = (0.0, 0.0, 0.0, uplink_dbfs, _dbfs(loudest, w), window_ms, noise_dbfs)
            # Digital silence over the window although the agent sounded at every delay
            # from 60 ms to max_delay_ms before it: the line echoes nothing and carries no
            # noise, so it tells nothing of the caller (no_line: the model's VAD decides).
            # An agent that only just started may still have its echo on the way: silent.
            nearest = max(0, lags - 1 - 60 * rate // 1000)
            echoes_due = (
                nearest > 0 and _dbfs(float(energy_r[:nearest].min()), w) >= p.reference_floor_dbfs
            )
            reason = "no_line" if energy_u == 0.0 and echoes_due else "silent"
            return EchoVerdict(False, reason, None, *figures)
        if _dbfs(loudest, w) < p.reference_floor_dbfs:
            played_dbfs = _dbfs(loudest, w)
            figures = (0.0, 0.0, 0.0, uplink_dbfs, played_dbfs, window_ms, noise_dbfs)
            return EchoVerdict(False, "no_reference", None, *figures)
        size = 1 << int(np.ceil(np.log2(len(reference) + w)))
        spectrum = np.fft.rfft(reference, size) * np.conj(np.fft.rfft(uplink, size))
        cross = np.fft.irfft(spectrum, size)[:lags]
        floor = loudest * 1e-4  # lags where the reference is all but silent do not count
        rho = np.where(energy_r > floor, cross / np.sqrt(energy_u * np.maximum(energy_r, floor)), 0)
        k = int(np.argmax(np.abs(rho)))
        correlation = float(abs(rho[k]))
        delay_ms = (lags - 1 - k) * 1000 / rate
        played_dbfs = _dbfs(float(energy_r[k]), w)
        gain = float(cross[k]) / max(float(energy_r[k]), 1e-9)
        erle_db, block_erle_db, voiced = self._blocks(uplink, reference, gain, sound_dbfs)
        if correlation >= CONFIDENT:
            self.delay_ms = delay_ms  # the bulk delay, refreshed while it is clear
        # The unexplained rest no louder than the line's noise: echo over that noise.
        over_noise = uplink_dbfs - erle_db < sound_dbfs and not voiced
        if correlation < min(p.min_correlation, UNCORRELATED):
            reason = "uncorrelated"
        elif (
            correlation >= p.min_correlation
            and erle_db >= p.min_erle_db
            and block_erle_db >= p.min_block_erle_db
        ) or over_noise:
            reason = "echo"
        elif uplink_dbfs <= played_dbfs - p.quiet_db and erle_db >= p.min_block_erle_db:
            reason = "quiet_echo"
        else:
            reason = "speech"
        echo = reason in ("echo", "quiet_echo")
        return EchoVerdict(
            echo,
            reason,
            delay_ms,
            correlation,
            erle_db,
            block_erle_db,
            uplink_dbfs,
            played_dbfs,
            window_ms,
            noise_dbfs,
        )

    def _blocks(
        self,
        uplink: NDArray[np.float64],
        reference: NDArray[np.float64],
        gain: float,
        sound_dbfs: float,
    ) -> tuple[float, float, bool]:
        """(ERLE over the window, lowest ERLE over its blocks that carry more sound than
        echo, whether any does) with each block (about BLOCK_MS, the window cut evenly)
        matched on its own over the whole delay range, with its own least-squares gain: a
        jitter buffer that re-syncs at a talk spurt, or drops or repeats a frame, moves the
        echo mid-window; each block still finds it. A block counts for the lowest only if it
        is louder by ``EXCESS_DB`` than the echo the window's ``gain`` predicts at that
        block's delay: a voice adds to the echo, while a frame the line concealed (not in the
        reference, no louder) takes its place. Nor does a block whose residual is below
        ``sound_dbfs`` (the line's noise: nothing there but echo)."""
        count = max(1, round(len(uplink) / (BLOCK_MS * self._judge_rate / 1000)))
        edges = np.linspace(0, len(uplink), count + 1).astype(int)
        lags = len(reference) - len(uplink) + 1
        energy_u = np.zeros(count)
        residual = np.zeros(count)
        predicted = np.zeros(count)
        squares = np.concatenate(([0.0], np.cumsum(reference * reference)))
        for index in range(count):
            start, end = int(edges[index]), int(edges[index + 1])
            u = uplink[start:end]
            size = end - start
            energy_u[index] = residual[index] = float(u @ u)
            if energy_u[index] <= 0.0:
                continue
            segment = reference[start : end + lags - 1]  # lag k: u[n] ~ segment[n + k]
            fft = 1 << int(np.ceil(np.log2(len(segment) + size)))
            spectrum = np.fft.rfft(segment, fft) * np.conj(np.fft.rfft(u, fft))
            cross = np.fft.irfft(spectrum, fft)[:lags]
            energy_r = squares[start + size : start + size + lags] - squares[start : start + lags]
            explained = cross * cross / np.maximum(energy_r, 1e-9)
            best = int(np.argmax(explained))
            residual[index] = max(energy_u[index] - float(explained[best]), 0.0)
            predicted[index] = gain * gain * float(energy_r[best])
        whole = _ratio_db(float(energy_u.sum()), float(residual.sum()))
        sizes = np.diff(edges)
        floor = sizes * (_FULL_SCALE * 10 ** (self.parameters.sound_floor_dbfs / 20)) ** 2
        power = energy_u / sizes
        loud = (energy_u > floor) & (power > power.max() / 100)
        loud &= energy_u >= predicted * 10 ** (EXCESS_DB / 10)
        loud &= residual > sizes * (_FULL_SCALE * 10 ** (sound_dbfs / 20)) ** 2
        if not loud.any():
            return whole, whole, False
        pairs = zip(energy_u[loud], residual[loud], strict=True)
        return whole, min(_ratio_db(float(e), float(r)) for e, r in pairs), True


def _ratio_db(signal: float, residual: float) -> float:
    if signal <= 0.0:
        return 0.0
    return 10 * float(np.log10(signal / max(residual, signal * 1e-9)))
