"""The SIP thread: the only thread that touches pjsua2.

:class:`SipThread` creates the pjsua2 endpoint with ``threadCnt = 0`` and
``mainThreadOnly = True`` and runs ``libHandleEvents(10 ms)`` in a loop that also runs
commands submitted from other threads (:meth:`SipThread.submit` returns a
``concurrent.futures.Future``) and due timers (registration's). pjsua2 callbacks run
inside ``libHandleEvents`` on this thread and report through ``emit`` (which hands events to
the event loop with ``call_soon_threadsafe``). Strong references to every account, call and
audio port live here; a call's are dropped when it is disconnected, everything is destroyed
in order before ``libDestroy``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import gc
import heapq
import ipaddress
import itertools
import logging
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pjsua2 as pj

from config.schema import SipSettings, Transport
from daemon import __version__
from daemon.legs.leg import LegError
from daemon.logs import get_logger
from sip.admission import (
    LOOPBACK,
    Admission,
    RefusalReport,
    getaddrinfo_resolver,
    host_of,
    resolve,
)
from sip.audio_port import CallAudio, CallAudioPort, port_format
from sip.events import (
    CallAnswered,
    CallEnded,
    CallRinging,
    DtmfReceived,
    IncomingCall,
    MediaStats,
    RegistrationChanged,
    SipEvent,
    TransferProgress,
)
from sip.inbound_filter import InboundFilter, report_refusal
from sip.registration import Actions, Registration
from sip.rtp_guard import LATCH_POLL_SECONDS, MediaGuard

log = get_logger(__name__)
Emit = Callable[[SipEvent], None]
# Asked on the SIP thread before an inbound call is taken: may this worker have the call with
# this SIP Call-ID? (Forked INVITEs reach every worker; one wins.) Must answer within ~0.5 s.
Claim = Callable[[str], bool]
LOOP_MS = 10
_KEEP_CODECS = {8000: ("PCMU/8000", "PCMA/8000"), 16000: ("G722/16000", "PCMU/8000", "PCMA/8000")}


# pjsua is a per-process singleton: a second endpoint in one process aborts it.
_endpoint_in_use = threading.Lock()


class SipError(LegError):
    """A SIP operation was refused (too many calls, bad target, unknown call...)."""


class NoFreeSlot(SipError):
    """No pjsua call slot is free now; one frees when a call ends and pjsua has torn it down."""


class SlotInTeardown(NoFreeSlot):
    """pjsua has no free call slot yet although this worker holds fewer calls than its limit.

    pjsua reports a hung-up call DISCONNECTED at once but keeps its slot until the INVITE
    transaction ends: the far end's 487 to our CANCEL, or pjsip's timers when it never
    answers (about 30 s behind a proxy whose branch went silent, 32 s with no reply at all).
    """


PJ_ETOOMANY = 70010
# pjsua's own count of call slots in use, calls being torn down included (pjsua2 has no
# binding for it; the C function is exported by the same library).
_pjsua_call_get_count = ctypes.CDLL(pj._pjsua2.__file__).pjsua_call_get_count
_pjsua_call_get_count.restype = ctypes.c_uint
_pjsua_call_get_count.argtypes = []
# Ends a transaction at once (pjsua2 has no binding for it).
_pjsip_tsx_terminate = ctypes.CDLL(pj._pjsua2.__file__).pjsip_tsx_terminate
_pjsip_tsx_terminate.restype = ctypes.c_int
_pjsip_tsx_terminate.argtypes = [ctypes.c_void_p, ctypes.c_int]
# After our 200 OK went unACKed for 64 x T1 (32 s), pjsip sends BYE and keeps the call slot
# until that BYE is answered or times out (another 32 s): a peer that never ACKs, never
# answers a BYE either. The BYE gets this long (two retransmissions) before it is ended.
UNACKED_BYE_SECONDS = 1.0


@dataclass
class _Timer:
    due: float
    seq: int
    action: Callable[[], None] = field(compare=False)

    def __lt__(self, other: _Timer) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


class SipThread:
    def __init__(
        self, settings: SipSettings, index: int, emit: Emit, claim: Claim | None = None
    ) -> None:
        self.settings = settings
        self.index = index
        self.emit = emit
        self.claim = claim
        self.port = settings.port + index
        self.domain = settings.domain or _registrar_host(settings) or settings.bind
        self._commands: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._timers: list[_Timer] = []  # SIP thread only
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._run, name=f"sip-{index}", daemon=True)
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopping = False
        self.endpoint: Any = None
        self.account: SipAccount | None = None
        self.calls: dict[str, SipCall] = {}  # SIP thread only
        # Calls refused from onIncomingCall, kept alive until DISCONNECTED: pjsua sends that
        # answer after the callback returns, and a Call destroyed before then hangs up with
        # 603 Decline, which makes a forking proxy end every branch (SIP thread only).
        self.refused: dict[str, SipCall] = {}
        # Audio ports live as long as the endpoint: pjmedia 2.15 removes conference ports
        # asynchronously, so a port destroyed mid-run may still be called by the clock thread.
        # Each call borrows one and swaps its CallAudio in (SIP thread only).
        self.ports: list[CallAudioPort] = []
        self.free_ports: list[CallAudioPort] = []
        self.idle_audio = CallAudio(settings.clock_rate)
        self._call_ids = itertools.count(1)
        self._log_writer = PjLogWriter()  # referenced for as long as pjsua2 may log
        # INVITE admission (SIP thread only; its allow list is replaced whole when the
        # registrar's and proxy's names are resolved again).
        self.admission = Admission(
            settings.username, (), settings.invite_rate, settings.invite_burst
        )
        self._resolving = False  # a resolution of the allow list is under way (SIP thread)
        self.filtered = False  # the pjsip module refuses INVITEs, before any call slot
        self.refusal_report = RefusalReport()  # refusals from onIncomingCall (SIP thread)

    # -- other threads ---------------------------------------------------------------------

    def start(self) -> concurrent.futures.Future[None]:
        if not _endpoint_in_use.acquire(blocking=False):
            raise SipError("a SIP endpoint already runs in this process (one per worker process)")
        self._thread.start()
        return self._started

    def submit(self, action: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``action`` on the SIP thread; its result or exception lands in the future."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(action())
            except BaseException as exc:
                future.set_exception(exc)

        self._commands.put(run)
        return future

    def stop(self) -> None:
        """Ask the thread to shut pjsua2 down in order and exit; then join it."""
        self._commands.put(None)
        self._thread.join(timeout=15)
        if not self._thread.is_alive():
            _endpoint_in_use.release()

    # -- the SIP thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._init()
        except BaseException as exc:  # reported to start()'s caller
            if isinstance(exc, pj.Error):
                exc = SipError(
                    f"SIP start failed on {self.settings.bind}:{self.port}: {exc.reason} "
                    f"(in {exc.title})"
                )
            self._destroy()
            _endpoint_in_use.release()
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        while True:
            self.endpoint.libHandleEvents(LOOP_MS)
            if not self._drain_commands():
                break
            self._run_timers()
        self._shutdown()

    def _drain_commands(self) -> bool:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            if command is None:
                return False
            command()

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0].due <= now:
            heapq.heappop(self._timers).action()

    def later(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._timers, _Timer(time.monotonic() + delay, next(self._seq), action))

    def _init(self) -> None:
        s = self.settings
        ep = pj.Endpoint()
        with _stdout_to_stderr():
            # pjlib prints its start-up lines to stdout before any log setting applies;
            # stdout carries the daemon's JSON log lines.
            ep.libCreate()
        self.endpoint = ep
        config = pj.EpConfig()
        config.uaConfig.threadCnt = 0
        config.uaConfig.mainThreadOnly = True
        config.uaConfig.maxCalls = s.max_calls
        config.uaConfig.userAgent = f"sipai/{__version__}"
        config.medConfig.clockRate = s.clock_rate
        config.medConfig.sndClockRate = s.clock_rate
        config.medConfig.jbMax = s.jitter_buffer_max_ms
        config.medConfig.ecTailLen = 0
        config.medConfig.noVad = True
        config.medConfig.ptime = 20
        config.logConfig.level = 3
        config.logConfig.consoleLevel = 3
        config.logConfig.decor = pj.PJ_LOG_HAS_SENDER
        config.logConfig.writer = self._log_writer
        ep.libInit(config)
        transport = pj.TransportConfig()
        transport.boundAddress = s.bind
        transport.port = self.port
        kind = pj.PJSIP_TRANSPORT_TCP if s.transport is Transport.TCP else pj.PJSIP_TRANSPORT_UDP
        ep.transportCreate(kind, transport)
        ep.audDevManager().setNullDev()
        keep = _KEEP_CODECS[s.clock_rate]
        for codec in ep.codecEnum2():
            ranks = [rank for rank, name in enumerate(keep) if codec.codecId.startswith(name)]
            ep.codecSetPriority(codec.codecId, 255 - ranks[0] if ranks else 0)
        ep.libStart()
        for number in range(s.max_calls):
            port = CallAudioPort(self.idle_audio)
            port.createPort(f"call-port-{number}", port_format(s.clock_rate))
            self.ports.append(port)
        self.free_ports = list(self.ports)
        self._set_allow_from(*self._allow_from(getaddrinfo_resolver))
        self._filter = InboundFilter(pj._pjsua2.__file__, self.admission, time.monotonic)
        self.filtered = self._filter.install(
            ep.libHandleEvents, s.bind, self.port, s.transport is Transport.TCP
        )
        if not self.filtered:  # refused from onIncomingCall instead: a slot each, briefly
            log.error("sip.inbound_filter_unavailable", worker=self.index)
        self.account = SipAccount(self)
        self.account.create(self._account_config())
        if not s.direct_mode:
            self.account.start_registration()

    def _allow_hosts(self) -> list[str]:
        s = self.settings
        return [h for h in (host_of(s.registrar), host_of(s.proxy)) if h]

    def _allow_from(self, resolver: Callable[[str], list[str]]) -> tuple[Any, list[str]]:
        """The allow list's networks and any names that did not resolve (any thread)."""
        s = self.settings
        if s.allow_from:
            return tuple(ipaddress.ip_network(a, strict=False) for a in s.allow_from), []
        if s.direct_mode:
            return LOOPBACK, []
        return resolve(self._allow_hosts(), resolver)

    def _set_allow_from(self, networks: tuple[Any, ...], errors: list[str]) -> None:
        for error in errors:
            log.error("sip.allow_from_unresolved", worker=self.index, error=error)
        if networks or not self.admission.allow_from:
            self.admission.allow_from = networks
        log.info("sip.allow_from", worker=self.index, networks=[str(n) for n in networks] or None)

    def refresh_allow_from(self) -> None:
        """Resolve the registrar's and proxy's names again, off this thread (SIP thread)."""
        s = self.settings
        if s.allow_from or s.direct_mode or self._resolving:
            return
        hosts = self._allow_hosts()
        if all(_is_ip(h) for h in hosts):
            return
        self._resolving = True

        def work() -> None:
            result = self._allow_from(getaddrinfo_resolver)

            def apply() -> None:
                self._resolving = False
                if result[0] != self.admission.allow_from or result[1]:
                    self._set_allow_from(*result)

            self._commands.put(apply)

        threading.Thread(target=work, name=f"sip-{self.index}-resolve", daemon=True).start()

    def _account_config(self) -> Any:
        s = self.settings
        config = pj.AccountConfig()
        config.idUri = f"sip:{s.username}@{self.domain}"
        if not s.direct_mode:
            config.regConfig.registrarUri = s.registrar
            config.regConfig.timeoutSec = s.register_expires
            # Retries and keep-alives are ours (sip.registration), never stop.
            config.regConfig.retryIntervalSec = 0
            config.regConfig.registerOnAdd = False
            route = s.proxy or s.registrar
            config.sipConfig.proxies.append(f"{route};lr")
            password = s.password.get_secret_value()
            config.sipConfig.authCreds.append(
                pj.AuthCredInfo("digest", "*", s.username, 0, password)
            )
        ports_per_worker = (s.rtp_port_max - s.rtp_port_min + 1) // s.workers
        media = config.mediaConfig.transportConfig
        media.port = s.rtp_port_min + self.index * ports_per_worker
        media.portRange = ports_per_worker - 1
        media.boundAddress = s.bind
        return config

    def _shutdown(self) -> None:
        self._stopping = True
        if self.calls:
            self.endpoint.hangupAllCalls()
            deadline = time.monotonic() + 2.0
            while self.calls and time.monotonic() < deadline:
                self.endpoint.libHandleEvents(LOOP_MS)
        account = self.account
        if account is not None and not self.settings.direct_mode:
            self._unregister(account)
        del account  # every pjsua2 object must be gone before libDestroy
        self._destroy()

    def _unregister(self, account: SipAccount) -> None:
        """Send REGISTER with expires 0, waiting out a refresh still in flight; bounded."""
        deadline = time.monotonic() + 3.0
        sent = False
        while time.monotonic() < deadline:
            try:
                if not account.getInfo().regIsActive:
                    return
                if not sent:
                    account.setRegistration(False)
                    sent = True
            except pj.Error:
                pass  # PJSIP_EBUSY: a REGISTER transaction is still running; try again
            self.endpoint.libHandleEvents(LOOP_MS * 5)

    def _destroy(self) -> None:
        self._timers.clear()  # they hold the account: nothing pjsua2 may outlive libDestroy
        for call in [*self.calls.values(), *self.refused.values()]:
            call.release()
        self.calls.clear()
        self.refused.clear()
        if self.account is not None:
            self.account.shutdown()
            self.account.owner = None
            self.account = None
        if self.endpoint is not None and self.ports:
            # Stop the bridge's clock first: no port callback may run while ports go away.
            self.endpoint.audDevManager().setNoDev()
        self.free_ports.clear()
        self.ports.clear()
        # Objects caught in reference cycles would otherwise be destroyed later by the garbage
        # collector, on another thread and after libDestroy, which aborts the process.
        gc.collect()
        if self.endpoint is not None:
            self.endpoint.libDestroy()
            self.endpoint = None

    # -- call commands (SIP thread) --------------------------------------------------------

    def new_call_id(self) -> str:
        return f"w{self.index}-{next(self._call_ids)}"

    def pjsua_calls(self) -> int:
        """Call slots pjsua holds: live calls plus hung-up ones it is still tearing down."""
        return int(_pjsua_call_get_count())

    def make_call(self, uri: str) -> str:
        """Dial ``uri``; :class:`NoFreeSlot` when every call slot is taken (nothing sent)."""
        if self.account is None:
            raise SipError("the SIP endpoint is not running")
        if len(self.calls) >= self.settings.max_calls:
            raise NoFreeSlot(
                f"this worker already holds {len(self.calls)} calls (sip.max_calls = "
                f"{self.settings.max_calls})"
            )
        if self.pjsua_calls() >= self.settings.max_calls:  # checked first: pjsua logs a refusal
            raise SlotInTeardown(
                f"cannot call {uri} yet: {self.pjsua_calls() - len(self.calls)} call slots "
                "are still being torn down"
            )
        call = SipCall(self, self.account)
        try:
            call.makeCall(uri, pj.CallOpParam(True))
        except pj.Error as exc:
            call.release()
            if exc.status == PJ_ETOOMANY:
                raise SlotInTeardown(f"cannot call {uri} yet: {exc.info()}") from None
            raise SipError(f"cannot call {uri}: {exc.info()}") from None
        self.calls[call.key] = call
        return call.key

    def call(self, key: str) -> SipCall:
        try:
            return self.calls[key]
        except KeyError:
            raise SipError(f"no call {key!r} on this worker") from None


class PjLogWriter(pj.LogWriter):  # type: ignore[misc]
    """pjsip's log lines as ``pjsip`` log records (errors and warnings at their level)."""

    _LEVELS: ClassVar[dict[int, int]] = {
        0: logging.ERROR,
        1: logging.ERROR,
        2: logging.WARNING,
        3: logging.DEBUG,
    }

    def write(self, entry: Any) -> None:  # any pjsip thread
        logging.getLogger("pjsip").log(
            self._LEVELS.get(int(entry.level), logging.DEBUG), str(entry.msg).strip()
        )


class SipAccount(pj.Account):  # type: ignore[misc]
    """The extension's account: carries out :class:`Registration`'s decisions (SIP thread)."""

    def __init__(self, owner: SipThread) -> None:
        super().__init__()
        self.owner: Any = owner
        self.registration = Registration(keepalive=owner.settings.register_keepalive)

    def start_registration(self) -> None:
        self._carry_out(self.registration.start())

    def onRegState(self, prm: Any) -> None:
        owner = self.owner
        code, reason = int(prm.code), str(prm.reason)
        if owner._stopping:
            self.registration.stop()
            owner.emit(RegistrationChanged(False, code, reason))
            return
        bound = bool(self.getInfo().regIsActive)
        self._carry_out(self.registration.on_response(code, reason, bound))

    def _on_timer(self, token: int) -> None:
        if not self.owner._stopping:
            self._carry_out(self.registration.on_timer(token))

    def _carry_out(self, actions: Actions) -> None:
        if actions.send:
            self.owner.refresh_allow_from()
            try:
                self.setRegistration(True)
            except pj.Error as exc:
                actions = self.registration.on_send_failed(exc.info())
        if actions.timer is not None:
            token = actions.timer.token
            self.owner.later(actions.timer.delay, lambda: self._on_timer(token))
        if actions.report:
            status = self.registration.status
            self.owner.emit(
                RegistrationChanged(
                    status.registered,
                    status.code,
                    status.reason,
                    retry_in=status.retry_in,
                    error=status.error,
                )
            )

    def onIncomingCall(self, prm: Any) -> None:
        owner = self.owner
        call = SipCall(owner, self, prm.callId)
        # Normally refused earlier (sip.inbound_filter); here pjsua has spent a slot and RTP
        # sockets on the INVITE already, and frees them when this callback returns.
        source, message = str(prm.rdata.srcAddress), str(prm.rdata.wholeMsg)
        if owner.filtered:  # screened already; this catches what the module could not read
            refusal = owner.admission.backstop(source, message)
        else:
            refusal = owner.admission.decide(source, message, time.monotonic())
        if refusal is not None:
            report_refusal(owner.refusal_report, refusal, source, time.monotonic())
            owner.refused[call.key] = call
            call.refused = True
            headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else {}
            call.respond(refusal.code, headers)
            return
        info = call.getInfo()
        # Decide now, on this thread: a forked copy we lose must give its pjsua call slot
        # back before the next INVITE of a burst is processed (PJSUA_MAX_CALLS is 4).
        full = len(owner.calls) >= owner.settings.max_calls
        if full or (owner.claim is not None and not owner.claim(info.callIdString)):
            owner.refused[call.key] = call
            call.refused = True
            call.respond(486)
            return
        owner.calls[call.key] = call
        call.respond(180)
        owner.emit(
            IncomingCall(
                call=call.key,
                sip_call_id=info.callIdString,
                remote_uri=info.remoteUri,
                display_name=_display_name(info.remoteUri),
                from_user=_user_of(info.remoteUri),
                headers=_headers(prm.rdata.wholeMsg),
            )
        )


class SipCall(pj.Call):  # type: ignore[misc]
    def __init__(self, owner: SipThread, account: SipAccount, call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.owner = owner
        self.key = owner.new_call_id()
        self.audio = CallAudio(owner.settings.clock_rate)
        self.port: CallAudioPort | None = None
        self.media: Any = None
        self.answered = False
        self.local_cause = ""
        self.stats: MediaStats | None = None
        self.ended = False
        self.refused = False  # answered 486 in onIncomingCall: no events, no audio
        self.responded = False  # any SIP response to our INVITE arrived (100 Trying counts)
        self.guard = MediaGuard(owner.settings.rtp_latching)  # SIP thread only
        # pjsip's BYE for a 200 OK never ACKed, while that BYE transaction is alive (SIP thread)
        self.unacked_bye: int | None = None
        self.inbound = call_id != pj.PJSUA_INVALID_ID

    def respond(self, code: int, headers: dict[str, str] | None = None) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = code
        for name, value in (headers or {}).items():
            header = pj.SipHeader()
            header.hName = name
            header.hValue = value
            prm.txOption.headers.append(header)
        self.answer(prm)

    def end(self, cause: str, code: int = 0) -> None:
        """Hang up (BYE, CANCEL or a final reply, as the state requires); idempotent."""
        if self.ended:
            return
        self.local_cause = self.local_cause or cause
        prm = pj.CallOpParam()
        if code:
            prm.statusCode = code
        # Already terminated (a race with the remote BYE): the DISCONNECTED callback reports it.
        with contextlib.suppress(pj.Error):
            self.hangup(prm)

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        state = info.state
        if state == pj.PJSIP_INV_STATE_EARLY and info.lastStatusCode in (180, 183):
            if info.role == pj.PJSIP_ROLE_UAC:
                self.owner.emit(CallRinging(self.key, int(info.lastStatusCode)))
        elif state == pj.PJSIP_INV_STATE_CONFIRMED and not self.answered:
            self.answered = True
            self.owner.emit(CallAnswered(self.key))
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED and self.refused:
            self.ended = True
            self.owner.refused.pop(self.key, None)
            self.release()
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.ended:
            self.ended = True
            self.audio.closed = True
            code = int(info.lastStatusCode)
            self.owner.emit(
                CallEnded(
                    call=self.key,
                    code=code,
                    reason=str(info.lastReason),
                    local_cause=self.local_cause,
                    answered=self.answered,
                    stats=self.stats,
                )
            )
            self.owner.calls.pop(self.key, None)
            self.release()

    def onCallTsxState(self, prm: Any) -> None:
        event = prm.e
        if event.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        if not self.responded:
            self.responded = event.body.tsxState.type == pj.PJSIP_EVENT_RX_MSG
        tsx = event.body.tsxState.tsx
        if tsx.method != "BYE" or tsx.role != pj.PJSIP_ROLE_UAC:
            return
        pointer = int(tsx.pjTransaction)
        if tsx.state == pj.PJSIP_TSX_STATE_CALLING and self.inbound and not self.answered:
            # pjsip's own BYE before any ACK: our 200 OK went unanswered for 32 s.
            self.unacked_bye = pointer
            self.owner.later(UNACKED_BYE_SECONDS, self._end_unacked_bye)
        elif pointer == self.unacked_bye and tsx.state >= pj.PJSIP_TSX_STATE_COMPLETED:
            self.unacked_bye = None  # answered (or gone): never touched again

    def _end_unacked_bye(self) -> None:
        """Still no answer to the BYE: end its transaction, the call and its slot now."""
        pointer, self.unacked_bye = self.unacked_bye, None
        if pointer is not None and not self.ended:
            _pjsip_tsx_terminate(pointer, 408)

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if media.status not in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                continue
            audio_media = self.getAudioMedia(index)
            if self.port is not None and self.media is not None:
                if self.media.getPortId() == audio_media.getPortId():
                    return  # re-INVITE, hold or unhold: already bridged, never twice
                with contextlib.suppress(pj.Error):
                    self.media.stopTransmit(self.port)
                    self.port.stopTransmit(self.media)
            if self.port is None:
                if not self.owner.free_ports:
                    return  # cannot happen: one port per call slot
                self.port = self.owner.free_ports.pop()
                self.port.audio = self.audio
            self.media = audio_media
            audio_media.startTransmit(self.port)
            self.port.startTransmit(audio_media)
            return

    def onStreamPreCreate(self, prm: Any) -> None:
        """Before pjmedia's stream is attached to the call's sockets (a new call, or a
        re-INVITE that changed the media): admit RTP and RTCP only from the peer the SDP
        negotiated (sip.rtp_guard)."""
        info, index = prm.streamInfo, int(prm.streamIdx)
        if info.type != pj.PJMEDIA_TYPE_AUDIO:
            return
        try:
            transport = self.getMedTransportInfo(index)
            local_rtp, local_rtcp = transport.localRtpName, transport.localRtcpName
        except pj.Error:
            local_rtp = local_rtcp = ""  # reported by the guard: it has nothing to filter
        if self.guard.update(
            local_rtp,
            local_rtcp,
            info.remoteRtpAddress,
            info.remoteRtcpAddress,
            time.monotonic(),
        ):
            latch = self.guard.latch
            self.owner.later(LATCH_POLL_SECONDS, lambda: self._check_latch(index, latch))

    def _check_latch(self, index: int, latch: object) -> None:
        if self.ended or self.guard.latch is not latch:
            return  # the call ended or its media restarted with a new latch
        now = time.monotonic()
        try:
            received = int(self.getStreamStat(index).rtcp.rxStat.pkt)
            transport = self.getMedTransportInfo(index)
            sources = (transport.srcRtpName, transport.srcRtcpName)
        except pj.Error:  # no stream to ask: lock to the signalled peer at once
            received, sources, now = 0, ("", ""), float("inf")
        if self.guard.check(received, *sources, now):
            self.owner.later(LATCH_POLL_SECONDS, lambda: self._check_latch(index, latch))

    def onStreamDestroyed(self, prm: Any) -> None:
        try:
            stat = self.getStreamStat(prm.streamIdx)
            rx, tx = stat.rtcp.rxStat, stat.rtcp.txStat
            self.stats = MediaStats(
                rx_packets=int(rx.pkt),
                rx_lost=int(rx.loss),
                rx_jitter_ms=float(rx.jitterUsec.mean) / 1000,
                tx_packets=int(tx.pkt),
                uplink_dropped_frames=self.audio.uplink_dropped,
                playout_underruns=self.audio.playout.stats().underruns,
            )
        except pj.Error:
            pass  # the stream is already gone: the call ends without RTP statistics

    def onDtmfDigit(self, prm: Any) -> None:
        method = "info" if getattr(prm, "method", 0) == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"
        self.owner.emit(DtmfReceived(self.key, str(prm.digit), method))

    def onCallTransferStatus(self, prm: Any) -> None:
        self.owner.emit(
            TransferProgress(self.key, int(prm.statusCode), str(prm.reason), bool(prm.finalNotify))
        )
        if prm.finalNotify:
            prm.cont = False

    def release(self) -> None:
        """Give the audio port back and drop references so nothing outlives the call.

        On DISCONNECTED pjsua has already removed the call's conference slot and with it the
        connections to the port, so there is nothing to disconnect here.
        """
        port, self.port = self.port, None
        if port is not None:
            port.audio = self.owner.idle_audio
            self.owner.free_ports.append(port)
        self.media = None
        self.audio.closed = True


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _registrar_host(settings: SipSettings) -> str:
    if not settings.registrar:
        return ""
    rest = settings.registrar.split(":", 1)[1]
    rest = rest.split(";", 1)[0].split("@")[-1]
    if rest.startswith("["):  # IPv6 reference
        return rest[: rest.index("]") + 1]
    return rest.split(":", 1)[0]


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _display_name(uri: str) -> str:
    uri = uri.strip()
    if uri.startswith('"'):
        return uri[1:].split('"', 1)[0]
    if "<" in uri:
        return uri.split("<", 1)[0].strip()
    return ""


def _user_of(uri: str) -> str:
    inner = uri.split("<", 1)[-1].split(">", 1)[0]
    after_scheme = inner.split(":", 1)[-1]
    return after_scheme.split("@", 1)[0] if "@" in after_scheme else ""


def _headers(message: str) -> dict[str, str]:
    """Header fields of a SIP message (first occurrence of each, names lower-cased)."""
    headers: dict[str, str] = {}
    for line in message.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() not in headers:
            headers[name.strip().lower()] = value.strip()
    return headers
