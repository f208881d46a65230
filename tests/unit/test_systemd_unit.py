"""The shipped systemd unit: the settings the daemon relies on, and its security exposure."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess

import pytest

from config import Settings
from config.schema import SECRET_KEYS
from tests.support import ROOT

UNIT = ROOT / "systemd" / "sipai.service"
MAX_EXPOSURE = 2.0


def _service() -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return dict(parser["Service"])


def test_unit_matches_the_daemon() -> None:
    """Notify type, watchdog, stop timing above the drain default, the run command."""
    service = _service()
    assert service["Type"] == "notify"
    assert service["WatchdogSec"] == "30s"
    assert service["KillMode"] == "mixed"
    assert service["Restart"] == "on-failure"
    assert service["ExecStart"].split()[1:] == ["run", "--config", "/etc/sipai/sipai.toml"]
    stop_seconds = int(service["TimeoutStopSec"].removesuffix("s"))
    assert stop_seconds > Settings().daemon.drain_seconds + 5


def test_security_exposure_at_most_2() -> None:
    """`systemd-analyze security --offline=true` rates the unit at 2.0 or better."""
    if shutil.which("systemd-analyze") is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is missing: .ci/run must install systemd")
        pytest.skip("systemd-analyze is not installed on this machine")
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for sipai\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE


def test_every_secret_is_a_credential_and_the_install_steps_create_it() -> None:
    """Each secret key has a LoadCredential= line, and the documented install creates its file
    (systemd refuses to start a unit whose credential file is missing)."""
    loaded = {
        line.split("=", 1)[1].split(":", 1)[0]
        for line in UNIT.read_text().splitlines()
        if line.startswith("LoadCredential=")
    }
    names = {f"{section}.{key}" for section, key in SECRET_KEYS}
    assert loaded == names
    steps = (ROOT / "systemd" / "README.md").read_text()
    loop = re.search(r"for name in ([^;]*); do", steps)
    assert loop is not None
    assert set(loop.group(1).replace("\\", " ").split()) == names
