"""A SIP worker process: one pjsua2 endpoint, driven by the supervisor over IPC.

``python -m daemon.worker --socket PATH --index N`` connects to the supervisor's socket, asks
for its settings (``hello``; secrets never travel in argv or the environment), starts the SIP
worker and then:

- forwards every SIP event to the supervisor, and to the call flow that owns the event's call
  only (:class:`sip.call_events.CallEvents`);
- for an inbound call, asks the supervisor to claim its SIP Call-ID (the PBX forks one INVITE
  to every worker's contact) synchronously from the SIP thread, so a losing copy answers 486
  and frees its pjsua call slot at once; the winner runs :func:`daemon.worker.flows.inbound`;
- serves the supervisor's requests (:mod:`daemon.worker.handlers`);
- on ``shutdown``, SIGTERM or the supervisor's disappearance, finishes the recordings still
  open (:mod:`daemon.recording`), stops the endpoint in order and exits 0. SIGINT is
  ignored: a terminal's Ctrl-C reaches the supervisor, which drains.

What it asks of and tells the supervisor goes through
:class:`daemon.worker.services.WorkerServices`.
"""

from __future__ import annotations

import asyncio
import signal

from config.schema import (
    AgentSettings,
    ApiSettings,
    LogFormat,
    LogLevel,
    RealtimeSettings,
    RecordingsSettings,
    SipSettings,
)
from daemon.ipc.connection import Connection
from daemon.logs import configure_logging, get_logger
from daemon.worker import flows
from daemon.worker.handlers import WorkerHandlers
from daemon.worker.services import CLAIM_SECONDS, WorkerServices
from media.resample import design
from sip.call_events import CallEvents
from sip.events import IncomingCall
from sip.worker import SipWorker

log = get_logger("daemon.worker")


class WorkerProcess:
    def __init__(self, socket_path: str, index: int) -> None:
        self.socket_path = socket_path
        self.index = index
        self.context: flows.FlowContext | None = None  # once the settings are known
        self.services: WorkerServices | None = None
        self.stop = asyncio.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        self.loop = loop
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        conn = Connection(reader, writer, "supervisor", WorkerHandlers(self).table())
        reading = asyncio.create_task(conn.run())
        services = self.services = WorkerServices(conn, self.index)
        hello = await services.hello()
        configure_logging(LogLevel(hello["log_level"]), LogFormat(hello["log_format"]))
        sip_settings = SipSettings.model_validate(hello["sip"])
        # Resampler designs cost 25-100 ms each: made now, they never stall a call's loop.
        rate = sip_settings.clock_rate
        await asyncio.to_thread(lambda: [design(a, b) for a, b in ((rate, 24000), (24000, rate))])
        worker = SipWorker(sip_settings, self.index, self._claim_from_sip_thread)
        self.context = flows.FlowContext(
            index=self.index,
            worker=worker,
            calls=CallEvents(),
            services=services,
            policy=flows.load_policy(hello.get("inbound_policy")),
            agent=AgentSettings.model_validate(hello["agent"]),
            api=ApiSettings.model_validate(hello["api"]),
            realtime=RealtimeSettings.model_validate(hello["realtime"]),
            recordings=RecordingsSettings.model_validate(hello["recordings"]),
        )
        await worker.start()
        forwarding = asyncio.create_task(self._forward(self.context))
        await services.ready(worker.contact)
        closed = asyncio.create_task(conn.closed.wait())
        stopping = asyncio.create_task(self.stop.wait())
        await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if closed.done() and not self.stop.is_set():
            log.warning("worker.supervisor_gone", worker=self.index)
        await self.context.recorder.stop()  # its thread ends before the SIP stack does
        await worker.stop()
        for task in (forwarding, reading, closed, stopping, *self._tasks):
            task.cancel()
        await conn.aclose()
        return 0

    async def _forward(self, ctx: flows.FlowContext) -> None:
        async for event in ctx.worker.events():
            await ctx.services.sip_event(event)
            ctx.calls.route(event)
            if isinstance(event, IncomingCall):  # claimed now: none of its events is missed
                events = ctx.calls.claim(event.call)
                task = asyncio.create_task(flows.inbound(ctx, event, events))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    def _claim_from_sip_thread(self, sip_call_id: str) -> bool:  # SIP thread
        """Ask the supervisor, blocking the SIP thread for one IPC round trip (~1 ms)."""
        services, loop = self.services, self.loop
        if services is None or loop is None:
            return False
        future = asyncio.run_coroutine_threadsafe(services.claim(sip_call_id), loop)
        try:
            return future.result(timeout=CLAIM_SECONDS + 0.1)
        except Exception:
            future.cancel()
            return False
