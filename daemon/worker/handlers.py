"""The requests a SIP worker process serves: the worker's end of its IPC.

``ping`` (health and leak counters: tasks, file descriptors, conference ports, calls, the
outbound calls in progress with the samples and SHA-256 of the audio each one holds, IPC
frames it could not read), ``shutdown``, ``outbound`` (a whole notification call, see
:func:`daemon.worker.flows.run_outbound`), and the call commands ``make_call`` and ``hangup``.
:meth:`WorkerHandlers.table` is what the worker's connection serves; any other request type
is answered "unknown request type".
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

from daemon.ipc import messages as msg
from daemon.ipc.connection import RequestHandlers
from daemon.worker import flows

if TYPE_CHECKING:
    from daemon.worker.process import WorkerProcess


class WorkerHandlers:
    def __init__(self, process: WorkerProcess) -> None:
        self.process = process

    def table(self) -> RequestHandlers:
        return {
            msg.Ping: self.ping,
            msg.Shutdown: self.shutdown,
            msg.Outbound: self.outbound,
            msg.MakeCall: self.make_call,
            msg.Hangup: self.hangup,
        }

    def _context(self) -> flows.FlowContext:
        ctx = self.process.context
        if ctx is None:
            raise RuntimeError("the SIP worker is still starting")
        return ctx

    async def ping(self, _: msg.Ping) -> msg.PingReply:
        process = self.process
        ctx = process.context
        if ctx is None:
            return msg.PingReply(starting=True)
        diagnostics: dict[str, Any] = dict(await ctx.worker.diagnostics())
        refused = {
            key.removeprefix("refused_"): diagnostics.pop(key)
            for key in list(diagnostics)
            if key.startswith("refused_")
        }
        return msg.PingReply(
            registered=ctx.worker.registration.registered,
            **diagnostics,
            refused=refused,
            tasks=len(asyncio.all_tasks()),  # for leak checks: no task outlives a call
            outbound={k: msg.HeldCall.model_validate(v) for k, v in ctx.outbound.items()},
            fds=len(os.listdir("/proc/self/fd")),
            bad_frames=process.services.conn.bad_frames if process.services else 0,
        )

    async def shutdown(self, _: msg.Shutdown) -> msg.Done:
        self.process.stop.set()
        return msg.Done()

    async def outbound(self, request: msg.Outbound) -> msg.OutboundReply:
        # {"result": ...}: the call's result under a key of its own, never a top-level "error"
        return msg.OutboundReply.model_validate(await flows.run_outbound(self._context(), request))

    async def make_call(self, request: msg.MakeCall) -> msg.MakeCallReply:
        worker = self._context().worker
        return msg.MakeCallReply(call=await worker.make_call(request.target, request.ring_timeout))

    async def hangup(self, request: msg.Hangup) -> msg.Done:
        await self._context().worker.hangup(request.call)
        return msg.Done()
