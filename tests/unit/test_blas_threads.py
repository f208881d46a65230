"""SIP worker processes run numpy's BLAS on one thread unless the administrator says otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

from daemon.workers import worker_environment
from tests.conftest import ROOT

PROBE = """
import os
import daemon.worker.process
import numpy as np
np.dot(np.ones((160, 205)), np.ones(205))  # a small product, as numpy code in a worker makes
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


def test_an_explicit_setting_reaches_the_workers() -> None:
    """An administrator's OPENBLAS_NUM_THREADS goes to the workers unchanged and is obeyed;
    systemd's notify socket does not."""
    assert "NOTIFY_SOCKET" not in worker_environment({"NOTIFY_SOCKET": "/run/x"})
    # numpy's and scipy's OpenBLAS copies each start their helper threads
    assert _threads(worker_environment(_plain() | {"OPENBLAS_NUM_THREADS": "2"})) > 1
