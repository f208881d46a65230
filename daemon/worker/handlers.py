"""The requests a SIP worker process serves: the supervisor's end of the worker's IPC.

``ping`` (health and leak counters: tasks, file descriptors, conference ports, calls, the
outbound calls in progress with the samples and SHA-256 of the audio each one holds),
``shutdown``, ``outbound`` (a whole notification call, see :func:`daemon.worker.flows.run_outbound`)
and the call commands ``make_call``, ``answer``, ``reject``, ``hangup``, ``send_dtmf``,
``transfer``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from daemon.worker import flows
from sip.ipc import Body, UnknownRequest

if TYPE_CHECKING:
    from daemon.worker.process import WorkerProcess


class WorkerHandlers:
    def __init__(self, process: WorkerProcess) -> None:
        self.process = process

    async def serve(self, type_: str, body: Body) -> Body:
        process = self.process
        ctx = process.context
        if type_ == "ping":
            if ctx is None:
                return {"starting": True}
            worker = ctx.worker
            diagnostics = await worker.diagnostics()
            return {
                "registered": worker.registration.registered,
                **diagnostics,
                "tasks": len(asyncio.all_tasks()),  # for leak checks: no task outlives a call
                "outbound": ctx.outbound,
                "fds": len(os.listdir("/proc/self/fd")),
            }
        if ctx is None:
            raise RuntimeError("the SIP worker is still starting")
        worker = ctx.worker
        handlers: dict[str, Callable[[], Awaitable[Any]]] = {
            "make_call": lambda: worker.make_call(body["target"], float(body["ring_timeout"])),
            "answer": lambda: worker.answer(body["call"]),
            "reject": lambda: worker.reject(body["call"], int(body.get("code", 486))),
            "hangup": lambda: worker.hangup(body["call"]),
            "send_dtmf": lambda: worker.send_dtmf(body["call"], body["digits"]),
            "transfer": lambda: worker.transfer(body["call"], body["target"]),
        }
        if type_ == "shutdown":
            process.stop.set()
            return {}
        if type_ == "outbound":
            return await flows.run_outbound(ctx, body)
        handler = handlers.get(type_)
        if handler is None:
            raise UnknownRequest(type_)
        result = await handler()
        return {"call": result} if type_ == "make_call" else {}
