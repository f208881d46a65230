"""A web worker process: the browser calls of the daemon, driven by the supervisor over IPC.

``python -m daemon.web --socket PATH --index N`` connects to the supervisor's socket (the
supervisor's :class:`daemon.web.pool.WebPool`), asks for its settings (``hello``; secrets never
travel in argv or the environment), makes the resampler designs its calls use, starts a
:class:`daemon.web.host.WebHost` and reports ``ready``. Then it answers browsers' offers
(:mod:`daemon.web.handlers`) and reports each call as a SIP worker does (``inbound_call``,
``transcript``, ``agent_failed``, ``inbound_done``), asking the supervisor for speech synthesis
and recognition. On ``shutdown``, SIGTERM or the supervisor's disappearance it hangs up its
calls, finishes the recordings still open and exits 0. SIGINT is ignored: a terminal's Ctrl-C
reaches the supervisor, which drains.

The process imports aiortc (the SIP workers never do): the browser calls' ICE, DTLS, SRTP and
Opus run on this process's loop and threads, so their GIL time never lands on a SIP call's
media clock or on the supervisor's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal

from config.schema import (
    AgentSettings,
    ApiSettings,
    LogFormat,
    LogLevel,
    RealtimeSettings,
    RecordingsSettings,
    WebSettings,
)
from daemon.ipc import messages as msg
from daemon.ipc.connection import Connection, IpcError
from daemon.legs.webrtc import use_consent, use_ice_addresses
from daemon.logs import configure_logging, get_logger
from daemon.web.engine_relay import EngineCalls, engine_endpoint
from daemon.web.flows import WebContext
from daemon.web.handlers import WebHandlers
from daemon.web.host import WebHost
from daemon.worker.services import WorkerServices
from media.opus_frames import prepare
from media.resample import design

log = get_logger("daemon.web")

MODEL_RATES = (8000, 24000)  # mu-law and PCM: a leg's rate and its model's may differ


def _designs() -> None:
    """The resampler filters of every browser call: Opus's 48 kHz <-> the leg rates, and the
    leg rates <-> the model's."""
    prepare()
    for a, b in itertools.permutations(MODEL_RATES, 2):
        design(a, b)


class WebWorkerProcess:
    def __init__(self, socket_path: str, index: int) -> None:
        self.socket_path = socket_path
        self.index = index
        self.host: WebHost | None = None  # once the settings are known
        self.services: WorkerServices | None = None
        self.stop = asyncio.Event()
        self._telling: set[asyncio.Task[None]] = set()

    def _tell_ended(self, conn: Connection, key: str) -> None:
        """Tell the supervisor that the call ``key`` is over (its pool forgets it)."""

        async def tell() -> None:
            with contextlib.suppress(IpcError):  # the supervisor is gone: nobody to tell
                await conn.event(msg.WebCallEnded(call=key))

        task = asyncio.create_task(tell())
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop.set)
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        reader, writer = await asyncio.open_unix_connection(self.socket_path)
        conn = Connection(reader, writer, "supervisor", WebHandlers(self).table())
        reading = asyncio.create_task(conn.run())
        services = self.services = WorkerServices(conn, self.index)
        hello = await services.hello()
        configure_logging(LogLevel(hello["log_level"]), LogFormat(hello["log_format"]))
        # Resampler designs cost up to 1.5 s each here: made now, never on a call's answer.
        await asyncio.to_thread(_designs)
        context = WebContext(
            index=self.index,
            services=services,
            agent=AgentSettings.model_validate(hello["agent"]),
            api=ApiSettings.model_validate(hello["api"]),
            realtime=RealtimeSettings.model_validate(hello["realtime"]),
            recordings=RecordingsSettings.model_validate(hello["recordings"]),
        )
        web = WebSettings.model_validate(hello["web"])
        use_ice_addresses(web.ice_addresses)
        use_consent(web.consent_seconds)
        host = self.host = WebHost(context, web)
        host.ended_listeners.append(lambda key: self._tell_ended(conn, key))
        host.modes["engine"] = EngineCalls(
            host, engine_endpoint(context.api), web.connect_timeout_seconds
        ).offer
        await services.ready(f"web-{self.index}")
        log.info("web.worker_ready", worker=self.index, max_calls=host.web.max_calls)
        closed = asyncio.create_task(conn.closed.wait())
        stopping = asyncio.create_task(self.stop.wait())
        await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if closed.done() and not self.stop.is_set():
            log.warning("web.supervisor_gone", worker=self.index)
        await host.stop()
        await context.recorder.stop()
        for task in (reading, closed, stopping):
            task.cancel()
        await conn.aclose()
        return 0
