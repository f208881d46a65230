"""What tests and benchmarks share: paths and ports, the daemon as a process, test phones."""

from tests.support.daemon import (
    DaemonExited,
    DaemonProcess,
    daemon_env,
    registered,
    wait_for_health,
    workers_up,
)
from tests.support.paths import ROOT, SIPAI, free_port, phone_rtp_base, rtp_range
from tests.support.phones import callee

__all__ = [
    "ROOT",
    "SIPAI",
    "DaemonExited",
    "DaemonProcess",
    "callee",
    "daemon_env",
    "free_port",
    "phone_rtp_base",
    "registered",
    "rtp_range",
    "wait_for_health",
    "workers_up",
]
