"""Which INVITEs a worker takes: source address, Request-URI user, rate, framing.

Pure decisions, no sockets and no threads: the SIP thread asks :meth:`Admission.decide` from
``onIncomingCall`` and answers the INVITE with the refusal it returns (pjsua has then spent
its call slot for the length of that one callback only; the refusal frees it at once).

- ``sip.allow_from``: INVITEs from any other address get 403 Forbidden.
- Only ``sip.username`` is answered: any other user part of the Request-URI gets 404.
- A per-source token bucket (``sip.invite_rate`` a second, bursts of ``sip.invite_burst``):
  beyond it 503 Service Unavailable with Retry-After.
- A Content-Length that disagrees with the body received: 400 Bad Request.

Every refusal is counted by reason (:attr:`Admission.refused`), for ``/metrics``.
"""

from __future__ import annotations

import ipaddress
import math
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from daemon.ratelimit import KeyedBuckets

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
LOOPBACK: tuple[IpNetwork, ...] = (
    ipaddress.ip_network("127.0.0.0/8"),
    ipaddress.ip_network("::1/128"),
)
MAX_SOURCES = 4096  # buckets kept; the least recently seen source is forgotten first


@dataclass(frozen=True)
class Refusal:
    code: int
    reason: str  # the counter's label: forbidden | not_found | rate_limited | bad_request
    retry_after: int | None = None  # seconds, for 503


def parse_networks(entries: Iterable[str]) -> tuple[IpNetwork, ...]:
    """``["10.0.0.5", "192.168.1.0/24", "::1"]`` as networks (ValueError names a bad one)."""
    networks = []
    for entry in entries:
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or network") from None
    return tuple(networks)


def source_ip(address: str) -> IpAddress | None:
    """The IP of a pjsip source address: ``"127.0.0.1:5060"``, ``"[::1]:5060"``."""
    host = address.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def host_of(uri: str) -> str:
    """The host of a SIP URI (``sip:pbx.example.com:5060;lr`` -> ``pbx.example.com``)."""
    if not uri:
        return ""
    rest = uri.split(":", 1)[1] if ":" in uri else uri
    rest = rest.split(";", 1)[0].split("@")[-1]
    if rest.startswith("["):
        return rest[1 : rest.find("]")]
    return rest.split(":", 1)[0]


Resolver = Callable[[str], list[str]]


def getaddrinfo_resolver(host: str) -> list[str]:
    """Every address ``host`` resolves to (blocking)."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_UDP)
    return sorted({str(info[4][0]) for info in infos})


def resolve(hosts: Iterable[str], resolver: Resolver) -> tuple[tuple[IpNetwork, ...], list[str]]:
    """The networks of ``hosts`` (IPs as they are, names resolved); errors, one per name."""
    networks: list[IpNetwork] = []
    errors: list[str] = []
    for host in hosts:
        if not host:
            continue
        try:
            networks.append(ipaddress.ip_network(host))
            continue
        except ValueError:
            pass  # a name: resolved below
        try:
            addresses = resolver(host)
        except (OSError, UnicodeError) as exc:
            errors.append(f"{host}: {exc}")
            continue
        networks += [ipaddress.ip_network(a.split("%", 1)[0]) for a in addresses]
    return tuple(dict.fromkeys(networks)), errors


def request_line(message: str) -> tuple[str, str]:
    """(method, Request-URI) of a SIP request's first line, read as leniently as pjsip reads
    it (blank lines before it, LF or CRLF, runs of spaces or tabs, any case of the version);
    ("", "") if it is none. The URI is "" when the line has no well-formed one, so an INVITE
    is never waved through for being oddly spaced."""
    first = message.lstrip("\r\n").split("\n", 1)[0]
    parts = first.split()
    if not parts or parts[0].upper().startswith("SIP/"):
        return "", ""  # a response, or nothing
    if len(parts) != 3 or not parts[2].upper().startswith("SIP/"):
        return parts[0], ""
    return parts[0], parts[1]


def _head_and_body(message: str) -> tuple[list[str], str, bool]:
    """The header lines, the body, and whether the blank line that ends the headers came."""
    text = message.lstrip("\r\n")
    crlf, lf = text.find("\r\n\r\n"), text.find("\n\n")
    if crlf < 0 and lf < 0:
        return text.replace("\r\n", "\n").split("\n"), "", False
    if crlf >= 0 and (lf < 0 or crlf <= lf):
        head, body = text[:crlf], text[crlf + 4 :]
    else:
        head, body = text[:lf], text[lf + 2 :]
    return head.replace("\r\n", "\n").split("\n"), body, True


def uri_user(uri: str) -> str:
    """The user part of a SIP URI, %-escapes decoded (``sip:%31000@h`` -> ``1000``)."""
    inner = uri.split("<", 1)[-1].split(">", 1)[0]
    after_scheme = inner.split(":", 1)[1] if ":" in inner else ""
    if "@" not in after_scheme:
        return ""
    user = after_scheme.rsplit("@", 1)[0].split(";", 1)[0].split(":", 1)[0]
    return _unescape(user)


def _unescape(text: str) -> str:
    out = bytearray()
    i = 0
    raw = text.encode("utf-8", "replace")
    while i < len(raw):
        if raw[i] == 0x25 and _is_hex(raw[i + 1 : i + 3]):
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def content_length_mismatch(message: str) -> bool:
    """True when the message's Content-Length (``l``) is missing a number or disagrees with
    the body that came with it (the bytes after the blank line)."""
    lines, body, ended = _head_and_body(message)
    if not ended:
        return False
    declared: str | None = None
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if colon and name.strip().lower() in ("content-length", "l"):
            if declared is not None and declared != value.strip():
                return True  # two that disagree
            declared = value.strip()
    if declared is None:
        # Over UDP the datagram frames the body (RFC 3261 18.3); over TCP pjsip does not
        # parse a message without one.
        return False
    if not declared.isdigit():
        return True
    return int(declared) != len(body.encode("utf-8", "surrogateescape"))


class RefusalReport:
    """When to log refusals: the first of each reason at once, then at most one line per
    reason every ``every`` seconds with the count since the last line (a flood from forged
    sources must not become a flood of log lines)."""

    def __init__(self, every: float = 10.0) -> None:
        self.every = every
        self._last: dict[str, float] = {}
        self._since: dict[str, int] = {}

    def due(self, reason: str, now: float) -> int:
        """The refusals of ``reason`` to report now, this one included; 0: not yet."""
        self._since[reason] = self._since.get(reason, 0) + 1
        last = self._last.get(reason)
        if last is not None and now - last < self.every:
            return 0
        self._last[reason] = now
        return self._since.pop(reason)


class Admission:
    """The decision for each INVITE; refusals counted by reason."""

    def __init__(
        self,
        username: str,
        allow_from: tuple[IpNetwork, ...],
        rate: float,
        burst: float,
    ) -> None:
        self.username = username
        self.allow_from = allow_from  # replaced whole when names are resolved again
        self.limiter = KeyedBuckets(rate, max(1.0, burst), MAX_SOURCES) if rate > 0 else None
        self.refused: dict[str, int] = {
            "forbidden": 0,
            "not_found": 0,
            "rate_limited": 0,
            "bad_request": 0,
        }

    def allowed(self, ip: IpAddress | None) -> bool:
        return ip is not None and any(ip in network for network in self.allow_from)

    def decide(self, source: str, message: str, now: float) -> Refusal | None:
        """None to take the INVITE (``message`` as received, from ``source``), else why not."""
        refusal = self._decide(source, message, now)
        if refusal is not None:
            self.refused[refusal.reason] += 1
        return refusal

    def backstop(self, source: str, message: str) -> Refusal | None:
        """The source and Request-URI checks alone, for an INVITE that reached pjsua although
        the pjsip module screens INVITEs first (counted like :meth:`decide`)."""
        refusal = None
        if not self.allowed(source_ip(source)):
            refusal = Refusal(403, "forbidden")
        elif uri_user(request_line(message)[1]) != self.username:
            refusal = Refusal(404, "not_found")
        if refusal is not None:
            self.refused[refusal.reason] += 1
        return refusal

    def _decide(self, source: str, message: str, now: float) -> Refusal | None:
        ip = source_ip(source)
        if not self.allowed(ip):
            return Refusal(403, "forbidden")
        if self.limiter is not None:
            wait = self.limiter.check(str(ip), now)
            if wait > 0:
                return Refusal(503, "rate_limited", retry_after=max(1, math.ceil(wait)))
        if content_length_mismatch(message):
            return Refusal(400, "bad_request")
        _, uri = request_line(message)
        if uri_user(uri) != self.username:
            return Refusal(404, "not_found")
        return None
