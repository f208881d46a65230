"""The realtime model session of one inbound call, replaced on a loss or a rotation.

Sends never raise: a session that is lost or being replaced drops what is sent to it (the
receiving side learns of the loss and reports it). Server errors that end a session (a
``server_error``, a rate limit) are raised by :meth:`CallSession.receive` like a dropped socket.

With a ``fallback`` endpoint (the embedded engine, ``[agent] fallback = "local"``) the call can
fail over: :meth:`CallSession.fail_over` opens the first session there instead, and
:meth:`CallSession.replace` with ``failover`` moves the call there mid-call. From then on every
new session (a reconnect, a rotation) opens on the engine.
"""

from __future__ import annotations

import base64
import json
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from config.schema import AgentSettings, ConnectFailure
from daemon.calls import conversation_events as ce
from daemon.calls.agent_config import session_config
from daemon.legs.media import Clock
from daemon.logs import get_logger
from daemon.realtime import events as ev
from daemon.realtime.client import Endpoint, RealtimeError, RealtimeSession, server_failure
from daemon.realtime.dialect import Json
from media.codec import AudioFormat
from media.playout import PlayoutBuffer

log = get_logger(__name__)


class CallSession:
    def __init__(
        self,
        endpoint: Endpoint,
        agent: AgentSettings,
        call_key: str,
        route: int | None,
        kind: str = "sip",
        *,
        fallback: Endpoint | None = None,
    ) -> None:
        self.endpoint = endpoint  # where new sessions open: the fallback's once failed over
        self.fallback = fallback
        self.agent = agent
        self.call_key = call_key
        self.route = route  # the [[agent.routes]] entry applied, for the log
        self.kind = kind  # the call leg's kind: a browser call has fewer tools
        self.current = RealtimeSession(endpoint, session_config(agent, kind))
        self.uplink_latency: deque[float] = deque(maxlen=20000)  # frame arrival -> sent, s
        self.connect_ms: float | None = None  # the first session's connect and set-up time

    async def open(self) -> tuple[AudioFormat, AudioFormat]:
        """Connect and configure the first session (logged either way); its input and output
        formats."""
        started = time.monotonic()
        try:
            reported = await self.current.open(self.agent.connect_timeout_seconds)
        except RealtimeError as exc:
            fallback = self.agent.on_connect_failure
            failing_over = self.can_fail_over
            log.error(
                "agent.connect_failed",
                call_id=self.call_key,
                url=self.endpoint.safe_url,
                kind=exc.kind,
                error=str(exc),
                fallback="local" if failing_over else fallback.value,
                sip_code=503 if fallback is ConnectFailure.REJECT and not failing_over else None,
            )
            raise
        self.connect_ms = round((time.monotonic() - started) * 1000, 1)
        log.info(
            "agent.session_ready",
            call_id=self.call_key,
            url=self.endpoint.safe_url,
            dialect=self.endpoint.dialect.name,
            input_format=str(reported.input_format),
            output_format=str(reported.output_format),
            connect_ms=round(self.connect_ms),
            route=self.route,
            failed_over=self.endpoint is self.fallback,
        )
        assert reported.input_format is not None  # checked by the session
        assert reported.output_format is not None
        return reported.input_format, reported.output_format

    @property
    def can_fail_over(self) -> bool:
        """A fallback is configured and the call is not on it yet."""
        return self.fallback is not None and self.endpoint is not self.fallback

    async def fail_over(self) -> tuple[AudioFormat, AudioFormat]:
        """The first session could not be opened: open it on the fallback instead, with the
        same session settings (as :meth:`open`)."""
        assert self.fallback is not None
        await self.current.close()
        self.endpoint = self.fallback
        self.current = RealtimeSession(self.endpoint, session_config(self.agent, self.kind))
        return await self.open()

    async def close(self) -> None:
        await self.current.close()

    async def receive(self) -> ev.ModelEvent:
        event = await self.current.receive()
        failure = server_failure(event) if isinstance(event, ev.ServerError) else None
        if failure is not None:
            raise failure
        return event

    async def send(self, message: Json) -> bool:
        """Send ``message``; False if the session is gone."""
        try:
            await self.current.send(message)
        except RealtimeError:
            return False
        return True

    async def append(self, data: bytes, arrived: Iterable[float], clock: Clock) -> bool:
        """Caller audio in the session's input format, from frames that arrived at
        ``arrived`` (``clock`` times); False if the session is gone."""
        if not await self.send(self.current.dialect.append(base64.b64encode(data).decode())):
            return False
        sent = clock.now()
        self.uplink_latency.extend(sent - t for t in arrived)
        return True

    def log_latency(self, playout: PlayoutBuffer) -> None:
        """The call's daemon-added latency each way (ms), for metrics and the bench."""
        log.info(
            "agent.latency",
            call_id=self.call_key,
            uplink_p50_ms=_percentile_ms(self.uplink_latency, 50),
            uplink_p99_ms=_percentile_ms(self.uplink_latency, 99),
            downlink_p50_ms=_percentile_ms(playout.latencies, 50),
            downlink_p99_ms=_percentile_ms(playout.latencies, 99),
            uplink_frames=len(self.uplink_latency),
            underruns=playout.stats().underruns,
        )

    def message(self, action: ce.Action) -> Json | None:
        """The client event an action of the conversation sends, if it is one."""
        dialect = self.current.dialect
        if isinstance(action, ce.Cancel):
            return dialect.cancel()
        if isinstance(action, ce.Truncate):
            return dialect.truncate(action.item, action.ms)
        if isinstance(action, ce.SendText):
            return dialect.user_text(action.text)
        if isinstance(action, ce.CreateResponse):
            return dialect.respond(action.instructions)
        if isinstance(action, ce.FunctionOutput):
            return dialect.function_output(action.call_id, json.dumps(action.output))
        return None

    async def replace(self, replay: tuple[ce.Turn, ...], failover: bool = False) -> ce.Event:
        """A new session with the conversation so far replayed as text; then swap.
        ``failover``: on the fallback, from now on."""
        prepared = await self.prepare(replay, failover)
        if isinstance(prepared, ce.ReplaceFailed):
            return prepared
        return await self.swap(prepared)

    async def prepare(
        self, replay: tuple[ce.Turn, ...], failover: bool = False
    ) -> Prepared | ce.ReplaceFailed:
        """Open a new session and replay the conversation so far into it as text, without
        swapping: the current one still gets what is sent (so caller audio sent meanwhile is
        not counted in the new session's input). ``failover``: on the fallback, from now on.
        The new session is closed if this fails or is cancelled."""
        if failover and self.fallback is not None:
            self.endpoint = self.fallback
        new = RealtimeSession(self.endpoint, session_config(self.agent, self.kind))
        dialect = new.dialect
        try:
            reported = await new.open(self.agent.connect_timeout_seconds)
            for turn in replay:
                item = dialect.user_text if turn.role == "caller" else dialect.assistant_text
                await new.send(item(turn.text))
        except RealtimeError as exc:
            await new.close()
            return ce.ReplaceFailed(exc.kind, exc.retryable, str(exc))
        except BaseException:  # the call ended meanwhile: nothing outlives it
            await new.close()
            raise
        return Prepared(new, reported.output_format)

    async def swap(self, prepared: Prepared) -> ce.SessionReplaced:
        """Make a prepared session the current one; the old one is closed."""
        old, self.current = self.current, prepared.session
        await old.close()
        return ce.SessionReplaced(prepared.output_format)


@dataclass(frozen=True)
class Prepared:
    """A new session opened and replayed into, not current yet (:meth:`CallSession.swap`)."""

    session: RealtimeSession
    output_format: AudioFormat | None


def _percentile_ms(seconds: Iterable[float], q: float) -> float | None:
    values = list(seconds)
    return round(float(np.percentile(values, q)) * 1000, 2) if values else None
