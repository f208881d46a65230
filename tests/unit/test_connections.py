"""Connection limits: the phase each HTTP/1.1 connection is in, and the file budget."""

from __future__ import annotations

import resource

import h11

from api.connections import (
    BASE_FDS,
    FDS_PER_WORKER,
    ConnectionLimits,
    FdPlan,
    Phase,
    plan_fds,
    read_phase,
)
from config.schema import ApiSettings


def _next(conn: h11.Connection) -> object:
    return conn.next_event()


def test_phases_of_a_request_then_keep_alive() -> None:
    """A connection is idle, in headers from a request's first byte, in body after its headers,
    waiting for nothing while answered, and idle again once answered."""
    conn = h11.Connection(h11.SERVER)
    assert read_phase(conn) is Phase.IDLE
    conn.receive_data(b"PO")
    assert _next(conn) is h11.NEED_DATA
    assert read_phase(conn) is Phase.HEADERS
    conn.receive_data(b"ST /call HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n{}")
    assert isinstance(_next(conn), h11.Request)
    assert isinstance(_next(conn), h11.Data)
    assert read_phase(conn) is Phase.BODY
    conn.receive_data(b"  ")
    assert isinstance(_next(conn), h11.Data)
    assert isinstance(_next(conn), h11.EndOfMessage)
    assert read_phase(conn) is None  # the request is being answered
    conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
    conn.send(h11.EndOfMessage())
    conn.start_next_cycle()
    assert read_phase(conn) is Phase.IDLE


def test_a_request_without_body_goes_straight_to_answering() -> None:
    """A GET complete in one read leaves nothing to wait for from the client."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert isinstance(_next(conn), h11.Request)
    assert isinstance(_next(conn), h11.EndOfMessage)
    assert read_phase(conn) is None


def test_limits_follow_the_settings_and_the_worker_count() -> None:
    """The settings give the deadlines and the cap; each SIP worker reserves more files."""
    api = ApiSettings(header_timeout=3, body_timeout=4, idle_timeout=2, max_connections=100)
    limits = ConnectionLimits.of(api, sip_workers=4)
    assert [limits.timeout(p) for p in (Phase.IDLE, Phase.HEADERS, Phase.BODY)] == [2, 3, 4]
    assert limits.max_connections == 100
    assert limits.reserved_fds == BASE_FDS + 4 * FDS_PER_WORKER
    assert ConnectionLimits.of(ApiSettings(), 1) == ConnectionLimits()


def test_fd_plan_raises_the_soft_limit_then_lowers_the_cap() -> None:
    """The soft limit is raised towards the hard one for the cap plus the reserve; when the
    hard limit is too low the cap shrinks to fit; a sufficient limit is left alone."""
    limits = ConnectionLimits(max_connections=512, reserved_fds=168)
    assert plan_fds(limits, 1024, 1024) == FdPlan(1024, 512)
    assert plan_fds(limits, 256, 524288) == FdPlan(680, 512)
    assert plan_fds(limits, 256, resource.RLIM_INFINITY) == FdPlan(680, 512)
    assert plan_fds(limits, 256, 600) == FdPlan(600, 432)
    assert plan_fds(limits, 100, 100) == FdPlan(100, 1)
    assert plan_fds(limits, resource.RLIM_INFINITY, resource.RLIM_INFINITY).max_connections == 512
