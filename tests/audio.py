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
