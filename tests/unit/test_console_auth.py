"""Console sessions: expiry on an explicit clock, CSRF matching, logout, the cap."""

from __future__ import annotations

import pytest

from api.console_auth import ConsoleSessions, TooManySessions, same_token


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sessions_expire_and_csrf_must_match() -> None:
    """A session is found by its cookie until its hours are up, only its own CSRF token
    matches, logout removes it, and the cookie value itself is never kept."""
    clock = Clock()
    sessions = ConsoleSessions(hours=12, clock=clock)
    cookie, session = sessions.open("crm")
    assert sessions.get(cookie) == session
    assert session.token_name == "crm"
    assert session.expires_at == 1000.0 + 12 * 3600
    assert session.csrf_matches(session.csrf)
    assert not session.csrf_matches(session.csrf[:-1])
    assert not session.csrf_matches("")
    assert not session.csrf_matches(None)
    other_cookie, other = sessions.open("crm")
    assert other_cookie != cookie
    assert other.csrf != session.csrf
    assert not session.csrf_matches(other.csrf), "a CSRF token belongs to one session"
    assert cookie not in repr(vars(sessions)), "only digests of cookie values are kept"

    assert sessions.get(cookie + "x") is None
    assert sessions.get("") is None
    assert sessions.get(None) is None

    clock.now += 12 * 3600 - 1
    assert sessions.get(cookie) == session, "alive one second before its expiry"
    sessions.close(other_cookie)
    assert sessions.get(other_cookie) is None, "logged out"
    sessions.close(other_cookie)  # twice: nothing
    clock.now += 1
    assert sessions.get(cookie) is None, "expired at 12 h"
    assert len(sessions) == 0


def test_the_oldest_unused_session_goes_when_the_cap_is_reached() -> None:
    """At most ``max_sessions`` are kept: opening one more drops the oldest session whose
    cookie was never presented, not an older one in use."""
    sessions = ConsoleSessions(hours=1, clock=Clock(), max_sessions=2)
    first, _ = sessions.open("a")
    assert sessions.get(first) is not None  # in use
    second, _ = sessions.open("b")
    third, _ = sessions.open("c")
    assert sessions.get(second) is None, "the unused one went"
    assert sessions.get(first) is not None
    assert sessions.get(third) is not None


def test_a_flood_of_sessions_cannot_log_out_a_live_one() -> None:
    """3,000 sessions opened past the cap, presented or not, never drop the admin's session
    in use: unused ones make room for each other, and once all are in use a new one is
    refused with a detail until one expires or logs out."""
    clock = Clock()
    sessions = ConsoleSessions(hours=1, clock=clock, max_sessions=8)
    admin, mine = sessions.open("default")
    assert sessions.get(admin) == mine
    for _ in range(1000):  # opened and dropped, never presented
        sessions.open("local")
    assert sessions.get(admin) == mine, "an unused flood logged the admin out"
    refused = 0
    for _ in range(2000):  # a flood that presents each cookie back
        try:
            cookie, _ = sessions.open("local")
        except TooManySessions:
            refused += 1
            continue
        assert sessions.get(cookie) is not None
    assert refused == 2000 - 7, f"{refused} of 2000 refused"
    with pytest.raises(TooManySessions, match="log out of one"):
        sessions.open("local")
    assert sessions.get(admin) == mine, "a flood in use logged the admin out"
    assert len(sessions) == 8
    sessions.close(admin)
    again, _ = sessions.open("default")  # a logout makes room
    assert sessions.get(again) is not None
    clock.now += 3600  # all expired: room for everyone
    for _ in range(8):
        sessions.open("local")
    assert len(sessions) == 8


def test_presented_sessions_idle_past_the_bound_make_room_and_recent_ones_are_kept() -> None:
    """With every open session presented, a new one drops the least recently presented
    session once it has been idle for more than 30 minutes (the default bound), keeps a session
    used within that bound, and is refused only while all were used within it."""
    clock = Clock()
    sessions = ConsoleSessions(hours=12, clock=clock, max_sessions=4)  # idle: 30 min
    admin, mine = sessions.open("default")
    flood = [sessions.open("local")[0] for _ in range(3)]
    for cookie in [admin, *flood]:
        assert sessions.get(cookie) is not None
    with pytest.raises(TooManySessions, match="idle for 30 minutes"):
        sessions.open("local")
    clock.now += 1000
    assert sessions.get(admin) == mine  # the admin keeps using the console
    clock.now += 801  # the flood idle for 1801 s, the admin for 801 s
    fresh = []
    for _ in range(3):
        cookie, _ = sessions.open("local")
        assert sessions.get(cookie) is not None
        fresh.append(cookie)
    assert [sessions.get(cookie) for cookie in flood] == [None] * 3, "the idle ones went"
    assert sessions.get(admin) == mine, "the session in use was dropped"
    assert len(sessions) == 4
    with pytest.raises(TooManySessions):  # all four presented within the bound
        sessions.open("local")
    clock.now += 1801
    for cookie in fresh:
        assert sessions.get(cookie) is not None
    late, _ = sessions.open("local")  # the admin, now idle for 1801 s, makes room
    assert sessions.get(admin) is None
    assert sessions.get(late) is not None


def test_same_token_refuses_empty_values() -> None:
    """An empty offered or expected token never matches (a missing cookie and field alike)."""
    assert same_token("abc", "abc")
    assert not same_token("", "")
    assert not same_token("abc", "")
    assert not same_token(None, "abc")
