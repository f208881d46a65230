"""The recording writer: frames paired by media tick, silence where a side has none, and a
WAV file whose header and hash describe it once the call has ended."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import wave
from pathlib import Path

import numpy as np

from daemon.legs.media import LegMedia
from daemon.recording.writer import RecordingWriter, recording_path
from media.wav import read_wav_channels

RATE = 8000
FRAME = RATE // 50


def _frame(value: int) -> bytes:
    return np.full(FRAME, value, dtype="<i2").tobytes()


async def test_ticks_missing_on_a_channel_become_silence_and_keep_alignment(
    tmp_path: Path,
) -> None:
    """100 ticks with 7 of the caller's frames missing give 100 frames on both channels, the
    missing ones silent and every other frame at its own tick on its own channel."""
    media, writer = LegMedia(RATE), RecordingWriter()
    recording = writer.start(media, "call-1", tmp_path / "call-1.wav")
    assert recording is not None
    missing = {1, 5, 17, 18, 40, 63, 100}
    for tick in range(1, 101):
        media.tap_played(_frame(-tick))
        if tick not in missing:
            media.tap_heard(_frame(tick))
    info = await writer.finish(recording)
    await writer.stop()

    assert info is not None
    rate, samples = read_wav_channels(tmp_path / "call-1.wav")
    assert (rate, samples.shape) == (RATE, (100 * FRAME, 2)), samples.shape
    ticks = samples.reshape(100, FRAME, 2)
    heard = [int(v) for v in ticks[:, 0, 0]]
    assert heard == [0 if t in missing else t for t in range(1, 101)], heard
    assert [int(v) for v in ticks[:, 0, 1]] == [-t for t in range(1, 101)]
    assert all((ticks[t - 1, :, 0] == 0).all() for t in missing)
    assert (ticks.min(axis=1) == ticks.max(axis=1)).all()  # no frame straddles two ticks
    assert (info.complete, info.dropped_frames) == (True, 0)


async def test_the_header_and_sha256_describe_the_file(tmp_path: Path) -> None:
    """While recording the header says "size unknown" (0xFFFFFFFF); once finished its sizes
    are patched, ``wave`` reads 2 channels at 8000 Hz, the sha256 is that of the file, the
    duration is ticks x 20 ms, and file and day directory are 0640 and 0750 (less the umask)."""
    media, writer = LegMedia(RATE), RecordingWriter()
    path = recording_path(tmp_path / "recordings", "out-7", 1_767_225_600.0)  # 2026-01-01 UTC
    assert path == tmp_path / "recordings" / "2026-01-01" / "out-7.wav"
    recording = writer.start(media, "out-7", path)
    assert recording is not None
    for tick in range(1, 151):
        media.tap_played(_frame(tick))
        media.tap_heard(_frame(1000 + tick))
    async with asyncio.timeout(5):
        while not path.exists() or path.stat().st_size < 44 + 100 * 4 * FRAME:
            await asyncio.sleep(0.02)
    riff, data = struct.unpack_from("<4xI32xI", path.read_bytes())
    assert (riff, data) == (0xFFFFFFFF, 0xFFFFFFFF)
    info = await writer.finish(recording)
    await writer.stop()

    assert info is not None
    content = path.read_bytes()
    assert struct.unpack_from("<4xI32xI", content) == (len(content) - 8, len(content) - 44)
    with wave.open(str(path), "rb") as f:
        assert (f.getnchannels(), f.getsampwidth(), f.getframerate()) == (2, 2, RATE)
        assert f.getnframes() == 150 * FRAME
    assert info.sha256 == hashlib.sha256(content).hexdigest()
    assert info.bytes == len(content) == 44 + 150 * FRAME * 4
    assert info.duration_seconds == 3.0, info
    assert (info.rate, info.complete, info.path) == (RATE, True, str(path))
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o640 & ~umask
    assert path.parent.stat().st_mode & 0o777 == 0o750 & ~umask


async def test_a_call_without_audio_leaves_no_file(tmp_path: Path) -> None:
    """A recorded call that never carried a frame (refused, never answered) gives no
    recording and no file."""
    media, writer = LegMedia(RATE), RecordingWriter()
    recording = writer.start(media, "in-0", tmp_path / "in-0.wav")
    assert recording is not None
    assert await writer.finish(recording) is None
    await writer.stop()
    assert not (tmp_path / "in-0.wav").exists()
    assert writer.start(media, "in-1", tmp_path / "in-1.wav") is None  # stopped: no new ones
