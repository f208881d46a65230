"""The daemon's and the worker's processes keep numpy's BLAS on one thread (see media/)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PROBE = """
import os, sys
import {package}
import numpy as np
np.dot(np.ones((160, 205)), np.ones(205))  # a product of the size the resampler makes
print(len(os.listdir("/proc/self/task")))
"""


def _threads(package: str, env: dict[str, str]) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(package=package)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    return int(result.stdout.strip())


@pytest.mark.parametrize("package", ["daemon", "sip"])
def test_entry_packages_pin_blas_to_one_thread(package: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    assert _threads(package, env) == 1


def test_an_explicit_setting_is_kept() -> None:
    """An administrator's OPENBLAS_NUM_THREADS wins (checked where there are cores to use)."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: OpenBLAS starts no helper thread either way")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    assert _threads("daemon", env | {"OPENBLAS_NUM_THREADS": "2"}) == 2
