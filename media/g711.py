"""G.711 mu-law and A-law over numpy arrays, bit-exact with the ITU-T reference.

The reference is the Sun/ITU routine that CPython's ``audioop`` (and ``audioop-lts``)
implement: 16-bit input is truncated to 14 bits (mu-law) or 13 bits (A-law) before
companding. Encoding is one lookup in a 65,536-entry table indexed by the sample's bit
pattern; decoding one lookup in a 256-entry table. Both tables are built once at import from
the reference algorithm written over arrays; a frame is one numpy indexing of a table.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

_ALL_SAMPLES = np.arange(-32768, 32768, dtype=np.int32)
_ALL_CODES = np.arange(256, dtype=np.int32)

# Segment end points of the reference: the first segment whose end is >= the magnitude.
_MULAW_SEGMENT_ENDS = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF])
_ALAW_SEGMENT_ENDS = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF])
_MULAW_BIAS = 0x84
_MULAW_CLIP = 8159


def _build_mulaw_encoder() -> NDArray[np.uint8]:
    pcm = _ALL_SAMPLES >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    magnitude = np.minimum(np.abs(pcm), _MULAW_CLIP) + (_MULAW_BIAS >> 2)
    segment = np.searchsorted(_MULAW_SEGMENT_ENDS, magnitude, side="left")
    mantissa = (magnitude >> np.minimum(segment + 1, 31)) & 0xF
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa) ^ mask
    return _by_bit_pattern(code.astype(np.int32))


def _build_mulaw_decoder() -> NDArray[np.int16]:
    u = ~_ALL_CODES & 0xFF
    t = (((u & 0x0F) << 3) + _MULAW_BIAS) << ((u & 0x70) >> 4)
    return np.where(u & 0x80, _MULAW_BIAS - t, t - _MULAW_BIAS).astype(np.int16)


def _build_alaw_encoder() -> NDArray[np.uint8]:
    pcm = _ALL_SAMPLES >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    magnitude = np.where(pcm >= 0, pcm, -pcm - 1)
    segment = np.searchsorted(_ALAW_SEGMENT_ENDS, magnitude, side="left")
    shift = np.where(segment < 2, 1, segment)
    mantissa = (magnitude >> np.minimum(shift, 31)) & 0xF
    code = np.where(segment >= 8, 0x7F, (segment << 4) | mantissa) ^ mask
    return _by_bit_pattern(code.astype(np.int32))


def _build_alaw_decoder() -> NDArray[np.int16]:
    a = _ALL_CODES ^ 0x55
    t = (a & 0x0F) << 4
    segment = (a & 0x70) >> 4
    t = np.where(segment == 0, t + 8, t + 0x108)
    t = np.where(segment > 1, t << np.maximum(segment - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _by_bit_pattern(code_by_value: NDArray[np.int32]) -> NDArray[np.uint8]:
    """Reorder a table indexed by value -32768..32767 to be indexed by the uint16 bit pattern."""
    table = np.empty(65536, dtype=np.uint8)
    table[_ALL_SAMPLES.astype(np.int16).view(np.uint16)] = code_by_value.astype(np.uint8)
    return table


_MULAW_ENCODE = _build_mulaw_encoder()
_MULAW_DECODE = _build_mulaw_decoder()
_ALAW_ENCODE = _build_alaw_encoder()
_ALAW_DECODE = _build_alaw_decoder()


def _encode(table: NDArray[np.uint8], pcm: NDArray[np.int16] | bytes) -> NDArray[np.uint8]:
    if isinstance(pcm, bytes | bytearray):
        if len(pcm) % 2:
            raise ValueError(f"G.711 encodes 16-bit samples, got {len(pcm)} bytes (odd)")
        patterns = np.frombuffer(pcm, dtype="<u2")
    else:
        if pcm.dtype != np.int16:
            raise TypeError(f"G.711 encodes int16 samples, got {pcm.dtype}")
        patterns = pcm.view(np.uint16)
    codes: NDArray[np.uint8] = table[patterns]
    return codes


def _decode(table: NDArray[np.int16], data: NDArray[np.uint8] | bytes) -> NDArray[np.int16]:
    if isinstance(data, bytes | bytearray):
        codes = np.frombuffer(data, dtype=np.uint8)
    else:
        if data.dtype != np.uint8:
            raise TypeError(f"G.711 decodes uint8 codes, got {data.dtype}")
        codes = data
    return table[codes]


def ulaw_encode(pcm: NDArray[np.int16] | bytes) -> NDArray[np.uint8]:
    """Encode int16 samples (an array or little-endian bytes) to mu-law codes."""
    return _encode(_MULAW_ENCODE, pcm)


def ulaw_decode(data: NDArray[np.uint8] | bytes) -> NDArray[np.int16]:
    """Decode mu-law codes to int16 samples."""
    return _decode(_MULAW_DECODE, data)


def alaw_encode(pcm: NDArray[np.int16] | bytes) -> NDArray[np.uint8]:
    """Encode int16 samples (an array or little-endian bytes) to A-law codes."""
    return _encode(_ALAW_ENCODE, pcm)


def alaw_decode(data: NDArray[np.uint8] | bytes) -> NDArray[np.int16]:
    """Decode A-law codes to int16 samples."""
    return _decode(_ALAW_DECODE, data)
