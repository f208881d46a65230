"""Run a command under the memory restriction the shipped systemd unit declares.

``python -m tests.sandbox [--deny-write-execute] -- COMMAND...`` applies, when asked, what
systemd's ``MemoryDenyWriteExecute=yes`` applies (Linux 6.3+: ``prctl(PR_SET_MDWE,
PR_MDWE_REFUSE_EXEC_GAIN)``: no mapping may be both writable and executable, none may become
executable), then execs the command. The restriction survives ``execve`` and ``fork``, as it
does for every process of a unit, so the command and all its children run under it.
"""

from __future__ import annotations

import configparser
import ctypes
import os
import sys
from pathlib import Path

PR_SET_MDWE = 65
PR_GET_MDWE = 66
PR_MDWE_REFUSE_EXEC_GAIN = 1
UNIT = Path(__file__).resolve().parent.parent / "systemd" / "sipai.service"
USAGE = "usage: python -m tests.sandbox [--deny-write-execute] -- COMMAND..."
TRUE = frozenset({"yes", "true", "on", "1"})


def unit_denies_write_execute(unit: Path = UNIT) -> bool:
    """Whether the unit's [Service] section sets MemoryDenyWriteExecute to true."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(unit)
    return parser["Service"].get("MemoryDenyWriteExecute", "no").strip().lower() in TRUE


def unit_flags(unit: Path = UNIT) -> list[str]:
    """The launcher's options that reproduce the unit's memory restriction."""
    return ["--deny-write-execute"] if unit_denies_write_execute(unit) else []


def deny_write_execute() -> None:
    """Apply MDWE to this process (and, through fork and exec, to all it starts)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_MDWE): {os.strerror(errno)}")


def write_execute_denied() -> bool:
    """Whether this process runs under MDWE."""
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) & PR_MDWE_REFUSE_EXEC_GAIN)


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print(USAGE, file=sys.stderr)
        return 2
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1 :]
    unknown = set(options) - {"--deny-write-execute"}
    if unknown or not command:
        print(f"tests.sandbox: bad arguments {argv!r}", file=sys.stderr)
        return 2
    if "--deny-write-execute" in options:
        deny_write_execute()
    os.execvp(command[0], command)  # does not return
    return 127


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
