"""WAV files of 16-bit PCM, for tests, prompts and recordings (stdlib ``wave``)."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from numpy.typing import NDArray


@dataclass(frozen=True)
class Wav:
    rate: int
    samples: NDArray[np.int16]  # mono

    @property
    def duration(self) -> float:
        return len(self.samples) / self.rate


def read_wav(path: Path | str | IO[bytes]) -> Wav:
    """Read a 16-bit PCM WAV (a file name or an open binary file); stereo is mixed to mono."""
    try:
        with wave.open(path if not isinstance(path, Path) else str(path), "rb") as f:
            width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            data = f.readframes(f.getnframes())
    except wave.Error as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc})") from None
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit samples; only 16-bit PCM is supported")
    samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
    if channels > 1:
        frames = samples[: len(samples) - len(samples) % channels].reshape(-1, channels)
        samples = np.rint(frames.mean(axis=1)).astype(np.int16)
    return Wav(rate, samples)


def write_wav(path: Path | str | IO[bytes], rate: int, samples: NDArray[np.int16]) -> None:
    """Write mono 16-bit PCM to a file name or an open binary file."""
    with wave.open(path if not isinstance(path, Path) else str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.astype("<i2").tobytes())
