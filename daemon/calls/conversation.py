"""The inbound conversation as a pure state machine: events in, actions out.

The agent (:mod:`daemon.calls.inbound`) feeds :class:`Conversation` what it observes on the
call leg and the model session, with the time on the call's media clock and a view of the
playout buffer, and carries out the actions it returns, in order. The machine never waits,
sleeps or does I/O; :attr:`Conversation.deadline` is the one time at which it wants a
:class:`Timer` (barge-in guard, DTMF gap, the end_call and transfer bounds).

Two explicit states. ``Floor``, who holds the caller's ear::

    SILENT --audio delta--> AGENT --caller speech, under the guard--> GUARDING
                              |  <------- speech stopped ------------'   |
                              '--speech past the guard--> FLUSHING <-----' guard passed
    FLUSHING --flushed: truncate at what was played--> SILENT (AGENT if a late delta came)
    any --session replaced--> SILENT

With ``echo_guard`` the speech past the guard is judged first (:class:`JudgeEcho`, answered
at once by :class:`EchoJudged`): the caller's voice flushes as above; the agent's own voice
coming back moves to ``ECHO`` (logged once per speech_started), where each uplink batch is
judged again until the speech stops (back to ``AGENT``) or the caller's voice shows up over
the echo for the guard's worth of audio (``barge_in_min_ms``, ``greeting_guard_ms`` over the
greeting), counted from the first batch judged the caller, in batches judged the caller one
after the other (``FLUSHING``; its stop_ms then counts from that first batch, the voice's
onset as seen). An echo or a silent batch (a pause: only the line's noise) starts the count
over. At least ``ECHO_RECHECK_MS`` and a batch are needed whatever the guard: a glitch of the
line (a jitter buffer's concealment) stays in the re-judged window for at most
``ECHO_RECHECK_MS``, so it cannot confirm itself. At the first judgement everything but echo
and silence (nothing above the line's noise while the agent plays: watched as echo) barges
in, as without the guard; digital silence back (``no_line``: nothing at all) barges in too.

``AGENT`` means the last item pushed can still be cut; whether anything is being said is read
from the view (queued audio) and the active response. The guard is ``greeting_guard_ms`` over
the greeting (the first response after ``Started(greeting=True)``), else ``barge_in_min_ms``,
counted in the caller audio the model has received (``UplinkSent``). A judgement covers the
speech heard so far (at most 1 s), a re-judgement in ``ECHO`` the last ``ECHO_RECHECK_MS``
(the newest audio is where a voice shows; a longer window only costs more).

``Stage``, what the call is doing::

    ACTIVE --end_call--> CLOSING --response done, playout drained--> DONE (hang up)
    ACTIVE --transfer_call--> TRANSFERRING --drained: REFER; 2xx--> DONE
                                  '--failure, no answer in 30 s--> ACTIVE (error to the model)
    ACTIVE | CLOSING | TRANSFERRING --lost (retryable) / rotation--> REPLACING --> back
    any --call ended, unrecoverable loss--> DONE

With ``[agent] fallback = "local"`` and a cloud backend, the loss that would end the call
(not retryable, or ``max_reconnects`` used up) fails over instead, once: the bridge phrase,
then a new session on the embedded engine with the transcript replayed, which is asked to
speak once it is up (and reported then: :class:`ce.ReportFailover`). While an end_call or a
transfer is finishing the call, no bridge phrase and no failover report: the failure only.
The engine's session gets ``max_reconnects`` of its own; losses after that (or after a
failover at connect time, ``Started``) follow the rules above.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from config.schema import AgentSettings, Backend, Fallback, RealtimeSettings
from daemon.calls import agent_config as tools
from daemon.calls import conversation_events as ce
from daemon.realtime import events as ev
from media.echo import EchoVerdict

if TYPE_CHECKING:
    from daemon.realtime.client import FailureKind

DTMF_GAP_SECONDS = 1.5  # digits typed closer than this go to the model together
END_CALL_MAX_WAIT = 30.0  # longest goodbye (or announcement) played out before going on
TRANSFER_SECONDS = 30.0  # longest wait for the transfer target to answer
REPLAY_TURNS = 30  # transcript turns replayed into a new session
RECONNECT_PAUSE = 0.5  # between two failed attempts to open a new session
ECHO_RECHECK_MS = 160  # the caller audio judged again on each batch while it is echo


class Floor(StrEnum):
    SILENT = "silent"
    AGENT = "agent"
    GUARDING = "guarding"
    ECHO = "echo"  # the caller's speech is the agent's own voice coming back
    FLUSHING = "flushing"


class Stage(StrEnum):
    ACTIVE = "active"
    CLOSING = "closing"
    TRANSFERRING = "transferring"
    REPLACING = "replacing"
    DONE = "done"


F, S = Floor, Stage
FLOOR_MOVES: dict[Floor, frozenset[Floor]] = {
    F.SILENT: frozenset({F.AGENT}),
    F.AGENT: frozenset({F.GUARDING, F.ECHO, F.FLUSHING, F.SILENT}),
    F.GUARDING: frozenset({F.AGENT, F.ECHO, F.FLUSHING, F.SILENT}),
    F.ECHO: frozenset({F.AGENT, F.FLUSHING, F.SILENT}),
    F.FLUSHING: frozenset({F.SILENT, F.AGENT}),
}
STAGE_MOVES: dict[Stage, frozenset[Stage]] = {
    S.ACTIVE: frozenset({S.CLOSING, S.TRANSFERRING, S.REPLACING, S.DONE}),
    S.CLOSING: frozenset({S.REPLACING, S.DONE}),
    S.TRANSFERRING: frozenset({S.ACTIVE, S.REPLACING, S.DONE}),
    S.REPLACING: frozenset({S.ACTIVE, S.CLOSING, S.TRANSFERRING, S.DONE}),
    S.DONE: frozenset(),
}


@dataclass
class _Talk:
    """The agent's side: responses and the items they play."""

    response: str | None = None  # response in progress
    greeting_asked: bool = False
    greeting: str | None = None  # response id of the greeting
    item_response: dict[str, str] = field(default_factory=dict)  # audio item -> its response
    playing: str | None = None  # the item last pushed to the playout buffer
    flushing: tuple[str, bool] | None = None  # (item, cancelled) of the barge-in under way
    cut: set[str] = field(default_factory=set)  # items and responses cut by a barge-in


@dataclass
class _Caller:
    sent_ms: int = 0  # caller audio sent, in the model's input-buffer timeline
    speech_start: int | None = None  # audio_start_ms of the caller's current speech
    speech_at: float = 0.0  # when its speech_started arrived
    barge_at: float | None = None  # the guard's end, if not passed yet
    echo_logged: bool = False  # agent.echo_ignored was logged for the current speech
    voice_ms: int = 0  # audio judged the caller, batch after batch, while echo is watched
    voice_at: float | None = None  # when the first of those batches was judged
    batch_ms: int = 0  # the last uplink batch sent
    judged: EchoVerdict | None = None  # the echo verdict that let the barge-in through
    digits: str = ""
    digits_at: float | None = None


@dataclass
class _Wait:
    """end_call or transfer_call: for the response, then the playout, then the REFER."""

    call_id: str
    target: str | None  # None: end_call
    until: float
    phase: str = "response"  # response | playout | refer


@dataclass
class _Session:
    started: float = 0.0
    reconnects: int = 0
    reason: str = ""  # of the replacement under way
    resume: Stage = Stage.ACTIVE  # the stage to go back to once replaced
    failed_over: bool = False  # on the embedded engine now (or on the way): never again
    speak: bool = False  # ask the new session for a response once it is up (a failover)
    lost: tuple[FailureKind, str] | None = None  # the model's loss a failover under way is for


class Conversation:
    def __init__(self, agent: AgentSettings, limits: RealtimeSettings) -> None:
        self.agent = agent
        self.limits = limits
        self.floor = Floor.SILENT
        self.stage = Stage.ACTIVE
        self.transcript: list[ce.Turn] = []
        self.answered_at = 0.0
        self._talk = _Talk()
        self._caller = _Caller()
        self._wait: _Wait | None = None
        self._session = _Session()

    @property
    def deadline(self) -> float | None:
        """When to feed :class:`Timer` (the earliest pending bound), or None."""
        bounds = [self._caller.barge_at, self._caller.digits_at]
        if self._wait is not None and self._wait.phase != "playout":
            bounds.append(self._wait.until)
        return min((b for b in bounds if b is not None), default=None)

    def handle(self, event: ce.Event, now: float, playout: ce.PlayoutView) -> list[ce.Action]:
        """Advance on ``event`` at ``now`` (media clock seconds); the actions, in order."""
        if self.stage is Stage.DONE:
            return []  # tool results, late events: the call is over
        if isinstance(event, ce.Model):
            return self._model(event.event, now, playout)
        if isinstance(event, ce.UplinkSent | ce.EchoJudged):
            return self._uplink(event, now, playout)
        if isinstance(event, ce.Timer):
            return self._timer(now, playout)
        if isinstance(event, ce.Flushed):
            return self._flushed(now, playout)
        if isinstance(event, ce.Dtmf):
            return self._dtmf(event.digit, now)
        if isinstance(event, ce.ToolDone):
            return self._tool_done(event)
        if isinstance(event, ce.Drained | ce.TransferResult):
            return self._transfer_step(event, now)
        if isinstance(event, ce.SessionLost | ce.ReplaceFailed):
            return self._lost(event)
        if isinstance(event, ce.SessionReplaced):
            return self._replaced(event, now)
        if isinstance(event, ce.CallEnded):
            return self._to_done([ce.End(event.cause)])
        self.answered_at = self._session.started = now
        self._session.failed_over = event.failed_over
        if not (event.greeting and self.agent.greeting):
            return []
        self._talk.greeting_asked = True
        return [ce.CreateResponse(self.agent.greeting)]

    # -- moves ----------------------------------------------------------------------------

    def _floor_to(self, floor: Floor) -> None:
        if floor is not self.floor:
            assert floor in FLOOR_MOVES[self.floor], (self.floor, floor)
            self.floor = floor

    def _stage_to(self, stage: Stage) -> None:
        assert stage in STAGE_MOVES[self.stage], (self.stage, stage)
        self.stage = stage

    def _to_done(self, actions: list[ce.Action]) -> list[ce.Action]:
        self._stage_to(Stage.DONE)
        self._wait = None
        self._caller.barge_at = self._caller.digits_at = None
        return actions

    # -- model events ---------------------------------------------------------------------

    def _model(self, event: ev.ModelEvent, now: float, playout: ce.PlayoutView) -> list[ce.Action]:
        caller = self._caller
        if isinstance(event, ev.SpeechStarted):
            caller.speech_start, caller.speech_at = event.audio_start_ms, now
            caller.echo_logged, caller.voice_ms, caller.voice_at = False, 0, None
            if self.floor is Floor.ECHO:
                self._floor_to(Floor.AGENT)
            return self._consider_barge_in(now, playout)
        if isinstance(event, ev.SpeechStopped):
            caller.speech_start = caller.barge_at = None
            if self.floor in (Floor.GUARDING, Floor.ECHO):
                self._floor_to(Floor.AGENT)
            return []
        if isinstance(event, ev.AgentTranscript | ev.CallerTranscript):
            if not event.text.strip():
                return []
            role = "agent" if isinstance(event, ev.AgentTranscript) else "caller"
            turn = ce.Turn(role, event.text.strip(), round(now - self.answered_at, 3))
            self.transcript.append(turn)
            return [ce.RecordTurn(turn)]
        if isinstance(event, ev.FunctionCall):
            return self._tool(event, now)
        if isinstance(event, ev.ServerError):
            fields = {"type": event.type, "code": event.code, "message": event.message}
            return [ce.Log("agent.server_error", fields, "warning")]
        return self._audio(event, now)

    def _audio(self, event: ev.ModelEvent, now: float) -> list[ce.Action]:
        """Audio, responses and format changes."""
        talk = self._talk
        if isinstance(event, ev.AudioDelta):
            if event.item_id in talk.cut or event.response_id in talk.cut:
                return []  # sent before the model saw the cancel: the caller cut it off
            talk.item_response[event.item_id] = event.response_id
            talk.playing = event.item_id
            if self.floor is Floor.SILENT:
                self._floor_to(Floor.AGENT)
            return [ce.Play(event.item_id, event.audio)]
        if isinstance(event, ev.AudioDone):
            return [ce.EndItem(event.item_id)]
        if isinstance(event, ev.ResponseCreated):
            talk.response = event.response_id
            if self._wait is not None and self._wait.phase == "playout":
                self._wait.phase = "response"  # more to say: wait for it too (same bound)
            if talk.greeting_asked and talk.greeting is None:
                talk.greeting = event.response_id
            return []
        if isinstance(event, ev.ResponseDone):
            return self._response_done(event, now)
        if isinstance(event, ev.SessionReported):
            fmt = event.output_format
            return [ce.SetOutputFormat(fmt)] if not event.created and fmt is not None else []
        return []

    def _response_done(self, event: ev.ResponseDone, now: float) -> list[ce.Action]:
        actions: list[ce.Action] = []
        if self._talk.response == event.response_id:
            self._talk.response = None
        if event.status == "failed":
            actions.append(ce.Log("agent.response_failed", {"error": event.error}, "warning"))
        actions += self._said_if_done(now)
        age = now - self._session.started
        if self.stage is Stage.ACTIVE and age > self.limits.max_session_minutes * 60:
            actions += self._replace("rotation")
        return actions

    # -- barge-in -------------------------------------------------------------------------

    def _consider_barge_in(self, now: float, playout: ce.PlayoutView) -> list[ce.Action]:
        """Interrupt once the caller has spoken long enough; a deadline if not yet."""
        talk, caller = self._talk, self._caller
        start = caller.speech_start
        if start is None or talk.playing is None or self.floor is Floor.FLUSHING:
            return []
        if playout.depth_samples == 0 and talk.response is None:
            return []  # nothing is being said to the caller
        greeting = talk.item_response.get(talk.playing) == talk.greeting
        guard = self.agent.greeting_guard_ms if greeting else self.agent.barge_in_min_ms
        heard = caller.sent_ms - start
        if heard >= guard and self.agent.echo_guard:
            again = self.floor is Floor.ECHO
            return [ce.JudgeEcho(ECHO_RECHECK_MS if again else heard)]
        if heard >= guard:
            return self._barge_in()
        if caller.barge_at is None:
            caller.barge_at = now + (guard - heard) / 1000
            self._floor_to(Floor.GUARDING)
        return []

    def _uplink(
        self, event: ce.UplinkSent | ce.EchoJudged, now: float, playout: ce.PlayoutView
    ) -> list[ce.Action]:
        """Caller audio the model received (judged again while it is echo), or a verdict."""
        if isinstance(event, ce.EchoJudged):
            return self._echo_judged(event.verdict, now)
        self._caller.sent_ms += event.ms
        self._caller.batch_ms = event.ms
        return self._consider_barge_in(now, playout) if self.floor is Floor.ECHO else []

    def _barge_in(self) -> list[ce.Action]:
        talk, caller = self._talk, self._caller
        item, talk.playing = talk.playing, None
        assert item is not None
        response, talk.response = talk.response, None
        caller.speech_start = caller.barge_at = None
        talk.flushing = (item, response is not None)
        talk.cut.update(x for x in (item, response) if x is not None)
        self._floor_to(Floor.FLUSHING)
        return [ce.Flush(), ce.Cancel()] if response is not None else [ce.Flush()]

    def _echo_judged(self, verdict: EchoVerdict, now: float) -> list[ce.Action]:
        """The caller's voice barges in; the agent's own coming back is watched."""
        caller = self._caller
        if caller.speech_start is None or self._talk.playing is None:
            return []  # acted on, or over, meanwhile
        if self.floor is Floor.FLUSHING:
            return []
        if not verdict.echo and self.floor is Floor.ECHO:
            if verdict.reason == "silent":
                caller.voice_ms, caller.voice_at = 0, None
                return []  # a pause in the echo: nothing new from the caller
            if caller.voice_at is None:
                caller.voice_at = now  # the first batch that showed the caller's voice
            caller.voice_ms += caller.batch_ms
            if caller.voice_ms < self._voice_needed(caller.batch_ms):
                return []  # not yet the guard's worth: it may be a cough or a line's glitch
            caller.speech_at = caller.voice_at
        if not verdict.echo and verdict.reason != "silent":
            caller.judged = verdict
            return self._barge_in()
        caller.voice_ms, caller.voice_at = 0, None  # echo, or nothing above the line's noise
        self._floor_to(Floor.ECHO)
        if caller.echo_logged:
            return []
        caller.echo_logged = True
        return [ce.Log("agent.echo_ignored", verdict.fields())]

    def _voice_needed(self, batch_ms: int) -> int:
        """The caller audio judged the caller over watched echo that barges in: the guard,
        and more than a glitch can fill (it stays ECHO_RECHECK_MS in the window judged)."""
        talk = self._talk
        playing = talk.playing
        greeting = playing is not None and talk.item_response.get(playing) == talk.greeting
        guard = self.agent.greeting_guard_ms if greeting else self.agent.barge_in_min_ms
        return max(guard, ECHO_RECHECK_MS + batch_ms)

    def _flushed(self, now: float, playout: ce.PlayoutView) -> list[ce.Action]:
        if self.floor is not Floor.FLUSHING or self._talk.flushing is None:
            return []
        (item, cancelled), self._talk.flushing = self._talk.flushing, None
        self._floor_to(Floor.AGENT if self._talk.playing is not None else Floor.SILENT)
        played_ms = playout.played_ms(item)
        stop_ms = round((now - self._caller.speech_at) * 1000, 1)
        fields = {"item": item, "played_ms": played_ms, "cancelled": cancelled, "stop_ms": stop_ms}
        judged, self._caller.judged = self._caller.judged, None
        if judged is not None:  # what the echo guard found instead of echo
            figures = judged.fields()
            fields |= {"echo_verdict": judged.reason} | {
                f"echo_{key}": figures[key] for key in ("correlation", "erle_db", "block_erle_db")
            }
            if self._caller.voice_at is not None:  # over watched echo: the voice judged
                fields["echo_voice_ms"] = self._caller.voice_ms
        return [
            ce.Truncate(item, played_ms),
            ce.Log("agent.barge_in", fields),
            ce.BargedIn(item, stop_ms, played_ms, cancelled),
        ]

    # -- timers and DTMF ------------------------------------------------------------------

    def _timer(self, now: float, playout: ce.PlayoutView) -> list[ce.Action]:
        caller, wait = self._caller, self._wait
        actions: list[ce.Action] = []
        if caller.digits_at is not None and caller.digits_at <= now:
            actions += self._send_digits()
        if caller.barge_at is not None and caller.barge_at <= now:
            caller.barge_at = None
            if self.floor is Floor.GUARDING:
                self._floor_to(Floor.AGENT)
            actions += self._consider_barge_in(now, playout)
        if wait is not None and wait.phase == "response" and wait.until <= now:
            wait.phase = "playout"  # the response never finished: what is queued, then go on
            actions.append(ce.AwaitPlayout(0.0))
        elif wait is not None and wait.phase == "refer" and wait.until <= now:
            actions += self._back_to_active(wait, f"the transfer to {wait.target} got no answer")
        return actions

    def _dtmf(self, digit: str, now: float) -> list[ce.Action]:
        self._caller.digits += digit
        if digit == "#":
            return self._send_digits()
        self._caller.digits_at = now + DTMF_GAP_SECONDS
        return []

    def _send_digits(self) -> list[ce.Action]:
        digits, self._caller.digits = self._caller.digits, ""
        self._caller.digits_at = None
        if not digits:
            return []
        text = ce.SendText(f"[The caller pressed the keys: {digits}]")
        more: list[ce.Action] = [ce.CreateResponse()] if self._talk.response is None else []
        return [ce.Log("agent.dtmf", {"digits": digits}), text, *more]

    # -- tools ----------------------------------------------------------------------------

    def _tool(self, call: ev.FunctionCall, now: float) -> list[ce.Action]:
        log = ce.Log("agent.tool", {"tool": call.name, "arguments": call.arguments})
        try:
            arguments = json.loads(call.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            return [log, *self._answer(call.call_id, "the arguments are not a JSON object")]
        ending = call.name in (tools.END_CALL.name, tools.TRANSFER_CALL)
        if ending and self.stage is not Stage.ACTIVE:
            return [log, ce.FunctionOutput(call.call_id, {"error": f"the call is {self.stage}"})]
        if call.name == tools.END_CALL.name:
            self._stage_to(Stage.CLOSING)
            self._wait = _Wait(call.call_id, None, now + END_CALL_MAX_WAIT)
            return [log, ce.FunctionOutput(call.call_id, {"ok": True}), *self._said_if_done(now)]
        if call.name == tools.SEND_DTMF.name:
            digits = str(arguments.get("digits", ""))
            if not digits or any(d not in tools.DTMF_DIGITS for d in digits):
                return [log, *self._answer(call.call_id, "digits must be 0-9, *, # or A-D")]
            return [log, ce.SendDtmf(call.call_id, digits)]
        allowed = tools.transfer_targets(self.agent)
        if call.name == tools.TRANSFER_CALL and allowed:
            target = str(arguments.get("extension") or "") or allowed[0]
            if target not in allowed:
                error = f"cannot transfer to {target!r}; allowed: {allowed}"
                return [log, *self._answer(call.call_id, error)]
            self._stage_to(Stage.TRANSFERRING)
            self._wait = _Wait(call.call_id, target, now + END_CALL_MAX_WAIT)
            return [log, *self._said_if_done(now)]
        for tool in self.agent.tools:
            if tool.name == call.name:
                return [log, ce.RunTool(call.call_id, tool, arguments)]
        return [log, *self._answer(call.call_id, f"unknown tool {call.name!r}")]

    def _answer(self, call_id: str, error: str) -> list[ce.Action]:
        return [ce.FunctionOutput(call_id, {"error": error}), ce.CreateResponse()]

    def _tool_done(self, event: ce.ToolDone) -> list[ce.Action]:
        wait = self._wait
        if wait is not None and wait.call_id == event.call_id and wait.target is not None:
            self._to_active()  # the REFER was refused
        return [ce.FunctionOutput(event.call_id, event.output), ce.CreateResponse()]

    def _to_active(self) -> None:
        """The end_call/transfer wait is over: the conversation goes on (once replaced)."""
        self._wait = None
        if self.stage is Stage.REPLACING:
            self._session.resume = Stage.ACTIVE
        else:
            self._stage_to(Stage.ACTIVE)

    def _said_if_done(self, now: float) -> list[ce.Action]:
        """end_call/transfer: once their response is done, wait for the playout to drain."""
        wait = self._wait
        if wait is None or wait.phase != "response" or self._talk.response is not None:
            return []
        wait.phase = "playout"
        return [ce.AwaitPlayout(max(0.0, wait.until - now))]

    def _transfer_step(self, event: ce.Drained | ce.TransferResult, now: float) -> list[ce.Action]:
        wait = self._wait
        if wait is None:
            return []
        if isinstance(event, ce.Drained) and wait.phase == "playout":
            if wait.target is None:
                return self._to_done([ce.HangUp("end_call")])
            wait.phase, wait.until = "refer", now + TRANSFER_SECONDS
            return [ce.Transfer(wait.call_id, wait.target)]
        if not isinstance(event, ce.TransferResult) or wait.phase != "refer":
            return []
        if 200 <= event.code < 300:
            log = ce.Log("agent.transferred", {"target": wait.target})
            return self._to_done([log, ce.HangUp("transferred")])
        failed = f"the transfer to {wait.target} failed: {event.code} {event.reason}"
        return self._back_to_active(wait, failed)

    def _back_to_active(self, wait: _Wait, error: str) -> list[ce.Action]:
        self._to_active()
        return self._answer(wait.call_id, error)

    # -- the model session ----------------------------------------------------------------

    def _replace(self, reason: str, after: float = 0.0) -> list[ce.Action]:
        if self.stage is not Stage.REPLACING:
            self._session.resume = self.stage
            self._stage_to(Stage.REPLACING)
        self._session.reason = reason
        return [ce.ReplaceSession(reason, tuple(self.transcript[-REPLAY_TURNS:]), after)]

    def _lost(self, event: ce.SessionLost | ce.ReplaceFailed) -> list[ce.Action]:
        session = self._session
        if isinstance(event, ce.SessionLost) and self.stage is Stage.REPLACING:
            return []  # the old session's end, while the new one is being opened
        if event.retryable and session.reconnects < self.limits.max_reconnects:
            session.reconnects += 1
            fields = {"error": event.error, "attempt": session.reconnects}
            after = RECONNECT_PAUSE if isinstance(event, ce.ReplaceFailed) else 0.0
            return [
                ce.Log("agent.reconnecting", fields, "warning"),
                *self._replace("reconnect", after),
            ]
        if self._may_fail_over():
            return self._fail_over(event)
        fields = {"kind": event.kind, "error": event.error}
        error = event.error
        if session.lost is not None:  # the failover failed: the one failure names both
            kind, cloud = session.lost
            session.lost = None
            error = f"{error} (on the embedded engine, after {kind}: {cloud})"
        return self._to_done(
            [
                ce.Log("agent.session_lost", fields, "error"),
                ce.ReportFailure(event.kind, error),
                ce.Apologise(),
                ce.End(f"model {event.kind}: {event.error}"),
            ]
        )

    def _may_fail_over(self) -> bool:
        agent = self.agent
        local = agent.fallback is Fallback.LOCAL and agent.backend is not Backend.LOCAL
        return local and not self._session.failed_over

    def _fail_over(self, event: ce.SessionLost | ce.ReplaceFailed) -> list[ce.Action]:
        """The cloud model is lost for good: the embedded engine takes the call over, with
        reconnects of its own (bounded: never a second failover). It is reported once the
        engine's session is up. While an end_call or transfer is finishing (its goodbye
        playing, the REFER sent) there is nothing more to say: no bridge phrase and no
        failover on the record, the model's failure only; the engine's session is there for
        the call to finish (or to go on if the REFER is refused)."""
        session = self._session
        session.failed_over = True
        session.reconnects = 0
        fields: dict[str, object] = {"kind": event.kind, "error": event.error}
        fields |= {"phase": "session", "to": "local"}
        if self._finishing():
            fields["finishing"] = True
            return [
                ce.Log("agent.failover", fields, "warning"),
                ce.ReportFailure(event.kind, event.error),
                *self._replace("failover"),
            ]
        session.speak = True
        session.lost = (event.kind, event.error)
        log = ce.Log("agent.failover", fields, "warning")
        return [log, ce.Bridge(), *self._replace("failover")]

    def _finishing(self) -> bool:
        """An end_call or transfer is finishing the call (or will once replaced)."""
        stage = self._session.resume if self.stage is Stage.REPLACING else self.stage
        return stage in (Stage.CLOSING, Stage.TRANSFERRING)

    def _replaced(self, event: ce.SessionReplaced, now: float) -> list[ce.Action]:
        if self.stage is not Stage.REPLACING:
            return []
        talk, caller, session = self._talk, self._caller, self._session
        self._stage_to(session.resume)
        session.started = now
        caller.sent_ms = 0  # the new session's input buffer starts now
        caller.speech_start = caller.barge_at = None
        talk.response = None
        talk.playing = talk.flushing = None  # old items cannot be truncated in the new session
        self._floor_to(Floor.SILENT)
        fields = {"reason": session.reason, "replayed": min(len(self.transcript), REPLAY_TURNS)}
        fmt = event.output_format
        actions: list[ce.Action] = [ce.SetOutputFormat(fmt)] if fmt is not None else []
        note = ce.SessionNote("replaced", session.reason)
        actions.append(ce.Log("agent.session_replaced", fields))
        if session.lost is not None:  # a failover, done: for the record
            actions.append(ce.ReportFailover(*session.lost))
            session.lost = None
        actions += [note, *self._said_if_done(now)]
        speak, session.speak = session.speak, False
        if speak and session.resume is Stage.ACTIVE:
            actions.append(ce.CreateResponse())  # after the bridge phrase, the engine speaks
        return actions
