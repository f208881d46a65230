"""G.711 against the ITU-T reference as CPython's audioop implements it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from media import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # audioop is the reference here
    import audioop

ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int16)
ALL_CODES = bytes(range(256))


def test_ulaw_encode_every_sample() -> None:
    """Every 16-bit value encodes to audioop's mu-law byte."""
    expected = np.frombuffer(audioop.lin2ulaw(ALL_SAMPLES.tobytes(), 2), dtype=np.uint8)
    assert np.array_equal(g711.ulaw_encode(ALL_SAMPLES), expected)


def test_alaw_encode_every_sample() -> None:
    """Every 16-bit value encodes to audioop's A-law byte."""
    expected = np.frombuffer(audioop.lin2alaw(ALL_SAMPLES.tobytes(), 2), dtype=np.uint8)
    assert np.array_equal(g711.alaw_encode(ALL_SAMPLES), expected)


def test_decode_every_code() -> None:
    """Every code byte decodes to audioop's sample, for both laws."""
    assert g711.ulaw_decode(ALL_CODES).tolist() == list(
        np.frombuffer(audioop.ulaw2lin(ALL_CODES, 2), dtype="<i2")
    )
    assert g711.alaw_decode(ALL_CODES).tolist() == list(
        np.frombuffer(audioop.alaw2lin(ALL_CODES, 2), dtype="<i2")
    )


def test_bytes_in_and_type_check() -> None:
    """Little-endian bytes are accepted; other sample types are refused."""
    pcm = np.array([0, 1000, -1000, 32767], dtype=np.int16)
    assert np.array_equal(g711.ulaw_encode(pcm.astype("<i2").tobytes()), g711.ulaw_encode(pcm))
    with pytest.raises(TypeError, match="int16"):
        g711.ulaw_encode(pcm.astype(np.int32))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="odd"):
        g711.alaw_encode(b"\x00\x01\x02")
    with pytest.raises(TypeError, match="uint8"):
        g711.ulaw_decode(np.zeros(4, dtype=np.int16))  # type: ignore[arg-type]


def test_strided_arrays_and_empty_frames() -> None:
    """Views that are not contiguous are encoded and decoded like their copies."""
    pcm = np.arange(-30000, 30000, 37, dtype=np.int16)
    assert np.array_equal(g711.ulaw_encode(pcm[::3]), g711.ulaw_encode(pcm[::3].copy()))
    codes = g711.alaw_encode(pcm)
    assert np.array_equal(g711.alaw_decode(codes[1::2]), g711.alaw_decode(codes[1::2].copy()))
    assert g711.ulaw_decode(b"").shape == (0,)
    assert g711.ulaw_encode(np.zeros(0, dtype=np.int16)).shape == (0,)
