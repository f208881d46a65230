"""Dial targets: an extension, a number or a full SIP URI, as a request URI."""

from __future__ import annotations

import re

_BARE = re.compile(r"^\+?[0-9A-Za-z*#._-]{1,64}$")


def request_uri(target: str, domain: str) -> str:
    """``1001`` or ``+15551234`` -> ``sip:1001@domain``; SIP URIs pass through."""
    target = target.strip()
    if target.startswith(("sip:", "sips:")):
        if "@" not in target and ":" not in target.split(":", 1)[1]:
            raise ValueError(f"SIP URI {target!r} has no host")
        return target
    if target.startswith("tel:"):
        target = target[4:]
    if not _BARE.match(target):
        raise ValueError(f"{target!r} is neither an extension, a number nor a sip: URI")
    return f"sip:{target}@{domain}"
