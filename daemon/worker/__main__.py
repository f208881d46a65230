"""``python -m daemon.worker --socket PATH --index N``: one SIP worker process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import sys

from daemon.worker.process import WorkerProcess

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (even by SIGKILL): no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="sipai-worker")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args()
    return asyncio.run(WorkerProcess(args.socket, args.index).run())


if __name__ == "__main__":
    sys.exit(main())
