"""What tests and benchmarks share: paths and ports, the daemon as a process, test phones."""

from tests.support.daemon import (
    DaemonExited,
    DaemonProcess,
    daemon_env,
    registered,
    wait_for_health,
    workers_up,
)
from tests.support.paths import ROOT, SIPAI, free_port
from tests.support.phones import callee

__all__ = [
    "ROOT",
    "SIPAI",
    "DaemonExited",
    "DaemonProcess",
    "callee",
    "daemon_env",
    "free_port",
    "registered",
    "wait_for_health",
    "workers_up",
]
