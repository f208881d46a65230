"""Registration policy: when to send REGISTER, what a response means, how long to wait.

Pure: no pjsua2, no sockets, no clock. :class:`Registration` takes what happened (a REGISTER
response, a REGISTER that could not be sent, a timer that fired) and answers with
:class:`Actions` (send a REGISTER now, arm a timer, report the changed status); the SIP
thread's account carries them out. Timers are identified by a token: arming one makes every
earlier token stale, so a timer never needs cancelling.

**Keep-alive by REGISTER.** While registered, a REGISTER is sent every
``sip.register_keepalive`` seconds (10 by default), whatever ``sip.register_expires`` says; the
binding's expiry on the registrar stays ``register_expires``. A registrar that restarted and
lost its location table gets the binding back at the next keep-alive, 10 s at most after it
returns, however short its downtime was. Why not the alternatives:

- an OPTIONS keep-alive proves the registrar answers, not that it still holds the binding: a
  restart shorter than the probe interval, or a table lost without downtime, goes unnoticed
  until the refresh, up to ``register_expires - 5`` s later;
- a short ``register_expires`` would do it too, but PBXs refuse short registrations (Asterisk's
  ``minimum_expiration`` is 60 s) and it changes what the PBX shows for the extension;
- pjsua2's ``natConfig.udpKaIntervalSec`` sends bare CRLF, which nothing answers.

The cost, with a registrar that challenges every REGISTER (most do; pjsip sends no digest
before it is challenged): REGISTER, 401, authenticated REGISTER, 200 every 10 s per worker,
none of them a failed authentication.

pjsip itself gives up on an unanswered REGISTER only after 32 s (timer F), so a keep-alive
unanswered after :data:`ANSWER_SECONDS` counts the binding as lost at once (``/health``
turns false) while the transaction keeps retransmitting (every 4 s at most, so a registrar
back within those 32 s answers one of them); its answer, or its timeout reported as 408,
decides what follows. Every pjsua2 call this asks for happens on the SIP thread: the account
(``sip/account.py``) runs the timers with ``SipThread.later``.

**Backoff.** Transient failures (no answer, transport errors, 408, 423, 480, 5xx) are retried
with :class:`Backoff` (1 s doubling to 10 s, jittered, forever). A refusal (401/407/403 after
the digest attempt, and every other 4xx or 6xx) will not change without an administrator, and
each retry is one more failed authentication in the PBX's log (fail2ban bans after a few): it
is retried after :data:`REFUSED_DELAYS` (30 s, 1, 2, 5, then every 10 min), and the reason is
kept in :attr:`Status.error`. A 2xx resets both backoffs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

KEEPALIVE_SECONDS = 10.0  # the default of sip.register_keepalive
ANSWER_SECONDS = 5.0
# Past pjsip's timer F (64 x T1 = 32 s): by then an unanswered REGISTER has been reported.
TRANSACTION_SECONDS = 40.0
REFUSED_DELAYS = (30.0, 60.0, 120.0, 300.0, 600.0)
_TRANSIENT_4XX = {408, 423, 480}
_AUTH = {401, 403, 407}


@dataclass
class Backoff:
    initial: float = 1.0
    cap: float = 10.0
    factor: float = 2.0
    jitter: float = 0.2  # +- this fraction of the delay
    failures: int = 0

    def next_delay(self, rng: random.Random | None = None) -> float:
        """Seconds to wait before the next attempt; grows until ``cap``, never stops."""
        base = min(self.cap, self.initial * self.factor ** min(self.failures, 32))
        self.failures += 1
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.1, base * (1 + spread))

    def reset(self) -> None:
        self.failures = 0


@dataclass
class Schedule:
    """Fixed delays, the last one repeated forever; jittered like :class:`Backoff`."""

    delays: tuple[float, ...] = REFUSED_DELAYS
    jitter: float = 0.1
    failures: int = 0

    def next_delay(self, rng: random.Random | None = None) -> float:
        base = self.delays[min(self.failures, len(self.delays) - 1)]
        self.failures += 1
        return base * (1 + (rng or random).uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self.failures = 0


class State(StrEnum):
    IDLE = "idle"  # not started
    REGISTERING = "registering"  # a REGISTER is out, not registered (first or a retry)
    REGISTERED = "registered"  # bound; the keep-alive timer runs
    CHECKING = "checking"  # bound; a keep-alive REGISTER is out, its answer deadline runs
    LOST = "lost"  # a keep-alive went unanswered past the deadline; pjsip still retransmits
    RETRYING = "retrying"  # a transient failure; the short backoff runs
    REFUSED = "refused"  # refused (bad credentials...); the long backoff runs
    STOPPED = "stopped"  # shutting down: nothing more is sent


class Failure(StrEnum):
    TRANSIENT = "transient"
    REFUSED = "refused"


def classify(code: int) -> Failure:
    """What a failed REGISTER's final status (0: no answer or transport error) means."""
    if code == 0 or code in _TRANSIENT_4XX or 500 <= code < 600:
        return Failure.TRANSIENT
    return Failure.REFUSED


def describe(code: int, reason: str) -> str:
    """The failure as ``registration_error`` shows it."""
    status = f"{code} {reason}".strip() if code else (reason or "no answer")
    if code in _AUTH:
        return f"{status}: authentication failed (check sip.username and the password)"
    if classify(code) is Failure.REFUSED:
        return f"{status}: refused by the registrar"
    return status


@dataclass(frozen=True)
class Timer:
    delay: float
    token: int


@dataclass(frozen=True)
class Actions:
    """What the account must do now, in this order: send, arm, report."""

    send: bool = False  # send a REGISTER (Account.setRegistration(True))
    timer: Timer | None = None  # call on_timer(token) after delay seconds
    report: bool = False  # the status changed: report it


@dataclass(frozen=True)
class Status:
    registered: bool
    code: int  # last REGISTER status (0: none yet, no answer or transport failure)
    reason: str
    error: str = ""  # why not registered, once an attempt failed; "" while registered
    retry_in: float | None = None  # seconds to the next attempt after a failure


class Registration:
    """One account's registration: its :class:`State`, its :class:`Status`, both backoffs."""

    def __init__(
        self, rng: random.Random | None = None, keepalive: float = KEEPALIVE_SECONDS
    ) -> None:
        self.keepalive = keepalive  # 0: no keep-alive, pjsip's refresh before expiry only
        self.state = State.IDLE
        self.status = Status(False, 0, "not registered yet")
        self.transient = Backoff()
        self.refused = Schedule()
        self._rng = rng
        self._token = 0

    # -- what happened ---------------------------------------------------------------------

    def start(self) -> Actions:
        """The account exists: send the first REGISTER."""
        if self.state is not State.IDLE:
            return Actions()
        self.state = State.REGISTERING
        return Actions(send=True)

    def stop(self) -> Actions:
        self.state = State.STOPPED
        self._disarm()
        return Actions()

    def on_response(self, code: int, reason: str, bound: bool) -> Actions:
        """A final REGISTER response (or pjsip's own failure report, code 0 or 408)."""
        if self.state in (State.IDLE, State.STOPPED):
            return Actions()
        if code // 100 == 2 and bound:
            self.transient.reset()
            self.refused.reset()
            changed = not self.status.registered
            self.state = State.REGISTERED
            self.status = Status(True, code, reason)
            if not self.keepalive:
                self._disarm()  # pjsip refreshes before expiry; no timer of ours is due
                return Actions(report=changed)
            return Actions(timer=self._arm(self.keepalive), report=changed)
        if code // 100 == 2:
            reason = f"{reason} without our binding"
            return self._failed(Failure.TRANSIENT, code, reason)
        return self._failed(classify(code), code, reason)

    def on_send_failed(self, reason: str) -> Actions:
        """A REGISTER could not be sent (pjsip busy with one still out, transport error)."""
        if self.state in (State.IDLE, State.STOPPED):
            return Actions()
        if self.state in (State.REGISTERED, State.CHECKING):
            # A REGISTER still out (pjsip's own refresh) answers for this one; if nothing is,
            # the deadline finds out.
            self.state = State.CHECKING
            return Actions(timer=self._arm(ANSWER_SECONDS))
        if self.state is State.LOST:  # the unanswered keep-alive is still out: wait for it
            return Actions(timer=self._arm(TRANSACTION_SECONDS))
        return self._failed(Failure.TRANSIENT, 0, reason)

    def on_timer(self, token: int) -> Actions:
        if token != self._token:
            return Actions()  # superseded
        if self.state is State.REGISTERED:  # keep-alive due
            self.state = State.CHECKING
            return Actions(send=True, timer=self._arm(ANSWER_SECONDS))
        if self.state is State.CHECKING:  # keep-alive unanswered
            self.state = State.LOST
            error = f"no answer from the registrar within {ANSWER_SECONDS:g} s"
            self.status = Status(False, 0, error, error=error)
            # pjsip reports the transaction's end; the timer only guards against silence.
            return Actions(timer=self._arm(TRANSACTION_SECONDS), report=True)
        if self.state in (State.RETRYING, State.REFUSED):
            self.state = State.REGISTERING
            return Actions(send=True)
        if self.state is State.LOST:
            return Actions(send=True)
        return Actions()

    # -- helpers ---------------------------------------------------------------------------

    def _failed(self, kind: Failure, code: int, reason: str) -> Actions:
        if kind is Failure.REFUSED:
            self.state = State.REFUSED
            delay = self.refused.next_delay(self._rng)
        else:
            self.state = State.RETRYING
            delay = self.transient.next_delay(self._rng)
        self.status = Status(False, code, reason, error=describe(code, reason), retry_in=delay)
        return Actions(timer=self._arm(delay), report=True)

    def _arm(self, delay: float) -> Timer:
        self._token += 1
        return Timer(delay, self._token)

    def _disarm(self) -> None:
        self._token += 1
