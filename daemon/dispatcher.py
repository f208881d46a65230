"""The outbound queue: calls wait in FIFO order for a free slot on any SIP worker.

``submit`` returns at once with a future that resolves to ``(worker, call)`` when the call
has been dialled, or fails if dialling failed. Whenever the pool reports capacity (a call ended,
a worker came up), the head of the queue is tried again; order is kept: a later call never
overtakes an earlier one. Runs on the supervisor's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

from daemon.logs import get_logger
from daemon.workers import NoFreeWorker, WorkerPool

log = get_logger(__name__)

Placement = tuple[int, str]  # (worker index, that worker's call id)


@dataclass
class OutboundJob:
    job_id: str
    target: str
    ring_timeout: float
    placed: asyncio.Future[Placement] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Dispatcher:
    def __init__(self, pool: WorkerPool, max_concurrent: int | None = None) -> None:
        self._pool = pool
        self._max_concurrent = max_concurrent
        self._queue: deque[OutboundJob] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        pool.capacity_listeners.append(self._wake.set)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dispatcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._queue:
            if not job.placed.done():
                job.placed.set_exception(NoFreeWorker("the daemon is stopping"))
        self._queue.clear()

    def submit(self, job_id: str, target: str, ring_timeout: float) -> OutboundJob:
        job = OutboundJob(job_id, target, ring_timeout)
        self._queue.append(job)
        self._wake.set()
        return job

    def _has_room(self) -> bool:
        if self._max_concurrent is not None and self._pool.active_calls >= self._max_concurrent:
            return False
        return self._pool.free_slots > 0

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self._has_room():
                job = self._queue[0]
                try:
                    placement = await self._pool.make_call(job.target, job.ring_timeout)
                except NoFreeWorker:
                    break  # lost a race for the slot: keep the job at the head, wait
                except Exception as exc:
                    self._queue.popleft()
                    log.warning("dispatch.failed", job_id=job.job_id, error=str(exc))
                    if not job.placed.done():
                        job.placed.set_exception(exc)
                    continue
                self._queue.popleft()
                log.info(
                    "dispatch.placed",
                    job_id=job.job_id,
                    worker=placement[0],
                    call_id=placement[1],
                    queued=len(self._queue),
                )
                if not job.placed.done():
                    job.placed.set_result(placement)
