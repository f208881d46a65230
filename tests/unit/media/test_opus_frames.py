"""WebRTC's 48 kHz stereo frames to a leg's 20 ms mono frames at its rate, and back."""

from __future__ import annotations

import numpy as np

from media.opus_frames import DownlinkFrames, UplinkFrames, to_mono
from tests.audio import tone, tone_level_db

FRAMES = 50


def _stereo_frames(freq: float) -> list[np.ndarray]:
    """One second of a tone as aiortc hands it over: (1, 1920) packed stereo per 20 ms."""
    mono = tone(freq, 48000, FRAMES / 50)
    stereo = np.repeat(mono, 2)  # L and R interleaved, the same on both
    return [stereo[i * 1920 : (i + 1) * 1920].reshape(1, -1) for i in range(FRAMES)]


def test_stereo_48k_frames_become_mono_at_the_leg_rate_and_back() -> None:
    """50 stereo 48 kHz frames of 440 Hz give 50 mono 8 kHz frames of 160 samples at the same
    level (0.5 dB), 160 samples go back up as 960, and block or frame feeding is bit-identical."""
    frames = _stereo_frames(440.0)
    up = UplinkFrames(8000)
    out = [f for frame in frames for f in up.push(frame, channels=2)]
    assert len(out) == FRAMES, f"{len(out)} leg frames out of {FRAMES} in"
    assert {len(f) for f in out} == {320}, "160 samples (320 bytes) per 20 ms at 8 kHz"
    heard = np.frombuffer(b"".join(out), dtype=np.int16)
    steady = heard[800:]  # past the filter's delay and start-up
    level_in = tone_level_db(tone(440.0, 8000, len(steady) / 8000), 440.0, 8000)
    level = tone_level_db(steady, 440.0, 8000)
    print(f"440 Hz at 8 kHz: {level:.2f} dB (source {level_in:.2f} dB)")
    assert abs(level - level_in) <= 0.5, f"level {level:.2f} dB vs {level_in:.2f} dB"

    block = UplinkFrames(8000).push(np.concatenate([f.reshape(-1) for f in frames]), 2)
    assert block == out, "one block and 20 ms frames give the same bytes"

    down = DownlinkFrames(8000)
    back = [f for frame in out for f in down.push(frame)]
    assert len(back) == FRAMES
    assert {len(f) for f in back} == {960}
    whole = DownlinkFrames(8000).push(b"".join(out))
    assert all(np.array_equal(a, b) for a, b in zip(back, whole, strict=True))
    played = np.concatenate(back)[4800:]
    assert abs(tone_level_db(played, 440.0, 48000) - level_in) <= 0.5


def test_channels_are_averaged_and_the_rate_for_pcm_models_is_24k() -> None:
    """Stereo folds to the mean of L and R (no overflow at full scale); at 24 kHz a frame is
    480 samples."""
    left = np.array([32767, -32768, 100, 7], dtype=np.int16)
    right = np.array([32767, -32768, -100, 8], dtype=np.int16)
    interleaved = np.stack((left, right), axis=1).reshape(1, -1)
    assert to_mono(interleaved, 2).tolist() == [32767, -32768, 0, 7]
    frames = UplinkFrames(24000).push(np.zeros(960, dtype=np.int16), channels=1)
    assert [len(f) for f in frames] == [960]
    assert [len(f) for f in DownlinkFrames(24000).push(bytes(960))] == [960]
