"""A pjsip module that refuses unwanted INVITEs before pjsua sees them.

pjsua handles a new INVITE in ``pjsua_call_on_incoming``: it takes a call slot, creates the
call's RTP and RTCP sockets, sends 100 Trying, and only then calls ``onIncomingCall``. A
refusal from there is too late under a flood: pjlib's select ioqueue has 64 handles and keeps
each closed socket's handle for 500 ms, so 50 INVITEs refused from ``onIncomingCall`` in one
burst abort the process (``pj_ioqueue_register_sock2: Assertion `!pj_list_empty(...)'``,
measured with pjsua2-python 2.15.1). This module sits between pjsip's dialog layer and pjsua
(priority 40: retransmissions and in-dialog requests never reach it) and answers a refused
INVITE statelessly, with no slot, socket or transaction spent.

pjsua2 has no binding for modules, so it is registered through ctypes. ``pjsip_module`` has
had the same layout since pjsip 1.0. ``pjsip_rx_data`` is larger and its middle depends on
build options (``PJSIP_MAX_PKT_LEN``), so the offsets of the three fields read here (the
source address text, the message buffer and its length) are not assumed: they are found at
start-up from a probe request the worker sends itself, whose bytes and source are known,
and checked on every request afterwards. If they cannot be found, :meth:`InboundFilter.install`
returns False and the endpoint refuses from ``onIncomingCall`` instead.

Only the SIP thread calls into this module (pjsip runs it inside ``libHandleEvents``).
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from daemon.logs import get_logger
from sip.admission import Admission, Refusal, RefusalReport, request_line

log = get_logger(__name__)

PRIORITY = 40  # after the transaction (16) and dialog (32) layers, before pjsua (64)
_TOP_SEARCH = 4096  # where the packet buffer may start in pjsip_rx_data
_PKT_SEARCH = 70000  # how far past the packet buffer its message pointer may lie


class _PjStr(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_char_p), ("slen", ctypes.c_ssize_t)]


_RX_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)


class _PjsipModule(ctypes.Structure):
    _fields_ = [
        ("prev", ctypes.c_void_p),
        ("next", ctypes.c_void_p),
        ("name", _PjStr),
        ("id", ctypes.c_int),
        ("priority", ctypes.c_int),
        ("load", ctypes.c_void_p),
        ("start", ctypes.c_void_p),
        ("stop", ctypes.c_void_p),
        ("unload", ctypes.c_void_p),
        ("on_rx_request", _RX_CALLBACK),
        ("on_rx_response", ctypes.c_void_p),
        ("on_tx_request", ctypes.c_void_p),
        ("on_tx_response", ctypes.c_void_p),
        ("on_tsx_state", ctypes.c_void_p),
    ]


class _HdrHead(ctypes.Structure):
    """The list head of a ``pjsip_hdr`` list: only its links are read."""

    _fields_ = [("prev", ctypes.c_void_p), ("next", ctypes.c_void_p), ("rest", ctypes.c_byte * 64)]


@dataclass(frozen=True)
class Layout:
    """Offsets in ``pjsip_rx_data`` of what the filter reads."""

    src_name: int  # char[] text of the source IP
    msg_buf: int  # char* to the message
    msg_len: int  # int length of the message


class InboundFilter:
    def __init__(self, library: str, admission: Admission, clock: Callable[[], float]) -> None:
        self.admission = admission
        self.clock = clock
        self.report = RefusalReport()
        self.layout: Layout | None = None
        self._lib = ctypes.CDLL(library)
        self._lib.pjsua_get_pjsip_endpt.restype = ctypes.c_void_p
        self._lib.pjsip_endpt_register_module.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        self._lib.pjsip_endpt_respond_stateless.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib.pjsip_generic_string_hdr_create.restype = ctypes.c_void_p
        self._lib.pjsip_generic_string_hdr_create.argtypes = [
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._name = b"mod-sipai-inbound-filter"
        self._callback = _RX_CALLBACK(self._on_rx_request)  # kept: pjsip holds the pointer
        self._module = _PjsipModule()
        self._module.name = _PjStr(self._name, len(self._name))
        self._module.id = -1
        self._module.priority = PRIORITY
        self._module.on_rx_request = self._callback
        self._probe: tuple[bytes, str] | None = None  # the probe's bytes and source IP
        self._endpt: int | None = None

    def install(self, run_events: Callable[[int], None], bind: str, port: int, tcp: bool) -> bool:
        """Register the module and find the layout with a probe sent to ``bind:port``."""
        self._endpt = self._lib.pjsua_get_pjsip_endpt()
        status = self._lib.pjsip_endpt_register_module(self._endpt, ctypes.byref(self._module))
        if status != 0:
            return False
        address = ipaddress.ip_address(bind)
        if address.is_unspecified:  # listening everywhere: probe over loopback
            bind = "::1" if address.version == 6 else "127.0.0.1"
        family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        kind = socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM
        with socket.socket(family, kind) as probe:
            probe.bind((bind, 0))
            me = probe.getsockname()[1]
            host = f"[{bind}]" if family == socket.AF_INET6 else bind
            marker = uuid.uuid4().hex
            message = (
                f"OPTIONS sip:probe@{host}:{port} SIP/2.0\r\n"
                f"Via: SIP/2.0/{'TCP' if tcp else 'UDP'} {host}:{me};branch=z9hG4bK{marker}\r\n"
                f"From: <sip:probe@{host}>;tag={marker[:8]}\r\nTo: <sip:probe@{host}>\r\n"
                f"Call-ID: {marker}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode()
            self._probe = (message, bind)
            if tcp:
                probe.connect((bind, port))
                probe.sendall(message)
            else:
                probe.sendto(message, (bind, port))
            deadline = time.monotonic() + 2.0
            while self._probe is not None and time.monotonic() < deadline:
                run_events(10)
        self._probe = None
        return self.layout is not None

    # -- pjsip's thread (the SIP thread) --------------------------------------------------

    def _on_rx_request(self, rdata: int) -> int:
        try:
            if self._probe is not None:
                return self._calibrate(rdata)
            layout = self.layout
            if layout is None:
                return 0
            length = ctypes.c_int.from_address(rdata + layout.msg_len).value
            buffer = ctypes.c_void_p.from_address(rdata + layout.msg_buf).value
            if not buffer or not 0 < length <= 1 << 20:
                return 0
            message = ctypes.string_at(buffer, length).decode("utf-8", "surrogateescape")
            if request_line(message)[0].upper() != "INVITE":
                return 0
            source = ctypes.string_at(rdata + layout.src_name).decode("ascii", "replace")
            now = self.clock()
            refusal = self.admission.decide(source, message, now)
            if refusal is None:
                return 0
            self._respond(rdata, refusal)
            report_refusal(self.report, refusal, source, now)
            return 1
        except Exception:  # never let an exception cross into pjsip; pjsua decides instead
            return 0

    def _calibrate(self, rdata: int) -> int:
        assert self._probe is not None
        message, source = self._probe
        top = ctypes.string_at(rdata, _TOP_SEARCH)
        packet = top.find(message[:48])
        if packet < 0:
            return 0  # not our probe (or not where a packet can be): leave it to pjsua
        address = rdata + packet
        pointer = address.to_bytes(8, "little")
        step, offset = 8, (packet + len(message) + 7) // 8 * 8
        while offset < packet + _PKT_SEARCH:
            if ctypes.string_at(rdata + offset, step) == pointer:
                break
            offset += step
        else:
            self._probe = None
            return 1
        msg_len = offset + 8
        if ctypes.c_int.from_address(rdata + msg_len).value != len(message):
            self._probe = None
            return 1
        window = ctypes.string_at(rdata + offset - 256, 256)
        name = window.rfind(source.encode() + b"\0")
        if name < 0:
            self._probe = None
            return 1
        self.layout = Layout(src_name=offset - 256 + name, msg_buf=offset, msg_len=msg_len)
        self._probe = None
        return 1  # the probe is ours: no answer

    def _respond(self, rdata: int, refusal: Refusal) -> None:
        head: _HdrHead | None = None
        if refusal.retry_after:
            pool = ctypes.c_void_p.from_address(rdata).value  # tp_info.pool, the first field
            name, value = b"Retry-After", str(refusal.retry_after).encode()
            pj_name, pj_value = _PjStr(name, len(name)), _PjStr(value, len(value))
            header = self._lib.pjsip_generic_string_hdr_create(
                pool, ctypes.byref(pj_name), ctypes.byref(pj_value)
            )
            if header:
                head = _HdrHead()
                links = (ctypes.c_void_p * 2).from_address(header)
                head.prev = head.next = header
                links[0] = links[1] = ctypes.addressof(head)
        self._lib.pjsip_endpt_respond_stateless(
            self._endpt, rdata, refusal.code, None, ctypes.byref(head) if head else None, None
        )


def report_refusal(report: RefusalReport, refusal: Refusal, source: str, now: float) -> None:
    """Log a refused INVITE, the first of its kind at once and then one line per reason every
    few seconds with the count (``/metrics`` counts every one)."""
    count = report.due(refusal.reason, now)
    if count:
        log.warning(
            "sip.invite_refused",
            reason=refusal.reason,
            code=refusal.code,
            source=source,
            count=count,
            every_seconds=report.every,
        )
