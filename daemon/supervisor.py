"""The supervisor process's lifecycle: start in order, notify systemd, drain, stop.

Order of start: API, then SIP and the web workers side by side (once the API and SIP are up,
``READY=1``; a web worker that does not start is restarted in the background and never stops
the daemon), then the watchdog. On the first SIGTERM or SIGINT: ``STOPPING=1``, refuse new
work, give the drainable components up to ``daemon.drain_seconds`` to finish, stop the API
last (so ``/health`` answers during the drain), exit 0. A second signal during the drain exits
at once with 128 + the signal number.

Components that hold work (SIP workers, web workers, the outbound service, the console's event
streams) register a drain coroutine and a watchdog probe with :meth:`Supervisor.add_component`;
everything here runs on the loop thread except the watchdog's pinging thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from starlette.websockets import WebSocket

from api.app import ApiContext, HealthReport, create_app
from api.connections import ConnectionLimits
from api.ephemeral import EphemeralKeys
from api.server import ApiServer, ApiStartError
from api.spec import load_spec
from api.webhooks import Deliverer
from config import LoadedSettings
from config.schema import Backend, BrainKind, Fallback, SpeechBackend
from daemon import __version__
from daemon.call_feed import CallFeed
from daemon.calls.runner import PoolRunner
from daemon.engine.brains import Brain, ChatBrain, Receptionist
from daemon.engine.server import Engine
from daemon.engine.turns import TurnPolicy
from daemon.inbound_records import InboundRecords
from daemon.logs import get_logger
from daemon.metrics import Metrics, ObservedRunner
from daemon.outbound import CallRunner, OutboundService
from daemon.retention import Retention
from daemon.sdnotify import Notifier, Watchdog, watchdog_interval
from daemon.speech import SpeechError
from daemon.speech.backends import load_speech, load_turn_model
from daemon.speech.engine import EXECUTOR as SPEECH_EXECUTOR
from daemon.store import Store
from daemon.web.pool import WebPool
from daemon.workers import WorkerPool, WorkerStartError
from sip.events import CallEnded, RegistrationChanged, SipEvent

log = get_logger(__name__)

AsyncAction = Callable[[], Coroutine[Any, Any, None]]

# Time the API gets to finish open requests once the drain is over.
API_STOP_SECONDS = 2.0


async def _no_probe() -> None:
    return None


@dataclass(frozen=True)
class Component:
    """Something the supervisor drains on stop and probes for the watchdog."""

    name: str
    drain: AsyncAction
    probe: AsyncAction


class Supervisor:
    def __init__(
        self,
        loaded: LoadedSettings,
        notifier: Notifier | None = None,
        inbound_policy: str | None = None,
        runner: CallRunner | None = None,
    ) -> None:
        self._settings = settings = loaded.settings
        self._sip = WorkerPool(settings, inbound_policy, self._on_sip_event)
        self._engine: Engine | None = None
        self.store = Store(settings.storage.path)
        self._metrics = Metrics(
            self.health, self.store.status_counts, self.store.webhook_state_counts
        )
        self._deliverer = Deliverer(
            self.store,
            settings.webhooks.secret.get_secret_value(),
            settings.webhooks.timeout_seconds,
            settings.webhooks.retry_seconds,
            observer=self._metrics,
        )
        self._feed = CallFeed()
        self._records = InboundRecords(
            self.store,
            self._deliverer,
            settings.webhooks.inbound_url,
            observer=self._metrics,
            feed=self._feed,
        )
        self._sip.inbound_listeners.append(self._records.on_inbound)
        self._sip.inbound_listeners.append(self._metrics.on_inbound)
        # Browser calls: web worker processes, apart from the SIP workers (none: off).
        self._web = WebPool(settings) if settings.web.enabled and settings.web.workers else None
        if self._web is not None:
            self._web.inbound_listeners.append(self._records.on_inbound)
            self._web.inbound_listeners.append(self._metrics.on_inbound)
            self._web.call_listeners.append(self._records.on_sip_event)
        capacity = settings.sip.workers * settings.sip.max_calls
        self.outbound = OutboundService(
            self.store,
            ObservedRunner(runner, self._metrics) if runner is not None else None,
            settings.calls.max_concurrent or capacity,
            on_final=self._deliverer.wake,
            max_queued=settings.calls.max_queued,
            observer=self._metrics,
        )
        self.outbound.status_listeners.append(self._feed.outbound_status)
        self._retention = Retention(
            self.store,
            settings.storage.retention_days,
            settings.recordings.retention_days,
            directory=settings.recordings.directory,
        )
        self._store_open = False
        self._notifier = notifier if notifier is not None else Notifier.from_environ()
        self._components: list[Component] = []
        self._started_at = time.monotonic()
        self._stop_requested = asyncio.Event()  # set by the first stop signal
        self._api: ApiServer | None = None
        self._watchdog: Watchdog | None = None
        self._sip_started = False
        self._web_started = False

    def add_component(self, component: Component) -> None:
        self._components.append(component)

    @property
    def draining(self) -> bool:
        """True from the first stop signal on: new work is refused."""
        return self._stop_requested.is_set()

    def health(self) -> HealthReport:
        registration_needed = not self._settings.sip.direct_mode
        sip_registered = self._sip.registered
        # Every worker counts, from start-up on: a dead one (restarting) takes no calls.
        healthy = (
            not self.draining and self._sip.all_up and (sip_registered or not registration_needed)
        )
        return HealthReport(
            status="healthy" if healthy else "unhealthy",
            sip_registered=sip_registered,
            version=__version__,
            uptime_seconds=round(time.monotonic() - self._started_at, 3),
            active_calls=self._sip.active_calls,
            queued_calls=self.outbound.queued,
            workers=self._sip.summary(),
            registration_error=None if sip_registered else self._sip.registration_error,
            web=self._web.health() if self._web is not None else None,
        )

    async def metrics(self) -> str:
        """Prometheus text exposition (the families of :mod:`daemon.metrics`); asks the
        workers for their refused INVITEs, reads everything else from memory."""
        return self._metrics.exposition(await self._sip.refused_invites()).decode()

    def _on_sip_event(self, worker: int, event: SipEvent) -> None:
        self._records.on_sip_event(worker, event)
        if isinstance(event, RegistrationChanged):
            self._metrics.registration_changed(event)
        elif isinstance(event, CallEnded):
            log.info(
                "call.ended",
                call_id=event.call,
                worker=worker,
                sip_code=event.code,
                reason=event.reason,
                local_cause=event.local_cause or None,
                answered=event.answered,
                stats=dataclasses.asdict(event.stats) if event.stats is not None else None,
            )

    async def _serve_engine(self, websocket: WebSocket) -> None:
        if self._engine is None:
            await websocket.close(code=1013, reason="the realtime engine is not running")
            return
        await self._engine.serve(websocket)

    def _brain(self, caller: str) -> Brain:
        """The brain for one engine session; ``caller`` is "worker:call" if known."""
        engine = self._settings.engine
        if engine.brain is BrainKind.CHAT:
            return ChatBrain(
                engine.chat_url,
                engine.chat_model,
                engine.chat_api_key.get_secret_value(),
                engine.chat_timeout_seconds,
            )
        return Receptionist(engine.greeting, self._records.on_message(caller))

    def request_stop(self, signum: int | None = None) -> None:
        """First call starts the drain; a second signal exits the process at once."""
        if self.draining:
            if signum is not None:
                log.warning("daemon.forced_exit", signal=signal.Signals(signum).name)
                os._exit(128 + signum)
            return
        self._stop_requested.set()
        self._notifier.notify("STOPPING=1", "STATUS=draining")
        log.info(
            "daemon.stopping",
            signal=signal.Signals(signum).name if signum is not None else None,
            drain_seconds=self._settings.daemon.drain_seconds,
        )

    async def run(self) -> int:
        """Run until a stop signal; return the process exit status."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop, signum)
        try:
            try:
                await self._start()
            except (ApiStartError, WorkerStartError) as exc:
                log.error("daemon.start_failed", error=str(exc))
                return 1

            await self._stop_requested.wait()
            await self._drain()
            return 0
        finally:
            await self._shutdown()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)

    async def _start(self) -> None:
        api = self._settings.api
        try:
            await self.store.open()
            interrupted = await self._records.recover()  # with their inbound.ended webhooks
            if interrupted:
                log.warning("inbound.interrupted", calls=interrupted)
        except (OSError, RuntimeError) as exc:
            raise ApiStartError(f"storage.path {self._settings.storage.path}: {exc}") from None
        self._store_open = True
        if self.outbound.runner is None:  # no runner given: the pool's, once speech is loaded
            await self._load_speech()
        await self.outbound.recover()
        self._retention.start()
        context = ApiContext(
            health=self.health,
            store=self.store,
            outbound=self.outbound,
            tokens=api.named_tokens,
            max_body_bytes=api.max_body_bytes,
            rate_limit_per_minute=api.rate_limit_per_minute,
            draining=lambda: self.draining,
            metrics=self.metrics,
            spec=load_spec(),
            engine=self._serve_engine,
            web=self._web,
            feed=self._feed,
            keys=EphemeralKeys(),
            console=api.console,
            console_session_hours=api.console_session_hours,
        )
        limits = ConnectionLimits.of(api, self._settings.sip.workers)
        self._api = ApiServer(create_app(context), api.host, api.port, limits)
        await self._api.start()
        host, port = self._api.address
        log.info(
            "api.listening", host=host, port=port, max_connections=self._api.limits.max_connections
        )
        if not api.loopback_only and not api.named_tokens:
            log.warning(
                "api.unauthenticated",
                host=api.host,
                hint="set api.token: the API is reachable beyond this machine",
            )

        self._sip_started = True  # so that a partial start is stopped too
        if self._web is None:
            await self._sip.start()
        else:  # side by side; a web worker that is not ready is restarted, SIP serves anyway
            self._web_started = True
            web = asyncio.ensure_future(self._web.start())
            try:
                await self._sip.start()
            finally:
                await web  # started either way, so that stop finds it whole
        self.outbound.start()
        self._deliverer.start()
        self.add_component(Component("outbound", drain=self.outbound.drain, probe=_no_probe))
        self.add_component(Component("sip", drain=self._sip.drain, probe=self._sip.probe))
        if self._web is not None:
            self.add_component(Component("web", drain=self._web.drain, probe=_no_probe))
        self.add_component(Component("console feed", drain=self._drain_feed, probe=_no_probe))
        self._notifier.notify("READY=1", f"STATUS=serving the API on {host}:{port}")
        log.info("daemon.ready", startup_ms=round((time.monotonic() - self._started_at) * 1000))

        interval = watchdog_interval()
        if interval is not None and self._notifier.enabled:
            self._watchdog = Watchdog(
                self._notifier, interval, asyncio.get_running_loop(), self._probe
            )
            self._watchdog.start()
            log.info("watchdog.enabled", interval_seconds=interval)

    async def _load_speech(self) -> None:
        """Load the speech models once (blocking work, off the loop); they serve every worker."""
        speech = self._settings.speech
        started = time.monotonic()

        try:
            tts, stt = await asyncio.get_running_loop().run_in_executor(
                SPEECH_EXECUTOR, load_speech, speech
            )
            engine = self._settings.engine
            turn_model = await asyncio.get_running_loop().run_in_executor(
                SPEECH_EXECUTOR, load_turn_model, engine
            )
        except SpeechError as exc:
            raise ApiStartError(str(exc)) from None
        self._sip.transcriber = stt.transcribe
        self._sip.synthesizer = tts.synthesize
        if self._web is not None:
            self._web.transcriber = stt.transcribe
            self._web.synthesizer = tts.synthesize
        self.outbound.runner = ObservedRunner(PoolRunner(self._sip, tts), self._metrics)
        self._engine = Engine(
            tts,
            stt,
            self._brain,
            on_error=self._records.engine_error,
            turn_policy=TurnPolicy(turn_model, engine.turn_pause_ms, engine.turn_threshold),
        )
        log.info(
            "speech.loaded",
            backend=speech.backend.value,
            voice=tts.voice,
            load_ms=round((time.monotonic() - started) * 1000),
        )
        agent = self._settings.agent
        failover = agent.fallback is Fallback.LOCAL and agent.backend is not Backend.LOCAL
        if failover and speech.backend is not SpeechBackend.LOCAL:  # the engine's ears and voice
            log.warning(
                "agent.fallback_speech_remote",
                speech_backend=speech.backend.value,
                hint="calls fail over to an engine that hears and speaks through [speech]; "
                'backend = "local" there needs no network',
            )

    async def _drain_feed(self) -> None:
        """End the console's event streams, so none holds the API server open on stop."""
        self._feed.drain()

    async def _probe(self) -> None:
        """A round trip through the loop and through every component."""
        for component in self._components:
            await component.probe()

    async def _drain(self) -> None:
        bound = self._settings.daemon.drain_seconds
        started = time.monotonic()
        pending = {
            asyncio.create_task(c.drain(), name=f"drain-{c.name}"): c for c in self._components
        }
        if pending:
            done, not_done = await asyncio.wait(pending, timeout=bound)
            for task in not_done:
                task.cancel()
                log.warning("daemon.drain_timeout", component=pending[task].name)
            for task in done:
                if not task.cancelled() and task.exception() is not None:
                    log.error(
                        "daemon.drain_failed",
                        component=pending[task].name,
                        error=repr(task.exception()),
                    )
        log.info("daemon.drained", drain_ms=round((time.monotonic() - started) * 1000))

    async def _shutdown(self) -> None:
        if self._watchdog is not None:
            await asyncio.to_thread(self._watchdog.stop)
            self._watchdog = None
        await self.outbound.stop()
        stops = []
        if self._web is not None and self._web_started:
            stops.append(self._web.stop())  # hangs up the browser calls left after the drain
            self._web_started = False
        if self._sip_started:
            stops.append(self._sip.stop())
            self._sip_started = False
        await asyncio.gather(*stops)  # side by side: neither waits for the other's processes
        await self._deliverer.stop()
        await self._retention.stop()
        if self._api is not None:
            await self._api.stop(API_STOP_SECONDS)
            self._api = None
        if self._store_open:
            await self.store.close()
            self._store_open = False
        log.info("daemon.stopped")
