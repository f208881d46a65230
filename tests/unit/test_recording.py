"""The recording writer: frames paired by media tick, silence where a side has none, and a
WAV file whose header and hash describe it once the call has ended."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import struct
import time
import wave
from pathlib import Path

import numpy as np
from structlog.testing import capture_logs

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


async def test_an_unexpected_error_fails_one_recording_and_the_thread_goes_on(
    tmp_path: Path,
) -> None:
    """A recording whose step raises something other than OSError (its path holds a NUL
    byte: ValueError) is logged once as failed and gives no recording, and the writer thread
    goes on: a recording started after it is finished complete."""
    writer = RecordingWriter()
    bad_media, good_media = LegMedia(RATE), LegMedia(RATE)
    with capture_logs() as logs:
        bad = writer.start(bad_media, "bad", tmp_path / "bad\0.wav")
        good = writer.start(good_media, "good", tmp_path / "good.wav")
        assert bad is not None
        assert good is not None
        for tick in range(1, 51):
            for media in (bad_media, good_media):
                media.tap_played(_frame(-tick))
                media.tap_heard(_frame(tick))
        bad_info = await writer.finish(bad, within=2.0)
        good_info = await writer.finish(good, within=2.0)
        await writer.stop()

    assert bad_info is None, bad_info
    assert good_info is not None
    assert (good_info.complete, good_info.duration_seconds) == (True, 1.0), good_info
    failed = [(e["call_id"], e["error"]) for e in logs if e["event"] == "recording.failed"]
    assert failed == [("bad", "ValueError('embedded null byte')")], failed


async def test_the_sha256_is_of_the_bytes_written_through_the_files_descriptor(
    tmp_path: Path,
) -> None:
    """The hash is read through the recording's own descriptor, not by opening its path
    again: a file moved away during the call still gets the sha256 of its whole content."""
    media, writer = LegMedia(RATE), RecordingWriter()
    path, moved = tmp_path / "in-9.wav", tmp_path / "moved.wav"
    recording = writer.start(media, "in-9", path)
    assert recording is not None
    for tick in range(1, 51):
        media.tap_played(_frame(tick))
        media.tap_heard(_frame(-tick))
    async with asyncio.timeout(5):
        while not path.exists():
            await asyncio.sleep(0.02)
    path.rename(moved)
    info = await writer.finish(recording)
    await writer.stop()

    assert info is not None
    content = moved.read_bytes()
    assert len(content) == 44 + 50 * FRAME * 4
    assert info.sha256 == hashlib.sha256(content).hexdigest(), info


async def test_a_late_recording_is_waited_for_once(tmp_path: Path) -> None:
    """A file whose disk holds the writer up (a FIFO nobody reads) gives an incomplete result
    without a hash after ``within`` seconds, and a second finish() of it gives the same at
    once instead of waiting again."""
    path = tmp_path / "stuck.wav"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # the writer's open then succeeds
    fcntl.fcntl(reader, fcntl.F_SETPIPE_SZ, 4096)  # full after 6 ticks: os.write blocks
    media, writer = LegMedia(RATE), RecordingWriter()
    try:
        recording = writer.start(media, "stuck", path)
        assert recording is not None
        for tick in range(1, 51):
            media.tap_played(_frame(tick))
            media.tap_heard(_frame(tick))
        first = await writer.finish(recording, within=0.3)
        started = time.monotonic()
        second = await writer.finish(recording, within=0.3)
        waited = time.monotonic() - started
    finally:
        os.close(reader)  # the blocked write fails with a broken pipe: the thread ends
        await writer.stop()

    assert first is not None
    assert second is not None
    assert (first.complete, first.sha256) == (False, ""), first
    assert (second.complete, second.sha256) == (False, ""), second
    assert waited < 0.1, f"the second finish() waited {waited:.3f} s"
