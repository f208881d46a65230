"""SIP URIs and messages as the worker reads them: pure string functions."""

from __future__ import annotations

import ipaddress

from config.schema import SipSettings


def registrar_host(settings: SipSettings) -> str:
    """The host of ``sip.registrar`` ("" without one); an IPv6 reference keeps its brackets."""
    if not settings.registrar:
        return ""
    rest = settings.registrar.split(":", 1)[1]
    rest = rest.split(";", 1)[0].split("@")[-1]
    if rest.startswith("["):  # IPv6 reference
        return rest[: rest.index("]") + 1]
    return rest.split(":", 1)[0]


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def display_name(uri: str) -> str:
    """The display name of a name-addr (``"Alice" <sip:...>``), or ""."""
    uri = uri.strip()
    if uri.startswith('"'):
        return uri[1:].split('"', 1)[0]
    if "<" in uri:
        return uri.split("<", 1)[0].strip()
    return ""


def user_of(uri: str) -> str:
    """The user part of a SIP URI or name-addr, or ""."""
    inner = uri.split("<", 1)[-1].split(">", 1)[0]
    after_scheme = inner.split(":", 1)[-1]
    return after_scheme.split("@", 1)[0] if "@" in after_scheme else ""


def headers(message: str) -> dict[str, str]:
    """Header fields of a SIP message (first occurrence of each, names lower-cased)."""
    fields: dict[str, str] = {}
    for line in message.split("\r\n\r\n", 1)[0].split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep and name.strip().lower() not in fields:
            fields[name.strip().lower()] = value.strip()
    return fields
