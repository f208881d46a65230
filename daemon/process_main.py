"""The entry point of a worker process: ``python -m daemon.worker`` or ``python -m daemon.web``,
each with ``--socket PATH --index N``.

:func:`main` asks the kernel to end the process with its parent (the supervisor), reads the
two arguments and runs the process class's ``run()`` on a new event loop; its result is the
exit code.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Sequence
from typing import Protocol

PR_SET_PDEATHSIG = 1


class WorkerProcessRun(Protocol):
    async def run(self) -> int: ...


def die_with_parent() -> None:
    """Ask the kernel for SIGTERM when the supervisor dies (even by SIGKILL): no orphans."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() == 1:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(
    prog: str,
    process_factory: Callable[[str, int], WorkerProcessRun],
    argv: Sequence[str] | None = None,
) -> int:
    """Run ``process_factory(socket, index).run()``; its exit code."""
    die_with_parent()
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--index", type=int, required=True)
    args = parser.parse_args(argv)
    return asyncio.run(process_factory(args.socket, args.index).run())
