"""The media core is plain Python on numpy and scipy: nothing to compile at install time."""

from __future__ import annotations

import importlib
from pathlib import Path

import media


def test_media_imports_without_a_compiled_extension() -> None:
    """Every media module imports, and the package holds no compiled kernel or its source."""
    for name in ("amd", "codec", "framing", "g711", "playout", "resample", "vad", "wav"):
        importlib.import_module(f"media.{name}")
    package = Path(media.__file__).parent
    leftovers = sorted(p.name for p in package.glob("_kernels*"))
    assert leftovers == [], f"compiled-extension files still in media/: {leftovers}"
