"""What the supervisor keeps of each SIP worker, and the settings a worker is given.

:class:`WorkerState` is one worker process as the pool sees it (process, connection,
registration, calls, slots); :func:`hello_reply` is the settings a worker process gets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, SecretStr

from config import Settings
from daemon.ipc import messages as msg
from daemon.ipc.connection import Body, Connection


@dataclass
class Teardown:
    """Slots of ended calls that pjsua is still tearing down, as the worker last reported them
    (pjsua's call count less the calls it holds); counted as used until reported free."""

    slots: int = 0
    epoch: int = 0  # bumped by each release: a report asked for before it is stale
    poll: asyncio.Task[None] | None = None


@dataclass
class Refusals:
    """INVITEs the worker refused, by reason: as last reported, and from its earlier lives."""

    now: dict[str, int] = field(default_factory=dict)
    before: dict[str, int] = field(default_factory=dict)

    def restarted(self) -> None:
        for reason, count in self.now.items():
            self.before[reason] = self.before.get(reason, 0) + count
        self.now = {}


@dataclass
class PoolListeners:
    """Who hears what the workers report (see the WorkerPool properties of the same names)."""

    capacity: list[Callable[[], None]] = field(default_factory=list)
    status: list[Callable[[str, str], None]] = field(default_factory=list)
    decided: list[Callable[[str, dict[str, Any]], None]] = field(default_factory=list)
    inbound: list[Callable[[int, str, Body], None]] = field(default_factory=list)


@dataclass
class WorkerState:
    index: int
    socket_path: Path
    process: asyncio.subprocess.Process | None = None
    conn: Connection | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    registered: bool = False
    registration_code: int = 0
    registration_error: str = ""  # why not registered, after a failed attempt
    calls: set[str] = field(default_factory=set)
    restarts: int = 0
    pid: int | None = None
    reader: asyncio.Future[None] | None = None  # the IPC connection's read loop
    reserved: int = 0  # outbound calls handed to this worker and not finished
    teardown: Teardown = field(default_factory=Teardown)
    refused: Refusals = field(default_factory=Refusals)

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "pid": self.pid,
            "up": self.ready.is_set(),
            "registered": self.registered,
            "registration_code": self.registration_code,
            "registration_error": self.registration_error or None,
            "calls": len(self.calls),
            "restarts": self.restarts,
            # frames from this worker the supervisor could not read (on this connection)
            "ipc_bad_frames": self.conn.bad_frames if self.conn is not None else 0,
        }


def hello_reply(settings: Settings, inbound_policy: str | None) -> msg.HelloReply:
    """What a worker is told in answer to its hello: the settings it runs with."""
    sip = settings.sip.model_dump(mode="json")
    sip["password"] = settings.sip.password.get_secret_value()
    return msg.HelloReply(
        sip=sip,
        log_level=settings.log.level.value,
        log_format=settings.log.format.value,
        inbound_policy=inbound_policy,
        agent=_revealed(settings.agent),
        api=_revealed(settings.api),
        realtime=_revealed(settings.realtime),
        recordings=settings.recordings.model_dump(mode="json"),
        web=settings.web.model_dump(mode="json"),
    )


def _revealed(value: Any) -> Any:
    """A settings section as plain JSON data with its secrets in clear, for the worker's hello
    (sent over the worker's own 0600 socket, never in argv or the environment)."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, BaseModel):
        return {name: _revealed(getattr(value, name)) for name in type(value).model_fields}
    if isinstance(value, list | tuple):
        return [_revealed(v) for v in value]
    if isinstance(value, dict):
        return {k: _revealed(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value
