"""The served OpenAPI document against the daemon itself: schemathesis with every check.

The daemon runs in direct mode with its outbound calls aimed at 127.0.0.1 and its webhooks
sent through a proxy address where nothing listens, so generated requests reach nobody else.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DaemonProcess

pytestmark = pytest.mark.e2e

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
MAX_EXAMPLES = 15  # per operation and phase: the whole test takes about 40 s here
SEED = 1  # a fixed seed: the same requests on every run, a failure reproduces
ROOT = Path(__file__).parents[2]
CONFIG = Path(__file__).with_name("schemathesis.toml")  # per-operation exceptions, explained


def test_schemathesis_finds_no_failure(daemon_env: dict[str, str], tmp_path: Path) -> None:
    """schemathesis --checks all on /openapi.json finds no server error, schema violation,
    undocumented status, wrongly refused or accepted request, or 405 without Allow."""
    dead = "http://127.0.0.1:9"  # the discard port: webhooks to generated URLs go nowhere
    env = daemon_env | {
        "SIPAI_SIP__REGISTRAR": "",
        "SIPAI_SIP__DOMAIN": "127.0.0.1",
        "HTTP_PROXY": dead,
        "HTTPS_PROXY": dead,
        "ALL_PROXY": dead,
        "NO_PROXY": "",
    }
    port = int(env["SIPAI_API__PORT"])
    daemon = DaemonProcess(env, timeout=90)
    try:
        daemon.start_sync()
        run = subprocess.run(
            [
                SCHEMATHESIS,
                "--config-file",
                str(CONFIG),
                "run",
                f"http://127.0.0.1:{port}/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                str(MAX_EXAMPLES),
                "--seed",
                str(SEED),
                "--generation-database",
                "none",
                "--no-color",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env=os.environ
            | {"SCHEMATHESIS_HOOKS": "tests.e2e.schemathesis_hooks", "PYTHONPATH": str(ROOT)},
            check=False,
        )
    finally:
        daemon.stop_sync(timeout=60)
    summary = run.stdout[run.stdout.find("SUMMARY") :]
    failures = re.findall(r"❌ (ST\d+ [^:\n]+): (\d+)", summary)
    print(summary)
    assert (run.returncode, failures) == (0, []), run.stdout[-20000:] + run.stderr[-2000:]
    assert re.search(r"\d+ generated, \d+ passed", summary), summary
