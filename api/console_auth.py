"""Console sessions: who is logged in to the web console, and their CSRF tokens. Pure: no I/O.

A browser logs in once with an API token (``POST /login``); it then holds a session cookie
instead of the token. Sessions live in memory only (they die with the process: the user logs
in again after a restart), each kept under the SHA-256 digest of its cookie value, never the
value itself, with the name of the token it was opened with, its own CSRF token and its
expiry (``api.console_session_hours``). The cookie is sent by the browser on its own, so every
unsafe request made with it must also carry the session's CSRF token in a header, which a page
of another origin cannot read.

The login form has a CSRF token of its own: a random value set in a short-lived cookie and
repeated in the form (double submit), so that a page of another origin cannot log a browser
in to a session of its choosing.

At most :data:`MAX_SESSIONS` are open at once. Opening one past that drops the oldest session
that was never presented since it was opened (a real login presents its cookie at once, on
the redirect to the console); when every open session has been presented, it drops the one
presented least recently if that was more than :data:`IDLE_SECONDS` ago. Only when every open
session was presented within that bound is the new one refused (:class:`TooManySessions`)
until one expires, logs out or falls idle. So a flood of session openings, which needs no
token when none is set, cannot log out a session in use, nor lock new logins out for longer
than the bound.

The clock is given (seconds, monotonic or not): tests drive it explicitly.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

SESSION_COOKIE = "sipai_session"
LOGIN_COOKIE = "sipai_login"
LOGIN_SECONDS = 600  # a login page's CSRF token is good for this long
MAX_SESSIONS = 1024  # at most this many at once; see the module's docstring for who goes
IDLE_SECONDS = 1800.0  # a presented session unseen this long may make room for a new one


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def same_token(offered: str | None, expected: str | None) -> bool:
    """True when ``offered`` is ``expected``, compared in constant time."""
    if not offered or not expected:
        return False
    return hmac.compare_digest(_digest(offered), _digest(expected))


class TooManySessions(Exception):
    """Every open session is in use: a new one is refused until one expires, logs out or
    falls idle."""


@dataclass(frozen=True)
class ConsoleSession:
    token_name: str  # the API token the session was opened with ("local": none was needed)
    csrf: str  # the token unsafe requests of this session must carry in X-CSRF-Token
    expires_at: float  # on the sessions' clock

    def csrf_matches(self, offered: str | None) -> bool:
        return same_token(offered, self.csrf)


class ConsoleSessions:
    """The open sessions, by digest of their cookie value."""

    def __init__(
        self,
        hours: float,
        clock: Callable[[], float],
        max_sessions: int = MAX_SESSIONS,
        idle_seconds: float = IDLE_SECONDS,
    ) -> None:
        self.seconds = round(hours * 3600)
        self._clock = clock
        self._max = max_sessions
        self._idle = idle_seconds
        self._sessions: dict[bytes, ConsoleSession] = {}  # insertion order: oldest first
        self._unpresented: dict[bytes, None] = {}  # opened, cookie not seen since: oldest first
        self._seen: dict[bytes, float] = {}  # when each was last opened or presented: LRU first

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, token_name: str) -> tuple[str, ConsoleSession]:
        """A new session for ``token_name``: the cookie value to set, and the session.
        Raises TooManySessions when the cap is reached and every session was used lately."""
        self._prune()
        now = self._clock()
        while len(self._sessions) >= self._max:
            if self._unpresented:
                self._drop(next(iter(self._unpresented)))
                continue
            idlest = next(iter(self._seen))  # every open session has been presented
            if now - self._seen[idlest] < self._idle:
                raise TooManySessions(
                    f"{self._max} console sessions are open and in use: log out of one,"
                    f" or wait for one to expire or to be idle for {self._idle / 60:g} minutes"
                )
            self._drop(idlest)
        cookie = secrets.token_urlsafe(32)
        session = ConsoleSession(token_name, secrets.token_urlsafe(32), now + self.seconds)
        key = _digest(cookie)
        self._sessions[key] = session
        self._unpresented[key] = None
        self._seen[key] = now
        return cookie, session

    def get(self, cookie: str | None) -> ConsoleSession | None:
        """The live session of this cookie value, or None (unknown, logged out or expired)."""
        if not cookie:
            return None
        key = _digest(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if now >= session.expires_at:
            self._drop(key)
            return None
        self._unpresented.pop(key, None)
        del self._seen[key]  # to the end: the most recently seen
        self._seen[key] = now
        return session

    def close(self, cookie: str | None) -> None:
        """Log out: the session of this cookie value is gone (nothing if there is none)."""
        if cookie:
            self._drop(_digest(cookie))

    def _drop(self, key: bytes) -> None:
        self._sessions.pop(key, None)
        self._unpresented.pop(key, None)
        self._seen.pop(key, None)

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, s in self._sessions.items() if now >= s.expires_at]:
            self._drop(key)


def login_token() -> str:
    """A fresh CSRF token for a login form (set in its cookie and in the form)."""
    return secrets.token_urlsafe(24)
