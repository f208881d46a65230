"""SIP worker processes keep numpy's BLAS on one thread; the supervisor keeps the default."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from daemon.workers import worker_environment
from tests.conftest import ROOT

PROBE = """
import os
import sip.process
import numpy as np
np.dot(np.ones((160, 205)), np.ones(205))  # a product of the size the resampler makes
print(len(os.listdir("/proc/self/task")))
"""


def _threads(env: dict[str, str]) -> int:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    return int(result.stdout.strip())


def _plain() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}


def test_a_worker_process_runs_blas_on_one_thread() -> None:
    assert _threads(worker_environment(_plain())) == 1


def test_the_supervisor_environment_and_an_explicit_setting_are_kept() -> None:
    """Without the worker's setting numpy starts its helper threads (where there are cores
    to use); an administrator's OPENBLAS_NUM_THREADS goes to the workers unchanged."""
    assert worker_environment({"OPENBLAS_NUM_THREADS": "2"})["OPENBLAS_NUM_THREADS"] == "2"
    assert "NOTIFY_SOCKET" not in worker_environment({"NOTIFY_SOCKET": "/run/x"})
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: OpenBLAS starts no helper thread either way")
    assert _threads(_plain()) > 1
