"""What the supervisor tells whoever watches calls end and webhooks go out (the metrics).

The outbound service, the inbound records and the webhook deliverer call a
:class:`CallObserver` on the event loop; an observer never blocks and never raises into
them. :class:`NullObserver` is the default when nobody watches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from daemon.blackbox import RecordingInfo


@dataclass(frozen=True)
class FinishedCall:
    call_id: str
    direction: str  # inbound | outbound
    status: str  # the record's final status (completed, failed, busy, no_answer, ...)
    end_cause: str  # the record's end cause or error text, as stored
    black_box: dict[str, Any] | None = None
    recording: RecordingInfo | None = None
    created_at: float | None = None  # outbound: when the request was accepted
    invite_at: float | None = None  # outbound: when the INVITE went out


class CallObserver(Protocol):
    def call_finished(self, call: FinishedCall) -> None:
        """A call's record was finished (after the store wrote it)."""
        ...

    def webhook_attempted(self, kind: str, state: str, queued_at: float, now: float) -> None:
        """One delivery attempt ended in ``state`` (delivered, pending, abandoned, gone)."""
        ...


class NullObserver:
    def call_finished(self, call: FinishedCall) -> None:
        """Nobody watches."""

    def webhook_attempted(self, kind: str, state: str, queued_at: float, now: float) -> None:
        """Nobody watches."""
