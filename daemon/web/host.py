"""Browser calls in one process: each offer becomes a leg and the flow that runs it.

:class:`WebHost` turns a :class:`~daemon.ipc.messages.WebOffer` into a
:class:`~daemon.legs.webrtc.WebRtcLeg` (the answer goes back at once, the call runs on) and,
for ``mode = "agent"``, :func:`daemon.web.flows.web_agent` on it. It holds at most
``[web] max_calls`` calls: one more offer is answered 503 with a detail, as is any offer once
:meth:`WebHost.stop` began; an offer aiortc cannot take is answered 400 with aiortc's reason.
Nothing in it depends on the process it runs in: the web worker hosts one, and a benchmark
can host one in the supervisor's process to compare the two placements. Everything runs on
one event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import Awaitable, Callable

from config.schema import ModelAudio, WebSettings
from daemon.ipc import messages as msg
from daemon.legs.leg import CallInfo, CallLeg
from daemon.legs.webrtc import BadOffer, WebRtcLeg
from daemon.logs import get_logger
from daemon.web.flows import WebContext, web_agent

log = get_logger(__name__)

STOP_SECONDS = 3.0  # stop() waits this long for the flows to report their calls' ends
# Serves an offer of another mode (the engine over WebRTC): the reply to give.
OfferHandler = Callable[[msg.WebOffer, str], Awaitable[msg.WebOfferReply]]


def leg_rate(input_format: ModelAudio) -> int:
    """The rate of a browser leg's media: the agent's input rate, so its audio passes through
    the media core as on a SIP call (mu-law at 8 kHz, or PCM at 24 kHz)."""
    return 8000 if input_format is ModelAudio.PCMU else 24000


class WebHost:
    def __init__(self, ctx: WebContext, web: WebSettings) -> None:
        self.ctx = ctx
        self.web = web
        self.modes: dict[str, OfferHandler] = {}  # mode -> its handler, beyond "agent"
        self._keys = itertools.count(1)
        self._legs: dict[str, CallLeg] = {}  # calls up, by key
        self._flows: set[asyncio.Task[None]] = set()
        self._opening = 0  # offers being answered: their slots are taken
        self._stopping = False
        self.ended_listeners: list[Callable[[str], None]] = []  # told a held call's key at its end

    @property
    def calls(self) -> int:
        """Calls held, offers being answered included."""
        return len(self._legs) + self._opening

    def stopping(self) -> bool:
        """True once stop() began (a method: the flag changes while an offer awaits)."""
        return self._stopping

    def key(self) -> str:
        """A new call's id in this process ("web-<n>")."""
        return f"web-{next(self._keys)}"

    @property
    def keys(self) -> list[str]:
        """The keys of the calls held."""
        return sorted(self._legs)

    def hold(self, key: str, leg: CallLeg) -> Callable[[], None]:
        """Count ``leg`` as a call held until the returned function is called (which tells
        :attr:`ended_listeners`)."""
        self._legs[key] = leg

        def release() -> None:
            if self._legs.pop(key, None) is not None:
                for listener in self.ended_listeners:
                    listener(key)

        return release

    async def offer(self, request: msg.WebOffer) -> msg.WebOfferReply:
        """Answer a browser's offer, or refuse it (503: full or stopping; 400: a bad offer)."""
        if self.stopping():
            return msg.WebOfferReply(status=503, detail="the daemon is shutting down")
        if self.calls >= self.web.max_calls:
            return msg.WebOfferReply(
                status=503,
                detail=f"web worker {self.ctx.index} is full ({self.web.max_calls} calls)",
            )
        key = self.key()
        handler = self.modes.get(request.mode)
        if request.mode != "agent":
            if handler is None:
                return msg.WebOfferReply(status=503, detail=f"no {request.mode} calls here")
            return await handler(request, key)
        info = CallInfo(
            key=key,
            inbound=True,
            sip_call_id=f"webrtc:{uuid.uuid4().hex}",
            caller=request.caller or "web:local",
            headers={"user-agent": request.user_agent} if request.user_agent else {},
            kind="web",
        )
        self._opening += 1
        try:
            leg = await WebRtcLeg.accept(
                request.sdp,
                info,
                leg_rate(self.ctx.agent.input_format),
                self.web.connect_timeout_seconds,
            )
        except BadOffer as exc:
            log.info("web.offer_refused", call_id=key, error=str(exc))
            return msg.WebOfferReply(status=400, detail=str(exc))
        finally:
            self._opening -= 1
        if self.stopping():  # stop() began while aiortc answered: it would miss this leg
            await leg.hangup()
            return msg.WebOfferReply(status=503, detail="the daemon is shutting down")
        release = self.hold(key, leg)
        record_id = request.record_id or f"in-{uuid.uuid4().hex[:16]}"
        task = asyncio.create_task(self._run(leg, record_id, release))
        self._flows.add(task)
        task.add_done_callback(self._flows.discard)
        log.info("web.offer_answered", call_id=key, record_id=record_id, caller=info.caller)
        return msg.WebOfferReply(sdp=leg.answer_sdp, call=key)

    async def _run(self, leg: CallLeg, record_id: str, release: Callable[[], None]) -> None:
        try:
            await web_agent(self.ctx, leg, record_id)
        except Exception as exc:
            log.error("web.flow_failed", call_id=leg.info.key, error=repr(exc))
            with contextlib.suppress(Exception):
                await leg.hangup()
        finally:
            release()
            leg.release()

    async def hangup(self, call: str) -> bool:
        """Hang up the call ``call``; False if there is no such call (any more)."""
        leg = self._legs.get(call)
        if leg is None:
            return False
        await leg.hangup()
        return True

    async def stop(self, within: float = STOP_SECONDS) -> None:
        """Refuse new offers, hang up every call, wait (bounded) for their flows to finish."""
        self._stopping = True
        legs = list(self._legs.values())
        if legs:
            log.info("web.hanging_up", calls=len(legs))
        await asyncio.gather(*(leg.hangup() for leg in legs), return_exceptions=True)
        flows = set(self._flows)
        if flows:
            _, late = await asyncio.wait(flows, timeout=within)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
