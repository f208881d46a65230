"""Cut a byte stream of arbitrary chunks into frames of exactly one size."""

from __future__ import annotations


class FrameSplitter:
    """Buffers what does not fill a frame until the next chunk completes it."""

    def __init__(self, frame_bytes: int) -> None:
        if frame_bytes <= 0:
            raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
        self.frame_bytes = frame_bytes
        self._pending = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Add a chunk; return every whole frame now available, oldest first."""
        self._pending += data
        size = self.frame_bytes
        whole = len(self._pending) - len(self._pending) % size
        frames = [bytes(self._pending[i : i + size]) for i in range(0, whole, size)]
        del self._pending[:whole]
        return frames

    @property
    def pending_bytes(self) -> int:
        return len(self._pending)

    def clear(self) -> None:
        self._pending.clear()
