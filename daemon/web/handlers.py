"""The requests a web worker process serves: the web worker's end of its IPC.

``ping`` (calls held, tasks and file descriptors for leak checks, IPC frames it could not
read), ``shutdown``, ``web_offer`` (a browser's offer: the answer, or a refusal with its HTTP
status, see :class:`daemon.web.host.WebHost`) and ``web_hangup``. :meth:`WebHandlers.table`
is what the worker's connection serves; any other request type is answered "unknown request
type".
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from daemon.ipc import messages as msg
from daemon.ipc.connection import RequestHandlers

if TYPE_CHECKING:
    from daemon.web.host import WebHost
    from daemon.web.process import WebWorkerProcess


class WebHandlers:
    def __init__(self, process: WebWorkerProcess) -> None:
        self.process = process

    def table(self) -> RequestHandlers:
        return {
            msg.Ping: self.ping,
            msg.Shutdown: self.shutdown,
            msg.WebOffer: self.web_offer,
            msg.WebHangup: self.web_hangup,
        }

    def _host(self) -> WebHost:
        host = self.process.host
        if host is None:
            raise RuntimeError("the web worker is still starting")
        return host

    async def ping(self, _: msg.Ping) -> msg.PingReply:
        process = self.process
        if process.host is None:
            return msg.PingReply(starting=True)
        return msg.PingReply(
            calls=process.host.calls,
            tasks=len(asyncio.all_tasks()),  # for leak checks: no task outlives a call
            fds=len(os.listdir("/proc/self/fd")),
            bad_frames=process.services.conn.bad_frames if process.services else 0,
            web_calls=process.host.keys,
        )

    async def shutdown(self, _: msg.Shutdown) -> msg.Done:
        self.process.stop.set()
        return msg.Done()

    async def web_offer(self, request: msg.WebOffer) -> msg.WebOfferReply:
        host = self.process.host
        if host is None:
            return msg.WebOfferReply(status=503, detail="the web worker is still starting")
        return await host.offer(request)

    async def web_hangup(self, request: msg.WebHangup) -> msg.Done:
        if not await self._host().hangup(request.call):
            raise LookupError(f"no browser call {request.call}")
        return msg.Done()
