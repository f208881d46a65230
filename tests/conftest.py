"""Fixtures shared by every test layer (the helpers themselves live in ``tests.support``)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import daemon


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A temporary directory with a short path (AF_UNIX socket paths are limited to 107 bytes)."""
    with tempfile.TemporaryDirectory(prefix="sipai-") as path:
        yield Path(path)


@pytest.fixture
def daemon_env(tmp_path: Path) -> dict[str, str]:
    """Environment for a daemon subprocess with its own ports and state in ``tmp_path``."""
    return daemon.daemon_env(tmp_path)
