"""``python -m daemon.web --socket PATH --index N``: one web worker process."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import sys

from daemon.web.process import WebWorkerProcess

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """SIGTERM from the kernel when the supervisor dies (even by SIGKILL): no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main() -> int:
    _die_with_parent()
    parser = argparse.ArgumentParser(prog="sipai-web")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args()
    return asyncio.run(WebWorkerProcess(args.socket, args.index).run())


if __name__ == "__main__":
    sys.exit(main())
