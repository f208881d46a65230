"""Connection limits of the HTTP API: what a connection is waiting for, and the fd budget.

Pure: no sockets and no event loop. The server (api/server.py) asks :func:`read_phase` after
every read and keeps one deadline per phase:

- ``IDLE``: no byte of a request yet (a new connection, or between keep-alive requests); the
  connection may be closed after ``idle_timeout``, or at once to make room for a new one.
- ``HEADERS``: a request has begun; its request line and headers must be complete within
  ``header_timeout`` of its first byte, however slowly they trickle in (slowloris).
- ``BODY``: the headers are in; the whole body must arrive within ``body_timeout``.

While a request is being answered (and on a WebSocket) nothing is awaited from the client and
no deadline runs.
"""

from __future__ import annotations

import enum
import resource
from dataclasses import dataclass

import h11

from config.schema import ApiSettings

# The supervisor's own files besides API connections: 15 with one worker when idle (SQLite
# and its WAL, the speech models' caches, the loop's selector, /dev/null), the webhook
# client's pool (httpx: up to 100 connections), and headroom.
BASE_FDS = 160
# Per SIP worker: its IPC socket and process pipes, and per call the engine's brain or HTTP
# tool client.
FDS_PER_WORKER = 8


class Phase(enum.Enum):
    IDLE = "idle"
    HEADERS = "headers"
    BODY = "body"


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    body_timeout: float = 15.0
    idle_timeout: float = 5.0
    max_connections: int = 512
    max_per_client: int = 64  # HTTP connections of one client address; 0: no share
    reserved_fds: int = BASE_FDS + FDS_PER_WORKER

    @classmethod
    def of(cls, api: ApiSettings, sip_workers: int) -> ConnectionLimits:
        """The limits the settings ask for, with the files a supervisor of that size holds."""
        return cls(
            header_timeout=api.header_timeout,
            body_timeout=api.body_timeout,
            idle_timeout=api.idle_timeout,
            max_connections=api.max_connections,
            max_per_client=api.max_connections_per_client,
            reserved_fds=BASE_FDS + FDS_PER_WORKER * sip_workers,
        )

    def timeout(self, phase: Phase) -> float:
        """Seconds a connection may stay in ``phase``."""
        if phase is Phase.IDLE:
            return self.idle_timeout
        if phase is Phase.HEADERS:
            return self.header_timeout
        return self.body_timeout


def read_phase(conn: h11.Connection) -> Phase | None:
    """What the server waits for from the client of ``conn``; None when it waits for nothing
    (the request is complete and being answered, or the connection is closing)."""
    if conn.their_state is h11.IDLE:
        return Phase.HEADERS if conn.trailing_data[0] else Phase.IDLE
    if conn.their_state is h11.SEND_BODY:
        return Phase.BODY
    return None


@dataclass(frozen=True)
class FdPlan:
    soft_limit: int  # the RLIMIT_NOFILE soft limit to set (unchanged when it suffices)
    max_connections: int  # the connection cap that fits under it


def plan_fds(limits: ConnectionLimits, soft: int, hard: int) -> FdPlan:
    """Raise the soft limit towards the hard one as far as the caps need; when even the hard
    limit is too low, lower the connection cap so that accepting never runs out of files."""
    needed = limits.max_connections + limits.reserved_fds
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return FdPlan(soft, limits.max_connections)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    target = max(target, soft)
    return FdPlan(target, max(1, min(limits.max_connections, target - limits.reserved_fds)))
