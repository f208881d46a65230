"""Webhook delivery: Standard Webhooks signatures, a retry schedule, the deliverer task.

Each webhook lives in the store's outbox from the moment its call is final. The deliverer
POSTs the stored body (the same bytes every time) with the headers of the Standard Webhooks
specification:

- ``webhook-id``: stable across retries, so receivers can drop duplicates;
- ``webhook-timestamp``: Unix seconds of this attempt;
- ``webhook-signature``: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` when
  ``webhooks.secret`` is set. A secret of the form ``whsec_<base64>`` is used as the decoded
  key (as Standard Webhooks libraries do); any other secret is used as its UTF-8 bytes.

2xx means delivered; 410 Gone stops retrying; anything else (other status, timeout,
connection error) is retried after 0, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h (+-10 % jitter),
or after ``Retry-After`` when the receiver sends one. Every attempt is recorded. Because the
outbox is durable, pending webhooks are delivered after a crash or restart. An outbound
call's ``call.progress`` events are stale news past the first wait: one retry, then abandoned.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import hmac
import random
import time
from collections.abc import Sequence

import httpx

from config.schema import DEFAULT_RETRY_SECONDS
from daemon import __version__
from daemon.logs import get_logger
from daemon.observe import CallObserver, NullObserver
from daemon.store import Store, Webhook

log = get_logger(__name__)

# The first attempt is immediate; these are the waits after each failed one
# ([webhooks] retry_seconds).
RETRY_WAITS: tuple[float, ...] = DEFAULT_RETRY_SECONDS
MAX_RETRY_AFTER = 86400.0
CONCURRENT_DELIVERIES = 4
# Retries of a progress event (ringing, answered): the first wait only.
PROGRESS_RETRIES = 1


def signing_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    message = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), message, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def retry_delay(
    failed_attempts: int,
    retry_after: float | None = None,
    waits: Sequence[float] = RETRY_WAITS,
    rng: random.Random | None = None,
) -> float | None:
    """Seconds until the next attempt after ``failed_attempts`` failures; None: give up."""
    if failed_attempts > len(waits):
        return None
    if retry_after is not None:
        return min(max(0.0, retry_after), MAX_RETRY_AFTER)
    base = waits[failed_attempts - 1]
    return base * (rng or random).uniform(0.9, 1.1)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


class Deliverer:
    """Delivers due outbox rows until stopped; ``wake()`` after queueing a webhook."""

    def __init__(
        self,
        store: Store,
        secret: str = "",
        timeout: float = 10.0,
        waits: Sequence[float] = RETRY_WAITS,
        observer: CallObserver | None = None,
    ) -> None:
        self._store = store
        self._secret = secret
        self._waits = tuple(waits)
        self._observer = observer if observer is not None else NullObserver()
        self._client = httpx.AsyncClient(
            timeout=timeout,
            follow_redirects=False,
            headers={"user-agent": f"sipai/{__version__}"},
        )
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._limit = asyncio.Semaphore(CONCURRENT_DELIVERIES)
        self._in_flight: set[str] = set()
        self._deliveries: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-deliverer")

    def wake(self) -> None:
        self._wake.set()

    async def send_message(self, url: str, call_id: str | None, message: str) -> Webhook:
        """Queue the receptionist's ``inbound.message`` webhook to ``url`` in the outbox, with
        the message on its call, and deliver it like call results: signed, retried, kept
        across restarts."""
        payload = {
            "type": "inbound.message",
            "call_id": call_id,
            "message": message,
            "at": time.time(),
        }
        webhook = await self._store.queue_message(call_id, message, url, payload)
        self.wake()
        return webhook

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # The attempts in flight end before their client closes: closing a pool with a
        # request still connecting can wait for ever.
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        await self._client.aclose()

    async def _run(self) -> None:
        tasks = self._deliveries
        try:
            while True:
                now = time.time()
                for webhook in await self._store.due_webhooks(now):
                    if webhook.webhook_id in self._in_flight:
                        continue
                    self._in_flight.add(webhook.webhook_id)
                    task = asyncio.create_task(self._deliver(webhook))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                next_due = await self._store.next_webhook_due()
                wait = 60.0 if next_due is None else max(0.05, min(60.0, next_due - time.time()))
                self._wake.clear()
                # asyncio.timeout, not wait_for: on Python 3.11 a cancel that comes as the
                # wake-up is set is lost inside wait_for, and stop() then waits for ever.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()
        finally:
            for task in tasks:
                task.cancel()

    async def _deliver(self, webhook: Webhook) -> None:
        try:
            async with self._limit:
                await self._attempt(webhook)
        finally:
            self._in_flight.discard(webhook.webhook_id)
            self._wake.set()

    async def _attempt(self, webhook: Webhook) -> None:
        started = time.time()
        timestamp = int(started)
        body = webhook.body.encode()
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook.webhook_id,
            "webhook-timestamp": str(timestamp),
        }
        if self._secret:
            headers["webhook-signature"] = sign(self._secret, webhook.webhook_id, timestamp, body)
        status: int | None = None
        error: str | None = None
        retry_after: float | None = None
        try:
            response = await self._client.post(webhook.url, content=body, headers=headers)
            status = response.status_code
            retry_after = parse_retry_after(response.headers.get("retry-after"), time.time())
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration_ms = (time.time() - started) * 1000
        attempts = webhook.attempts + 1
        if status is not None and 200 <= status < 300:
            state, next_at = "delivered", None
        elif status == 410:
            state, next_at = "gone", None
        else:
            waits = (
                self._waits[:PROGRESS_RETRIES] if webhook.kind == "call.progress" else self._waits
            )
            delay = retry_delay(attempts, retry_after, waits)
            state = "pending" if delay is not None else "abandoned"
            next_at = time.time() + delay if delay is not None else None
            if error is None:
                error = f"HTTP {status}"
        await self._store.record_attempt(
            webhook.webhook_id,
            started_at=started,
            duration_ms=duration_ms,
            status_code=status,
            error=error,
            state=state,
            next_attempt_at=next_at,
        )
        self._observer.webhook_attempted(webhook.kind, state, webhook.created_at, time.time())
        log.info(
            "webhook.attempt",
            webhook_id=webhook.webhook_id,
            kind=webhook.kind,
            call_id=webhook.call_id,
            attempt=attempts,
            status_code=status,
            error=error,
            state=state,
            retry_in=None if next_at is None else round(next_at - time.time(), 1),
        )
