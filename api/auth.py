"""Bearer tokens: which named token, if any, a request offers. Pure: no I/O.

Several tokens may be valid at once (``api.token`` as ``default`` plus the named
``api.tokens``), so a backend can move to a new token before the old one is removed. The
offered token is hashed and compared with every known token's hash by
:func:`hmac.compare_digest`: the digests have one length and no comparison is skipped, so the
time taken does not depend on how much of a token, or which token, was guessed right.

Realtime clients (the ``/v1/realtime`` WebSocket) may offer it as ``api-key`` instead, and a
browser, which cannot set headers on a WebSocket, as the subprotocol
``openai-insecure-api-key.<token>`` (OpenAI's form), listed next to ``realtime``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()


class ApiTokens:
    """The tokens the API accepts, by name; empty means no authentication."""

    def __init__(self, tokens: Mapping[str, str] | None = None) -> None:
        given = dict(tokens or {})
        if not all(given.values()):
            raise ValueError("a token must not be empty")
        self._digests = tuple((name, _digest(token)) for name, token in given.items())

    @property
    def required(self) -> bool:
        return bool(self._digests)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._digests)

    def identify(self, offered: str) -> str | None:
        """The name of the token ``offered`` is, or None when it is none of them."""
        digest = _digest(offered)
        found: str | None = None
        for name, expected in self._digests:
            if hmac.compare_digest(digest, expected):
                found = name
        return found


SUBPROTOCOL_PREFIX = "openai-insecure-api-key."


def offered_token(headers: Mapping[str, str], api_key_header: bool = False) -> str:
    """The token in ``Authorization: Bearer <token>`` (or, for realtime clients, ``api-key``,
    else the ``openai-insecure-api-key.<token>`` WebSocket subprotocol)."""
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    if not api_key_header:
        return ""
    return headers.get("api-key", "").strip() or subprotocol_token(headers)


def subprotocol_token(headers: Mapping[str, str]) -> str:
    """The token a browser put in ``Sec-WebSocket-Protocol`` (``openai-insecure-api-key.<t>``)."""
    for offered in headers.get("sec-websocket-protocol", "").split(","):
        name = offered.strip()
        if name.startswith(SUBPROTOCOL_PREFIX):
            return name.removeprefix(SUBPROTOCOL_PREFIX)
    return ""
