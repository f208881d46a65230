"""Fast copies between pjsua2's ``ByteVector`` (a SWIG std::vector<uint8_t>) and bytes.

Iterating a ByteVector from Python costs ~150 us per 20 ms frame; reading its storage costs
~2 us. libstdc++ lays a vector out as three pointers (start, finish, end of storage): the
layout is checked once against a known vector, and the slow path is used if it ever differs.
Safe to call from the media thread: no allocation beyond the returned bytes, no logging.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pjsua2 as pj


def _storage(vector: Any) -> tuple[int, int]:
    address = int(vector.this)
    start = ctypes.c_void_p.from_address(address).value or 0
    finish = ctypes.c_void_p.from_address(address + ctypes.sizeof(ctypes.c_void_p)).value or 0
    return start, finish


def _layout_is_known() -> bool:
    probe = bytes(range(256)) + b"sipai"
    try:
        start, finish = _storage(pj.ByteVector(probe))
        return finish - start == len(probe) and ctypes.string_at(start, len(probe)) == probe
    except (AttributeError, TypeError, ValueError):
        return False


FAST = _layout_is_known()


def read(vector: Any) -> bytes:
    """The vector's bytes."""
    if FAST:
        start, finish = _storage(vector)
        return ctypes.string_at(start, finish - start) if finish > start else b""
    return bytes(tuple(vector))


def write(vector: Any, data: bytes) -> bool:
    """Overwrite the vector in place when it already has ``len(data)`` bytes; else False."""
    if FAST:
        start, finish = _storage(vector)
        if finish - start == len(data):
            ctypes.memmove(start, data, len(data))
            return True
    return False
