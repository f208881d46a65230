"""Types of the compiled kernels in media/_kernels.c (they take any buffer)."""

from typing import Any, TypeAlias

from numpy.typing import NDArray

_Readable: TypeAlias = bytes | bytearray | memoryview | NDArray[Any]
_Writable: TypeAlias = bytearray | memoryview | NDArray[Any]

def fir(
    samples: _Readable, phases: _Readable, up: int, down: int, position: int, out: _Writable
) -> None: ...
def decode(table: _Readable, codes: _Readable, out: _Writable) -> None: ...
def encode(table: _Readable, samples: _Readable, out: _Writable) -> None: ...
