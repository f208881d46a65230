"""Ephemeral keys for browsers: short-lived, single-use secrets that open one realtime session.

``POST /v1/realtime/client_secrets`` (behind ``api.token`` or a console session) mints a key
``ek_<32 hex>`` with the session it was asked for and an expiry (10 to 7200 s after minting,
600 by default), as OpenAI's endpoint of that name does. A page then presents the key instead
of the API token, which it must never hold: to ``POST /v1/realtime/calls`` (WebRTC) or to the
``/v1/realtime`` WebSocket handshake. The first use consumes it; OpenAI lets one secret open
several sessions until it expires, ours open exactly one. A key opens nothing else.

Pure (the clock is given): keys are kept in memory as SHA-256 digests, never as text, with
their session and expiry. A key is dropped from them as soon as it is used or found expired, so
the cap :data:`MAX_OUTSTANDING` bounds the live unused keys only; past it, minting is refused
until one is used or expires (:class:`TooManyKeys`, answered 503 with ``Retry-After``). A key
redeemed by an offer refused before its call existed is given back
(:meth:`EphemeralKeys.restore`). The digests of used keys are remembered apart until they
expire (at most :data:`MAX_REMEMBERED`, the oldest forgotten first), only so that a second use
is told ``used_key``: a forgotten one is refused all the same, as unknown. They die with the
process.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

PREFIX = "ek_"
DEFAULT_SECONDS = 600
MIN_SECONDS = 10
MAX_SECONDS = 7200
MAX_OUTSTANDING = 1024  # live unused keys
MAX_REMEMBERED = 4096  # used keys remembered to say "already used" rather than "unknown"

RefusalCode = Literal["expired_key", "used_key", "invalid_key"]


class KeyRefused(Exception):
    """The key cannot open a session; ``code`` says why (OpenAI's error code style)."""

    def __init__(self, code: RefusalCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TooManyKeys(Exception):
    """:data:`MAX_OUTSTANDING` live keys are unused: none is minted until one is used or
    expires, which is ``retry_after`` seconds away at most."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def is_ephemeral(token: str) -> bool:
    """Whether ``token`` has the form of an ephemeral key (it may still be unknown)."""
    return token.startswith(PREFIX)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


@dataclass(frozen=True)
class MintedKey:
    value: str  # shown once, in the mint's answer
    expires_at: int  # epoch seconds
    session: dict[str, Any]  # as the answer shows it: with "type" and "id"

    def answer(self) -> dict[str, Any]:
        """The body of the mint's answer (OpenAI's ``ClientSecretCreateResponse``)."""
        return {"value": self.value, "expires_at": self.expires_at, "session": self.session}


@dataclass
class _Outstanding:
    expires_at: float
    session: dict[str, Any]


def parse_mint(body: Any) -> tuple[int, dict[str, Any]]:
    """The lifetime in seconds and the session a mint request asks for.

    Raises ValueError naming the field that is wrong.
    """
    if not isinstance(body, dict):
        raise ValueError("body: must be a JSON object")
    unknown = sorted(set(body) - {"expires_after", "session"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown field")
    seconds = DEFAULT_SECONDS
    if "expires_after" in body:
        expires_after = body["expires_after"]
        if not isinstance(expires_after, dict):
            raise ValueError("expires_after: must be an object")
        extra = sorted(set(expires_after) - {"anchor", "seconds"})
        if extra:
            raise ValueError(f"expires_after.{extra[0]}: unknown field")
        if expires_after.get("anchor", "created_at") != "created_at":
            raise ValueError("expires_after.anchor: must be 'created_at'")
        given = expires_after.get("seconds", DEFAULT_SECONDS)
        if isinstance(given, float) and given.is_integer():
            given = int(given)  # 60.0 is the integer 60 in JSON
        if (
            not isinstance(given, int)
            or isinstance(given, bool)
            or not MIN_SECONDS <= given <= MAX_SECONDS
        ):
            raise ValueError(
                f"expires_after.seconds: must be an integer from {MIN_SECONDS} to {MAX_SECONDS}"
            )
        seconds = given
    session = body.get("session", {})
    if not isinstance(session, dict):
        raise ValueError("session: must be an object")
    if session.get("type", "realtime") != "realtime":
        raise ValueError("session.type: only 'realtime' sessions are served")
    return seconds, session


@dataclass
class EphemeralKeys:
    """The outstanding keys, by digest. Lives on the supervisor's loop (one caller at a time)."""

    clock: Callable[[], float] = time.time
    limit: int = MAX_OUTSTANDING
    remembered: int = MAX_REMEMBERED
    _keys: dict[bytes, _Outstanding] = field(default_factory=dict)  # live and unused
    _used: dict[bytes, float] = field(default_factory=dict)  # digest -> expiry, oldest first

    def __len__(self) -> int:
        """How many keys are live and unused (what the cap bounds)."""
        return len(self._keys)

    def mint(self, seconds: int, session: dict[str, Any]) -> MintedKey:
        """A new key valid for ``seconds`` (MIN_SECONDS..MAX_SECONDS) opening ``session``."""
        if not MIN_SECONDS <= seconds <= MAX_SECONDS:
            raise ValueError(f"seconds: must be from {MIN_SECONDS} to {MAX_SECONDS}")
        now = self.clock()
        self._prune(now)
        if len(self._keys) >= self.limit:
            soonest = min(k.expires_at for k in self._keys.values())
            raise TooManyKeys(
                f"{self.limit} ephemeral keys are unused and live",
                max(1, math.ceil(soonest - now)),
            )
        value = PREFIX + secrets.token_hex(16)
        expires_at = int(now) + seconds
        shown = {
            **session,
            "type": "realtime",
            "object": "realtime.session",
            "id": "sess_" + secrets.token_hex(12),
            "expires_at": expires_at,
        }
        self._keys[_digest(value)] = _Outstanding(float(expires_at), shown)
        return MintedKey(value, expires_at, shown)

    def check(self, key: str) -> None:
        """Raise KeyRefused unless ``key`` would open a session now (it stays unused)."""
        self._valid(key)

    def redeem(self, key: str) -> dict[str, Any]:
        """The session ``key`` was minted with; the key is used up. Raises KeyRefused."""
        digest = _digest(key)
        found = self._valid(digest)
        del self._keys[digest]
        self._used[digest] = found.expires_at
        while len(self._used) > self.remembered:
            del self._used[next(iter(self._used))]
        return found.session

    def restore(self, key: str, session: dict[str, Any]) -> None:
        """Give back ``key``, redeemed for ``session`` by an offer refused before any call
        existed: it opens a session again until it expires (nothing if it is not used)."""
        digest = _digest(key)
        until = self._used.pop(digest, None)
        if until is not None:
            self._keys[digest] = _Outstanding(until, session)

    def _valid(self, key: str | bytes) -> _Outstanding:
        digest = _digest(key) if isinstance(key, str) else key
        now = self.clock()
        found = self._keys.get(digest)
        if found is None:
            used_until = self._used.get(digest)
            if used_until is not None and now < used_until:
                raise KeyRefused("used_key", "ephemeral key already used")
            if used_until is not None:
                del self._used[digest]
                raise KeyRefused("expired_key", "ephemeral key expired")
            raise KeyRefused("invalid_key", "unknown ephemeral key")
        if now >= found.expires_at:
            del self._keys[digest]
            raise KeyRefused("expired_key", "ephemeral key expired")
        return found

    def _prune(self, now: float) -> None:
        for digest in [d for d, k in self._keys.items() if now >= k.expires_at]:
            del self._keys[digest]
        for digest in [d for d, until in self._used.items() if now >= until]:
            del self._used[digest]
