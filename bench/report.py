"""Benchmark output: the JSON report alone on stdout, everything else on stderr.

A benchmark's stdout carries its one JSON object and nothing else, so it can be piped to
``jq`` or saved as it is. :func:`emit` runs the measurement with file descriptor 1 pointed at
stderr (log lines, prints of the libraries, native code and subprocesses that inherit stdout
all land there), then writes the report to the real stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any


def emit(measure: Callable[[], dict[str, Any]]) -> int:
    """Run ``measure`` with stdout sent to stderr; print its report as JSON on stdout."""
    sys.stdout.flush()
    report_fd = os.dup(1)
    os.dup2(2, 1)
    report = measure()
    sys.stdout.flush()
    with os.fdopen(report_fd, "w", encoding="utf-8") as out:
        json.dump(report, out, indent=2)
        out.write("\n")
    return 0
