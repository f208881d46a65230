"""`make run` and `make test` stop with a one-line reason on an unsupported Python or machine.

The pjsua2-python wheels exist only for CPython on x86_64 and the versions of requires-python:
the Makefile checks $(PYTHON) before it makes the virtual environment. Each test runs the real
Makefile on a copy of it and pyproject.toml (so no .venv can short-cut the check) with a real
interpreter: under ``setarch i686`` for another machine, and with requires-python moved past
the running version for another version.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.e2e


def _tree(tmp_path: Path, requires: str | None = None) -> Path:
    """The files `make run` needs before it makes the venv (the rest are never reached)."""
    for name in ("Makefile",):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(ROOT / name, tmp_path / name)
    pyproject = (ROOT / "pyproject.toml").read_text()
    if requires is not None:
        pyproject, n = re.subn(
            r'^requires-python = ".*"$', f'requires-python = "{requires}"', pyproject, flags=re.M
        )
        assert n == 1
    (tmp_path / "pyproject.toml").write_text(pyproject)
    return tmp_path


def _make(tree: Path, target: str, python: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(tree), target, f"PYTHON={python}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _requires() -> str:
    pyproject = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'^requires-python = "(.*)"$', pyproject, re.M)
    assert found is not None
    return found.group(1)


@pytest.mark.parametrize("target", ["run", "test"])
def test_another_machine_stops_with_one_line(tmp_path: Path, target: str) -> None:
    """On i686 (setarch) `make run`/`make test` fail with one line naming the need, no venv."""
    tree = _tree(tmp_path)
    result = _make(tree, target, f"setarch i686 {sys.executable}")
    output = (result.stdout + result.stderr).strip()
    print(output)
    assert result.returncode != 0
    assert len(output.splitlines()) == 1, output
    assert f"sipai needs CPython {_requires()} on x86_64" in output, output
    version = ".".join(map(str, sys.version_info[:3]))
    assert f"is CPython {version} on i686" in output, output
    assert not (tree / ".venv").exists()


def test_another_python_version_stops_with_one_line(tmp_path: Path) -> None:
    """A Python outside requires-python makes `make run` fail with one line, no venv made."""
    minor = sys.version_info[1]
    tree = _tree(tmp_path, requires=f">=3.{minor + 1}")
    result = _make(tree, "run", sys.executable)
    output = (result.stdout + result.stderr).strip()
    print(output)
    assert result.returncode != 0
    assert len(output.splitlines()) == 1, output
    version = ".".join(map(str, sys.version_info[:3]))
    assert f"sipai needs CPython >=3.{minor + 1} on x86_64" in output, output
    assert f"is CPython {version} on x86_64" in output, output
    assert not (tree / ".venv").exists()


def test_this_python_passes_the_check() -> None:
    """The interpreter the suite runs on is one the check accepts (the repository's own files)."""
    result = _make(ROOT, "python-check", sys.executable)
    assert result.returncode == 0, result.stdout + result.stderr
