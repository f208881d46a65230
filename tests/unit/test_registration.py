"""The registration policy on its own: keep-alive, answer deadline, short and long backoff."""

from __future__ import annotations

import random

import pytest

from sip.registration import (
    ANSWER_SECONDS,
    KEEPALIVE_SECONDS,
    TRANSACTION_SECONDS,
    Actions,
    Failure,
    Registration,
    State,
    classify,
)


def _registered() -> tuple[Registration, Actions]:
    policy = Registration(random.Random(7))
    assert policy.start() == Actions(send=True)
    actions = policy.on_response(200, "OK", bound=True)
    return policy, actions


def test_registered_sends_a_keepalive_register_every_10_s() -> None:
    """Once bound, a REGISTER goes out every 10 s and a 200 re-arms the next one quietly."""
    policy, actions = _registered()
    assert actions.report
    assert policy.status.registered
    assert policy.status.error == ""
    assert actions.timer is not None
    assert actions.timer.delay == KEEPALIVE_SECONDS
    for _ in range(3):
        assert actions.timer is not None
        check = policy.on_timer(actions.timer.token)
        assert check.send
        assert check.timer is not None
        assert check.timer.delay == ANSWER_SECONDS
        assert policy.state is State.CHECKING
        actions = policy.on_response(200, "OK", bound=True)
        assert not actions.report  # still registered: nothing to report
        assert actions.timer is not None
        assert actions.timer.delay == KEEPALIVE_SECONDS


def test_an_unanswered_keepalive_counts_as_lost_within_5_s() -> None:
    """A keep-alive with no answer by its deadline reports unregistered at once, waits for
    pjsip to end that transaction (no REGISTER meanwhile), and the late 200 reports
    registered again."""
    policy, actions = _registered()
    assert actions.timer is not None
    check = policy.on_timer(actions.timer.token)
    assert check.timer is not None
    lost = policy.on_timer(check.timer.token)
    assert lost.report
    assert not policy.status.registered
    assert policy.state is State.LOST
    assert "no answer" in policy.status.error
    assert lost.timer is not None
    assert lost.timer.delay == TRANSACTION_SECONDS
    assert policy.on_timer(lost.timer.token).send  # only if pjsip never reported its end
    busy = policy.on_send_failed("Object is busy")
    assert busy.timer is not None
    assert not busy.report
    assert policy.state is State.LOST
    back = policy.on_response(200, "OK", bound=True)
    assert back.report
    assert policy.status.registered
    assert policy.state is State.REGISTERED


def test_a_timed_out_keepalive_is_retried_with_the_short_backoff() -> None:
    """pjsip's 408 for the unanswered keep-alive leads to retries 1 s, 2 s... later."""
    policy, actions = _registered()
    assert actions.timer is not None
    check = policy.on_timer(actions.timer.token)
    assert check.timer is not None
    policy.on_timer(check.timer.token)
    timeout = policy.on_response(408, "Request Timeout", bound=False)
    assert timeout.report
    assert timeout.timer is not None
    assert timeout.timer.delay <= 1.2
    assert policy.state is State.RETRYING
    assert policy.status.error == "408 Request Timeout"


def test_keepalive_zero_leaves_the_refresh_to_pjsip() -> None:
    """With the keep-alive off, a 200 arms nothing and an earlier retry timer is void."""
    policy = Registration(random.Random(2), keepalive=0)
    policy.start()
    retry = policy.on_response(503, "Service Unavailable", bound=False)
    assert retry.timer is not None
    actions = policy.on_response(200, "OK", bound=True)
    assert actions == Actions(report=True)
    assert policy.on_timer(retry.timer.token) == Actions()


def test_a_superseded_timer_does_nothing() -> None:
    """A timer armed before the latest one was armed is ignored."""
    policy, first = _registered()
    assert first.timer is not None
    policy.on_response(200, "OK", bound=True)  # pjsip's own refresh re-arms the keep-alive
    assert policy.on_timer(first.timer.token) == Actions()
    assert policy.state is State.REGISTERED


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (0, Failure.TRANSIENT),
        (408, Failure.TRANSIENT),
        (423, Failure.TRANSIENT),
        (480, Failure.TRANSIENT),
        (500, Failure.TRANSIENT),
        (503, Failure.TRANSIENT),
        (401, Failure.REFUSED),
        (403, Failure.REFUSED),
        (407, Failure.REFUSED),
        (404, Failure.REFUSED),
        (603, Failure.REFUSED),
    ],
)
def test_failures_are_classified(code: int, kind: Failure) -> None:
    """Timeouts and 5xx are transient; 401/403/407 and other refusals are not."""
    assert classify(code) is kind


def test_transient_failures_keep_the_short_backoff() -> None:
    """Timeouts and 5xx are retried after 1 s doubling to 10 s (+-20 %), never longer."""
    policy = Registration(random.Random(3))
    policy.start()
    delays = []
    for code in (408, 503, 0, 500, 408, 408, 503, 408):
        actions = policy.on_response(code, "Failed", bound=False)
        assert actions.report
        assert actions.timer is not None
        delays.append(actions.timer.delay)
        assert policy.on_timer(actions.timer.token).send
    assert 0.8 <= delays[0] <= 1.2
    assert all(d <= 12.0 for d in delays)
    assert all(d >= 8.0 for d in delays[4:])
    assert policy.status.error.startswith("408 ")


def test_refusals_back_off_to_minutes_and_name_the_failure() -> None:
    """Each 401 waits 30 s, 1, 2, 5, then 10 min (+-10 %), and the error names the failure."""
    policy = Registration(random.Random(5))
    policy.start()
    delays = []
    for _ in range(8):
        actions = policy.on_response(401, "Unauthorized", bound=False)
        assert actions.timer is not None
        delays.append(actions.timer.delay)
        assert policy.state is State.REFUSED
        assert policy.on_timer(actions.timer.token).send
    expected = [30, 60, 120, 300, 600, 600, 600, 600]
    assert all(0.9 * e <= d <= 1.1 * e for d, e in zip(delays, expected, strict=True)), delays
    assert "401 Unauthorized" in policy.status.error
    assert "authentication failed" in policy.status.error
    assert not policy.status.registered
    assert policy.status.retry_in == delays[-1]


def test_a_success_resets_the_long_backoff() -> None:
    """After the password is fixed and a 200 arrives, the next refusal waits 30 s again."""
    policy = Registration(random.Random(9))
    policy.start()
    for _ in range(3):
        policy.on_response(403, "Forbidden", bound=False)
    policy.on_response(200, "OK", bound=True)
    assert policy.status.error == ""
    actions = policy.on_response(401, "Unauthorized", bound=False)
    assert actions.timer is not None
    assert 27 <= actions.timer.delay <= 33


def test_a_2xx_without_the_binding_is_a_transient_failure() -> None:
    """A 200 whose contact list lacks ours is not a registration: retried soon."""
    policy = Registration(random.Random(1))
    policy.start()
    actions = policy.on_response(200, "OK", bound=False)
    assert not policy.status.registered
    assert policy.state is State.RETRYING
    assert actions.timer is not None
    assert actions.timer.delay <= 1.2


def test_nothing_is_sent_after_stop() -> None:
    """Once stopping, timers and responses change nothing."""
    policy, actions = _registered()
    policy.stop()
    assert actions.timer is not None
    assert policy.on_timer(actions.timer.token) == Actions()
    assert policy.on_response(401, "Unauthorized", bound=False) == Actions()
    assert policy.state is State.STOPPED
