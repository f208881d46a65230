"""Outbound notification calls: the durable queue between ``POST /call`` and the call flow.

A request is stored as ``queued`` before the API answers, so a restart loses nothing. Up to
``calls.max_concurrent`` calls run at once, in FIFO order; at most ``calls.max_queued`` wait
(a request beyond is refused before anything is stored). A call is marked ``dialing`` in
the store before its runner starts; at start-up, calls found ``dialing``/``ringing``/
``answered`` belonged to a process that died and are finished as ``failed`` (never dialled
twice), and ``queued`` ones are resumed in order.

The work of one call (dial, speak, listen, match) is a :class:`CallRunner`; the service
records the statuses it reports and writes the final result together with its webhook, the
call's black box and its recording; a result known before the call ends (``report("decided",
result=...)``: the closing words still playing) is written with its webhook at once, and the
call's end (end time, black box, recording) is attached when the runner returns. A request
with an ``Idempotency-Key`` claims it in the transaction that stores the call. A request's
``progress_events`` (``ringing``, ``answered``, beyond the contract) each queue a
``call.progress`` webhook to its ``callback_url`` when the call reaches that status; the result
webhook stays the contract's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from daemon.blackbox import RecordingInfo
from daemon.logs import get_logger
from daemon.observe import CallObserver, FinishedCall, NullObserver
from daemon.store import FINAL_STATUSES, IN_FLIGHT_STATUSES, IdempotencyClaim, Store

log = get_logger(__name__)

# report(status, **columns): a status the call reached, with columns to store. The pseudo-status
# DECIDED (``report("decided", result={...CallResult fields})``) is never stored as a status:
# the result is known before the call ends (the closing words still play), so the call is
# finished at once (final status, result and webhook); what the call leaves when it ends (end
# time, black box, recording) is attached when its runner returns, without a second webhook.
Report = Callable[..., Awaitable[None]]
DECIDED = "decided"
BULKY = frozenset({"black_box", "recording"})  # CallResult fields the log line leaves out


@dataclass(frozen=True)
class CallResult:
    """What a finished call reports: the contract's WebhookPayload fields (minus ids)."""

    status: str  # completed | no_answer | failed | busy
    duration_seconds: float = 0.0
    message_played: bool = False
    choice_response: str | None = None
    choice_raw_text: str | None = None
    error: str | None = None
    sip_code: int | None = None
    # beyond the contract, sent only when the request asked for machine detection
    answered_by: str | None = None  # human | machine | unknown; None when never answered
    machine_detection_ms: int | None = None  # callee audio from the answer to the decision
    # beyond the webhook: the call's black box, its recording, when the INVITE went out
    black_box: dict[str, Any] | None = None
    recording: dict[str, Any] | None = None  # daemon.blackbox.RecordingInfo as a dict
    invite_at: float | None = None


class CallRunner(Protocol):
    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        """Carry out one call; ``report("ringing")`` / ``report("answered")`` on the way."""
        ...


class OutboundUnavailable(Exception):
    """No call flow is configured to carry out outbound calls."""


class QueueFull(Exception):
    """The queue holds ``calls.max_queued`` calls: the request is refused, nothing stored."""

    def __init__(self, max_queued: int) -> None:
        super().__init__(
            f"the outbound queue is full ({max_queued} calls waiting, calls.max_queued): "
            f"retry after {QUEUE_FULL_RETRY_SECONDS} s"
        )
        self.retry_after = QUEUE_FULL_RETRY_SECONDS


# Retry-After when the queue is full: about one call's length, the time the running calls
# take to make room.
QUEUE_FULL_RETRY_SECONDS = 60


class OutboundService:
    def __init__(
        self,
        store: Store,
        runner: CallRunner | None,
        max_concurrent: int,
        on_final: Callable[[], None] = lambda: None,
        *,
        max_queued: int,
        observer: CallObserver | None = None,
    ) -> None:
        """``on_final``: called whenever a webhook was queued (the deliverer's wake)."""
        self._store = store
        self._observer = observer if observer is not None else NullObserver()
        self.runner = runner  # set once the call flow is ready (speech loaded)
        self._slots = asyncio.Semaphore(max_concurrent)
        self._queue: asyncio.Queue[str] = asyncio.Queue()  # call ids, FIFO
        self.max_queued = max_queued
        self._admitting = 0  # submissions past the bound check, still being stored
        self._on_final = on_final
        self._numbers = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()  # running calls and their early finishes
        self._loop_task: asyncio.Task[None] | None = None
        self.active = 0
        self._idle = asyncio.Event()  # set whenever a running call finishes
        # Called (call_id, status, record) after each status is stored: the console's feed.
        self.status_listeners: list[Callable[[str, str, dict[str, Any]], None]] = []

    @property
    def available(self) -> bool:
        return self.runner is not None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def new_call_id(self) -> str:
        return f"out-{int(time.time())}-{next(self._numbers)}"

    async def recover(self) -> None:
        """Finish what a previous process left in flight and reload its queue, in order.

        Runs before the API takes requests, so nothing is queued twice."""
        for record in await self._store.calls_with_status(IN_FLIGHT_STATUSES):
            error = f"the daemon stopped while the call was {record['status']}"
            await self._finish(record["call_id"], record, CallResult("failed", error=error))
            log.warning("call.abandoned", call_id=record["call_id"], status=record["status"])
        for record in await self._store.calls_without_end():  # stopped during the closing
            call_id = record["call_id"]
            await self._store.attach_outcome(call_id, ended_at=record["updated_at"])
            log.warning("call.end_recovered", call_id=call_id, status=record["status"])
            self._observer.call_finished(
                FinishedCall(
                    call_id=call_id,
                    direction="outbound",
                    status=record["status"],
                    end_cause=(record["result"] or {}).get("error") or "",
                    black_box=None,
                    recording=None,
                    created_at=record["created_at"],
                    invite_at=None,
                )
            )
        for record in await self._store.calls_with_status(frozenset({"queued"})):
            self._queue.put_nowait(record["call_id"])
        if self._queue.qsize():
            log.info("calls.resumed", queued=self._queue.qsize())

    def start(self) -> None:
        """Start placing queued calls (once the SIP side is up)."""
        self._loop_task = asyncio.create_task(self._run(), name="outbound")

    async def submit(
        self, call_id: str, request: dict[str, Any], idempotency: IdempotencyClaim | None = None
    ) -> None:
        """Store and queue a validated request (DuplicateCallId if the id is taken, QueueFull
        when ``max_queued`` calls wait already, IdempotentReplay when ``idempotency``'s key was
        claimed first; then nothing is stored)."""
        if self.runner is None:
            raise OutboundUnavailable(
                "outbound calls are not available: no call flow is configured in this build"
            )
        if self._queue.qsize() + self._admitting >= self.max_queued:
            raise QueueFull(self.max_queued)
        self._admitting += 1
        try:
            await self._store.insert_call(call_id, request, idempotency=idempotency)
        finally:
            self._admitting -= 1
        self._queue.put_nowait(call_id)
        log.info("call.queued", call_id=call_id, extension=request["extension"])
        self._status(call_id, "queued", {**request, "created_at": time.time()})

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        running = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in running:
            task.cancel()
        for task in running:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def drain(self) -> None:
        """Return once no call is running (queued ones stay queued for the next start)."""
        while self.active:
            self._idle.clear()
            await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            call_id = await self._queue.get()
            task = asyncio.create_task(self._call(call_id), name=f"call-{call_id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, call_id: str) -> None:
        self.active += 1
        try:
            record = await self._store.get_call(call_id)
            if record is None or record["status"] != "queued":
                return
            await self._store.update_call(call_id, status="dialing", dialed_at=time.time())
            self._status(call_id, "dialing", record)

            decided: list[asyncio.Task[CallResult | None]] = []  # the early finish, once reported

            async def report(status: str, **columns: Any) -> None:
                if status == DECIDED:
                    if not decided:
                        early = asyncio.create_task(
                            self._decide(call_id, record, columns.get("result")),
                            name=f"decided-{call_id}",
                        )
                        self._tasks.add(early)
                        early.add_done_callback(self._tasks.discard)
                        decided.append(early)
                    with contextlib.suppress(Exception):  # logged by _call; it finishes the call
                        await asyncio.shield(decided[0])
                    return
                if await self._store.update_call(call_id, status=status, **columns):
                    self._status(call_id, status, record)
                    await self.progress(call_id, record, status)  # not once the call is final

            assert self.runner is not None
            try:
                result = await self.runner.run(call_id, record["request"], report)
            except asyncio.CancelledError:
                early = decided[0] if decided and decided[0].done() else None
                if early is not None and not early.cancelled() and early.exception() is None:
                    decision = early.result()
                    if decision is not None:  # final already: it still gets its end
                        stopped = CallResult("failed", error="the daemon stopped during the call")
                        await asyncio.shield(self._attach(call_id, record, decision, stopped))
                raise
            except Exception as exc:
                log.error("call.runner_failed", call_id=call_id, error=repr(exc))
                result = CallResult("failed", error=f"internal error: {exc}")
            early_result = None
            if decided:
                try:
                    early_result = await decided[0]
                except Exception as exc:  # the early finish failed: the end result finishes it
                    log.error("call.decided_failed", call_id=call_id, error=repr(exc))
            if early_result is not None:
                await self._attach(call_id, record, early_result, result)
            else:
                await self._finish(call_id, record, result)
        finally:
            self.active -= 1
            self._slots.release()
            self._idle.set()

    def _status(self, call_id: str, status: str, record: dict[str, Any]) -> None:
        for listener in self.status_listeners:
            try:
                listener(call_id, status, record)
            except Exception as exc:  # a listener never stops the call
                log.error("call.status_listener_failed", call_id=call_id, error=repr(exc))

    async def progress(self, call_id: str, record: dict[str, Any], status: str) -> None:
        """Queue the ``call.progress`` webhook of ``status`` if the request asked for it."""
        request = record["request"]
        url = request.get("callback_url")
        if not url or status not in (request.get("progress_events") or ()):
            return
        payload = {
            "type": "call.progress",
            "call_id": call_id,
            "extension": record["extension"],
            "status": status,
            "at": time.time(),
        }
        webhook = await self._store.queue_progress(call_id, url, payload)
        log.info(
            "call.progress_queued", call_id=call_id, status=status, webhook_id=webhook.webhook_id
        )
        self._on_final()

    async def _decide(self, call_id: str, record: dict[str, Any], data: Any) -> CallResult | None:
        """Finish the call with the result its runner decided before the call ended; None
        (logged, and the call finishes when it ends, as without) if that result is
        malformed."""
        try:
            result = CallResult(**data)
            if result.status not in FINAL_STATUSES:
                raise ValueError(f"{result.status!r} is not a final status")
            _payload(call_id, record, result)  # every field the webhook needs, of its type
            for name, kind in _DECIDED_TYPES.items():
                value = getattr(result, name)
                if (value is not None or name == "message_played") and not isinstance(value, kind):
                    raise TypeError(f"{name} is {type(value).__name__}, not {kind}")
        except (TypeError, ValueError) as exc:
            log.error("call.decided_invalid", call_id=call_id, error=str(exc))
            return None
        return result if await self._finish(call_id, record, result, early=True) else None

    async def _attach(
        self, call_id: str, record: dict[str, Any], decided: CallResult, result: CallResult
    ) -> None:
        """The call ended after its ``decided`` result went out: store its end time, black
        box and recording (the result and its webhook stay, whatever the end ``result``
        says), then tell the status listeners and the observer."""
        recording = _recording(call_id, result.recording)
        attached = await self._store.attach_outcome(
            call_id, ended_at=time.time(), black_box=result.black_box, recording=recording
        )
        status = decided.status
        if attached:  # the console's detail gets the end, the black box and the recording
            self._status(call_id, status, record)
        log.info(
            "call.ended",
            call_id=call_id,
            status=status,
            ended_as=result.status,
            error=result.error,
            recording=recording.path if recording is not None else None,
        )
        self._observer.call_finished(
            FinishedCall(
                call_id=call_id,
                direction="outbound",
                status=status,
                end_cause=decided.error or "",
                black_box=result.black_box,
                recording=recording,
                created_at=record["created_at"],
                invite_at=result.invite_at,
            )
        )

    async def _finish(
        self, call_id: str, record: dict[str, Any], result: CallResult, *, early: bool = False
    ) -> bool:
        """Store the final result with its webhook (once: nothing, and False, if the call is
        final already). ``early``: the call has not ended yet, so no end time, black box or
        recording, and the observer hears of it once they are attached."""
        payload = _payload(call_id, record, result)
        fields: dict[str, Any] = {} if early else {"ended_at": time.time()}
        if result.sip_code is not None:
            fields["sip_code"] = result.sip_code
        recording = _recording(call_id, result.recording)
        stored, webhook = await self._store.finish_call_once(
            call_id,
            result.status,
            payload,
            black_box=result.black_box,
            recording=recording,
            **fields,
        )
        if not stored:
            return False
        log.info(
            "call.finished",
            call_id=call_id,
            **{k: v for k, v in asdict(result).items() if v is not None and k not in BULKY},
            recording=recording.path if recording is not None else None,
            early=early,
        )
        if webhook is not None:
            self._on_final()
        self._status(call_id, result.status, record)
        if early:
            return True
        self._observer.call_finished(
            FinishedCall(
                call_id=call_id,
                direction="outbound",
                status=result.status,
                end_cause=result.error or "",
                black_box=result.black_box,
                recording=recording,
                created_at=record["created_at"],
                invite_at=result.invite_at,
            )
        )
        return True


def _payload(call_id: str, record: dict[str, Any], result: CallResult) -> dict[str, Any]:
    """The result webhook's body (TypeError if the duration is not a number)."""
    payload = {
        "call_id": call_id,
        "status": result.status,
        "extension": record["extension"],
        "duration_seconds": round(result.duration_seconds, 3),
        "message_played": result.message_played,
        "choice_response": result.choice_response,
        "choice_raw_text": result.choice_raw_text,
        "error": result.error,
    }
    if record["request"].get("machine_detection"):
        payload["answered_by"] = result.answered_by
        payload["machine_detection_ms"] = result.machine_detection_ms
    return payload


# The types of a decided result's webhook fields (None is allowed but for the bool).
_DECIDED_TYPES: dict[str, type | tuple[type, ...]] = {
    "message_played": bool,
    "choice_response": str,
    "choice_raw_text": str,
    "error": str,
    "answered_by": str,
    "machine_detection_ms": (int, float),
}


def _recording(call_id: str, data: dict[str, Any] | None) -> RecordingInfo | None:
    """The worker's report of the call's recording; a malformed one is logged, not stored (the
    result still is)."""
    if data is None:
        return None
    try:
        return RecordingInfo(**data)
    except TypeError as exc:
        log.error("call.recording_invalid", call_id=call_id, error=str(exc))
        return None
