"""Uplink framing, model-format conversion and WAV files."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from media import g711
from media.codec import PCM24K, PCMU, AudioFormat, Decoder, Encoder, Encoding
from media.framing import FrameSplitter
from media.resample import Resampler
from media.wav import read_wav, write_wav
from tests.audio import tone, tone_level_db


@given(st.lists(st.binary(max_size=700), max_size=30))
def test_splitter_emits_exact_frames_in_order(chunks: list[bytes]) -> None:
    """Any chunking yields exact 320-byte frames whose concatenation is the input prefix."""
    splitter = FrameSplitter(320)
    frames = [frame for chunk in chunks for frame in splitter.feed(chunk)]
    data = b"".join(chunks)
    assert all(len(frame) == 320 for frame in frames)
    assert b"".join(frames) == data[: len(frames) * 320]
    assert splitter.pending_bytes == len(data) % 320


def test_pcmu_passthrough_is_plain_g711() -> None:
    """With mu-law on both sides at 8 kHz the conversion is the codec alone."""
    pcm = tone(440, 8000, 0.1)
    wire = Encoder(8000, PCMU).encode(pcm)
    assert wire == g711.ulaw_encode(pcm).tobytes()
    assert np.array_equal(Decoder(PCMU, 8000).decode(wire), g711.ulaw_decode(wire))


def test_pcm24k_chunks_split_mid_sample() -> None:
    """24 kHz PCM cut at odd byte offsets decodes to the same 8 kHz audio as one chunk."""
    pcm24 = tone(1000, 24000, 0.2).astype("<i2").tobytes()
    whole = Decoder(PCM24K, 8000).decode(pcm24)
    decoder = Decoder(PCM24K, 8000)
    parts = [decoder.decode(pcm24[i : i + 333]) for i in range(0, len(pcm24), 333)]
    assert np.array_equal(np.concatenate(parts), whole)
    assert np.array_equal(whole, Resampler(24000, 8000).process(tone(1000, 24000, 0.2)))


def test_encoder_to_pcm24k_keeps_the_tone() -> None:
    """8 kHz call audio sent as 24 kHz PCM keeps its frequency and level."""
    wire = Encoder(8000, PCM24K).encode(tone(800, 8000, 0.5))
    out = np.frombuffer(wire, dtype="<i2")
    assert len(out) == 3 * 4000  # every output whose input has arrived
    assert abs(tone_level_db(out[500:], 800, 24000) - 20 * np.log10(10000)) < 0.5
    assert AudioFormat(Encoding.PCM16, 24000).duration_ms(len(wire)) == pytest.approx(len(out) / 24)


def test_wav_round_trip_and_stereo_mixdown(tmp_path: Path) -> None:
    """Mono round-trips exactly; stereo is averaged to mono; 8-bit files are refused."""
    pcm = tone(440, 16000, 0.1)
    write_wav(tmp_path / "mono.wav", 16000, pcm)
    wav = read_wav(tmp_path / "mono.wav")
    assert (wav.rate, wav.duration) == (16000, 0.1)
    assert np.array_equal(wav.samples, pcm)

    with wave.open(str(tmp_path / "stereo.wav"), "wb") as f:
        f.setnchannels(2)
        f.setsampwidth(2)
        f.setframerate(8000)
        f.writeframes(np.array([100, 300, -100, -300], dtype="<i2").tobytes())
    assert read_wav(tmp_path / "stereo.wav").samples.tolist() == [200, -200]

    with wave.open(str(tmp_path / "8bit.wav"), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(1)
        f.setframerate(8000)
        f.writeframes(b"\x80\x80")
    with pytest.raises(ValueError, match="only 16-bit PCM"):
        read_wav(tmp_path / "8bit.wav")
