"""WAV files of 16-bit PCM, for tests, prompts and recordings (stdlib ``wave``)."""

from __future__ import annotations

import struct
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
    rate, frames = read_wav_channels(path)
    if frames.shape[1] == 1:
        return Wav(rate, frames[:, 0])
    return Wav(rate, np.rint(frames.mean(axis=1)).astype(np.int16))


def write_wav(path: Path | str | IO[bytes], rate: int, samples: NDArray[np.int16]) -> None:
    """Write mono 16-bit PCM to a file name or an open binary file."""
    with wave.open(path if not isinstance(path, Path) else str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(samples.astype("<i2").tobytes())


def wav_header(rate: int, channels: int, data_bytes: int) -> bytes:
    """The 44-byte RIFF/WAVE header of 16-bit PCM with ``data_bytes`` of samples.

    Sizes beyond 32 bits are written as 0xFFFFFFFF, the size of a file still being written:
    players read such a file to its end.
    """
    block = 2 * channels
    riff = min(36 + data_bytes, 0xFFFFFFFF)
    data_bytes = min(data_bytes, 0xFFFFFFFF)
    return struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        riff,
        b"WAVE",
        b"fmt ",
        16,  # fmt chunk size
        1,  # PCM
        channels,
        rate,
        rate * block,  # bytes per second
        block,
        16,  # bits per sample
        b"data",
        data_bytes,
    )


def read_wav_channels(path: Path | str | IO[bytes]) -> tuple[int, NDArray[np.int16]]:
    """Read a 16-bit PCM WAV keeping its channels: (rate, samples of shape (frames, channels))."""
    try:
        with wave.open(path if not isinstance(path, Path) else str(path), "rb") as f:
            width, channels, rate = f.getsampwidth(), f.getnchannels(), f.getframerate()
            data = f.readframes(f.getnframes())
    except wave.Error as exc:
        raise ValueError(f"{path}: not a PCM WAV file ({exc})") from None
    if width != 2:
        raise ValueError(f"{path}: {8 * width}-bit samples; only 16-bit PCM is supported")
    samples = np.frombuffer(data, dtype="<i2").astype(np.int16)
    return rate, samples[: len(samples) - len(samples) % channels].reshape(-1, channels)
