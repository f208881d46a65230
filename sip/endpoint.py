"""The pjsua2 endpoint of one SIP worker: what :class:`EndpointSetup` sets up and tears down.

``libCreate``/``libInit`` with ``threadCnt = 0`` and ``mainThreadOnly = True`` (pjsua2 runs
on the SIP thread only, :mod:`sip.thread`), the SIP transport, codec priorities, the null
sound device, one conference port per call slot (:class:`AudioPorts`), the source allow list
and the INVITE screen (:mod:`sip.admission`, :mod:`sip.inbound_filter`), and the account's
configuration. Everything here runs on the SIP thread once created, except where a method
says otherwise.
"""

from __future__ import annotations

import contextlib
import gc
import ipaddress
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import pjsua2 as pj

from config.schema import SipSettings, Transport
from daemon import __version__
from daemon.logs import get_logger
from sip import uri
from sip.admission import (
    LOOPBACK,
    Admission,
    Refusal,
    RefusalReport,
    getaddrinfo_resolver,
    host_of,
    resolve,
)
from sip.audio_port import CallAudio, CallAudioPort, port_format
from sip.inbound_filter import InboundFilter, report_refusal

log = get_logger(__name__)

_KEEP_CODECS = {8000: ("PCMU/8000", "PCMA/8000"), 16000: ("G722/16000", "PCMU/8000", "PCMA/8000")}
Post = Callable[[Callable[[], None]], None]  # runs an action on the SIP thread, from any thread


class AudioPorts:
    """One conference port per call slot, made at start and kept until the endpoint goes:
    pjmedia 2.15 removes conference ports asynchronously, so a port destroyed mid-run may
    still be called by the clock thread. Each call borrows one and swaps its CallAudio in;
    a free port carries ``idle`` (SIP thread only)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.idle = CallAudio(rate)
        self.all: list[CallAudioPort] = []
        self.free: list[CallAudioPort] = []

    def create(self, count: int) -> None:
        for number in range(count):
            port = CallAudioPort(self.idle)
            port.createPort(f"call-port-{number}", port_format(self.rate))
            self.all.append(port)
        self.free = list(self.all)

    def borrow(self) -> CallAudioPort | None:
        return self.free.pop() if self.free else None

    def give_back(self, port: CallAudioPort) -> None:
        port.audio = self.idle
        self.free.append(port)

    def clear(self) -> None:
        self.free.clear()
        self.all.clear()


class EndpointSetup:
    def __init__(self, settings: SipSettings, index: int) -> None:
        self.settings = settings
        self.index = index
        self.port = settings.port + index
        self.endpoint: Any = None
        self.ports = AudioPorts(settings.clock_rate)
        self._log_writer = PjLogWriter()  # referenced for as long as pjsua2 may log
        # INVITE admission (SIP thread only; its allow list is replaced whole when the
        # registrar's and proxy's names are resolved again).
        self.admission = Admission(
            settings.username, (), settings.invite_rate, settings.invite_burst
        )
        self._resolving = False  # a resolution of the allow list is under way (SIP thread)
        self.filtered = False  # the pjsip module refuses INVITEs, before any call slot
        self.refusal_report = RefusalReport()  # refusals from onIncomingCall (SIP thread)
        self._filter: InboundFilter | None = None

    def create(self) -> None:
        """Create, configure and start the endpoint, its ports and the INVITE screen."""
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
        self.ports.create(s.max_calls)
        self._set_allow_from(*self._allow_from(getaddrinfo_resolver))
        self._filter = InboundFilter(pj._pjsua2.__file__, self.admission, time.monotonic)
        self.filtered = self._filter.install(
            ep.libHandleEvents, s.bind, self.port, s.transport is Transport.TCP
        )
        if not self.filtered:  # refused from onIncomingCall instead: a slot each, briefly
            log.error("sip.inbound_filter_unavailable", worker=self.index)

    def admit(self, source: str, message: str) -> Refusal | None:
        """The admission decision for an INVITE that reached pjsua; refusals are reported."""
        if self.filtered:  # screened already; this catches what the module could not read
            refusal = self.admission.backstop(source, message)
        else:
            refusal = self.admission.decide(source, message, time.monotonic())
        if refusal is not None:
            report_refusal(self.refusal_report, refusal, source, time.monotonic())
        return refusal

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

    def refresh_allow_from(self, post: Post) -> None:
        """Resolve the registrar's and proxy's names again, off this thread; ``post`` brings
        the result back to the SIP thread."""
        s = self.settings
        if s.allow_from or s.direct_mode or self._resolving:
            return
        hosts = self._allow_hosts()
        if all(uri.is_ip(h) for h in hosts):
            return
        self._resolving = True

        def work() -> None:
            result = self._allow_from(getaddrinfo_resolver)

            def apply() -> None:
                self._resolving = False
                if result[0] != self.admission.allow_from or result[1]:
                    self._set_allow_from(*result)

            post(apply)

        threading.Thread(target=work, name=f"sip-{self.index}-resolve", daemon=True).start()

    def account_config(self, domain: str) -> Any:
        s = self.settings
        config = pj.AccountConfig()
        config.idUri = f"sip:{s.username}@{domain}"
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

    def destroy(self) -> None:
        """Ports, then ``libDestroy``; every call and the account must be gone already."""
        if self.endpoint is not None and self.ports.all:
            # Stop the bridge's clock first: no port callback may run while ports go away.
            self.endpoint.audDevManager().setNoDev()
        self.ports.clear()
        # Objects caught in reference cycles would otherwise be destroyed later by the garbage
        # collector, on another thread and after libDestroy, which aborts the process.
        gc.collect()
        if self.endpoint is not None:
            self.endpoint.libDestroy()
            self.endpoint = None


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
