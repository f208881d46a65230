"""Test audio: tones, noise and speech synthesised at test time with espeak-ng."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from media.wav import read_wav


def tone(freq: float, rate: int, seconds: float, amplitude: float = 10000) -> NDArray[np.int16]:
    t = np.arange(round(rate * seconds)) / rate
    return np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def tone_level_db(signal: NDArray[np.int16], freq: float, rate: int) -> float:
    """Amplitude of ``freq`` in ``signal`` in dB re 1 (windowed DFT projection)."""
    x = signal.astype(np.float64)
    window = np.hanning(len(x))
    t = np.arange(len(x)) / rate
    projection = np.sum(x * window * np.exp(-2j * np.pi * freq * t)) * 2 / np.sum(window)
    return 20 * float(np.log10(max(abs(projection), 1e-12)))


@cache
def espeak(text: str) -> tuple[int, bytes]:
    """Speech for ``text`` as (rate, int16 bytes); espeak-ng must be installed (make test does)."""
    binary = shutil.which("espeak-ng")
    assert binary, "espeak-ng is missing: `make test` installs it (apt-get install espeak-ng)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run([binary, "-w", str(path), text], check=True, timeout=60)
        wav = read_wav(path)
    return wav.rate, wav.samples.tobytes()


def speech(text: str) -> tuple[int, NDArray[np.int16]]:
    rate, data = espeak(text)
    return rate, np.frombuffer(data, dtype=np.int16).copy()


def occurrences(
    recording: NDArray[np.int16],
    sound: NDArray[np.int16],
    threshold: float = 0.6,
    pieces: int = 1,
) -> int:
    """How many times ``sound`` appears in ``recording`` (normalised cross-correlation peaks).

    Both at the same rate. A copy that went through G.711 and a conference bridge still
    correlates above 0.9; other speech by the same voice stays well under 0.5. A receiving
    jitter buffer may stretch or squeeze a copy by a few ms somewhere, which breaks the match
    of the whole; with ``pieces`` > 1 the sound is cut into that many parts, each is counted
    on its own and the median count is returned, so one slip per copy does not lose it.
    """
    if pieces > 1:
        counts = sorted(
            occurrences(recording, part, threshold) for part in np.array_split(sound, pieces)
        )
        return counts[len(counts) // 2]
    from scipy import signal  # noqa: PLC0415 - only the tests that count need it

    x = recording.astype(np.float64)
    p = sound.astype(np.float64)
    if len(x) < len(p) or not np.any(p):
        return 0
    dot = signal.correlate(x, p, mode="valid", method="fft")
    energy = np.concatenate(([0.0], np.cumsum(x * x)))
    window = np.sqrt(np.maximum(energy[len(p) :] - energy[: -len(p)], 1e-9))
    score = dot / (window * np.linalg.norm(p))
    peaks, _ = signal.find_peaks(score, height=threshold, distance=len(p) // 2)
    return len(peaks)


def bursts(
    samples: NDArray[np.int16], rate: int, gap_seconds: float = 1.0, level_db: float = -45.0
) -> list[tuple[int, int]]:
    """(start, end) sample indices of the sound in ``samples``, split at silences >= a gap."""
    frame = rate // 50
    count = len(samples) // frame
    frames = samples[: count * frame].astype(np.float64).reshape(count, frame)
    level = 10 * np.log10(np.mean(frames * frames, axis=1) / 32768.0**2 + 1e-12)
    loud = np.flatnonzero(level > level_db)
    found: list[tuple[int, int]] = []
    gap = int(gap_seconds * 50)
    for index in loud:
        if found and index - found[-1][1] <= gap:
            found[-1] = (found[-1][0], int(index))
        else:
            found.append((int(index), int(index)))
    return [(start * frame, (end + 1) * frame) for start, end in found]
