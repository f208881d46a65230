"""Call legs in memory: a phone network of back-to-back pairs on one media clock.

For running call flows without pjsua2. :class:`MediaClock` does what pjmedia's clock thread
does for a SIP call (see :mod:`sip.audio_port`): every 20 ms it pulls one frame from each
side's playout buffer and appends it to the other side's uplink (a recorded side's tap gets
both frames, as from a SIP call's port), and it records what each side heard. With
``speed=None`` the clock is virtual: it ticks as fast as the event loop lets it, so ten
seconds of audio take a fraction of a second. :class:`MemoryNetwork` hands out the legs (a
:class:`~daemon.legs.leg.Dialer` for outbound flows, :meth:`MemoryNetwork.incoming` for
inbound ones) and signals like a PBX and a phone would: ringing, answer, busy, decline, ring
timeout, hang-up, DTMF, REFER. Both sides use the real :class:`LegMedia` and
:class:`~media.playout.PlayoutBuffer`; nothing here knows what a flow does.

Everything runs on one event loop; the clock's callbacks run inside its tick.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from daemon.legs.leg import (
    Answered,
    CallInfo,
    Dtmf,
    Ended,
    LegError,
    LegEvent,
    LegEvents,
    Ringing,
    TransferProgress,
)
from daemon.legs.media import UPLINK_FRAMES, LegMedia

OnIncoming = Literal["answer", "busy", "decline", "ignore"]
VIRTUAL_YIELDS = 5  # loop turns between two virtual ticks: lets woken flows run to their next wait
CLEARING = (200, "Normal call clearing")
TERMINATED = (487, "Request Terminated")


class MediaClock:
    """The media clock of a memory network: 20 ms ticks, paced or virtual."""

    def __init__(self, frame_ms: int = 20, speed: float | None = 1.0) -> None:
        self.frame_ms = frame_ms
        self.speed = speed  # None: virtual time, as fast as the loop runs
        self.ticks = 0
        self._now = 0.0
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._pairs: list[_Pair] = []
        self._task: asyncio.Task[None] | None = None

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        """Resolves on the first tick at or after ``now() + seconds``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        self.later(seconds, wake)
        await future

    def later(self, seconds: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` in the first tick at or after ``now() + seconds``."""
        heapq.heappush(self._timers, (self._now + seconds, next(self._order), callback))

    def connect(self, a: LegMedia, b: LegMedia) -> _Pair:
        pair = _Pair(a, b)
        self._pairs.append(pair)
        return pair

    def disconnect(self, pair: _Pair) -> None:
        if pair in self._pairs:
            self._pairs.remove(pair)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> MediaClock:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _run(self) -> None:
        frame = self.frame_ms / 1000
        started = time.monotonic()
        while True:
            if self.speed is None:
                for _ in range(VIRTUAL_YIELDS):
                    await asyncio.sleep(0)
            else:
                due = started + (self.ticks + 1) * frame / self.speed
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            self.tick()

    def tick(self) -> None:
        """One frame time: move one frame each way on every pair, then run what is due."""
        self.ticks += 1
        self._now = self.ticks * self.frame_ms / 1000
        for pair in list(self._pairs):
            pair.move(self._now)
        while self._timers and self._timers[0][0] <= self._now + 1e-9:
            _, _, callback = heapq.heappop(self._timers)
            callback()


class _Pair:
    """Two connected media ends; ``heard_a`` is what ``a`` received, ``heard_b`` ``b``'s."""

    def __init__(self, a: LegMedia, b: LegMedia) -> None:
        self.a = a
        self.b = b
        self.heard_a: list[bytes] = []
        self.heard_b: list[bytes] = []
        self.b_sends = True  # False: nothing of b's reaches a (no RTP)

    def move(self, now: float) -> None:
        to_b = self.a.playout.pull()
        self.a.tap_played(to_b)
        to_a = self.b.playout.pull()
        self.b.tap_played(to_a)
        _receive(self.b, now, to_b)
        self.heard_b.append(to_b)
        if self.b_sends:
            _receive(self.a, now, to_a)
            self.heard_a.append(to_a)


def _receive(media: LegMedia, now: float, frame: bytes) -> None:
    """What :class:`sip.audio_port.CallAudioPort` does with a received frame."""
    if len(media.uplink) == UPLINK_FRAMES:
        media.uplink_dropped += 1
    media.uplink.append((now, frame))
    media.uplink_frames += 1
    media.tap_heard(frame)


@dataclass(frozen=True)
class PhoneEvent:
    """What the daemon's side did to the phone: answered, rejected, hung_up, dtmf, refer."""

    kind: str
    detail: str = ""


@dataclass
class MemoryCall:
    """One call between a daemon leg and a phone (both ends' state, on the loop)."""

    leg: MemoryLeg
    phone: MemoryPhone
    pair: _Pair | None = None
    answered: bool = False
    ended: bool = False


class MemoryLeg:
    """The daemon's end of a memory call: a :class:`~daemon.legs.leg.CallLeg`."""

    def __init__(self, network: MemoryNetwork, info: CallInfo, call_media: LegMedia) -> None:
        self._network = network
        self._info = info
        self.audio = call_media  # this end's media (the network connects it)
        self._events = LegEvents()
        self.call: MemoryCall | None = None  # set by the network as soon as the call exists

    @property
    def info(self) -> CallInfo:
        return self._info

    async def receive(self) -> LegEvent:
        return await self._events.receive()

    def post(self, event: LegEvent) -> None:
        self._events.post(event)

    def _live(self) -> MemoryCall:
        call = self.call
        if call is None or call.ended:
            raise LegError(f"call {self._info.key} is gone")
        return call

    async def answer(self) -> None:
        call = self._live()
        call.phone.record(PhoneEvent("answered"))
        if call.phone.ack:
            self._network.connect(call)

    async def reject(self, code: int = 486) -> None:
        call = self._live()
        call.phone.record(PhoneEvent("rejected", str(code)))
        self._network.end(call, Ended(code, "Rejected", local_cause="rejected"))

    async def hangup(self) -> None:
        call = self.call
        if call is None or call.ended:
            return
        call.phone.record(PhoneEvent("hung_up"))
        code, reason = CLEARING if call.answered else TERMINATED
        ended, network = Ended(code, reason, "hangup", call.answered), self._network
        if network.bye_seconds:  # the call ends once the BYE is answered, as a SIP call does
            network.clock.later(network.bye_seconds, lambda: network.end(call, ended))
        else:
            network.end(call, ended)

    async def send_dtmf(self, digits: str) -> None:
        self._live().phone.record(PhoneEvent("dtmf", digits))

    async def transfer(self, target: str) -> None:
        call = self._live()
        if self._network.refer_refused is not None:
            raise LegError(self._network.refer_refused)
        call.phone.record(PhoneEvent("refer", target))
        code = self._network.transfer_result
        self.post(TransferProgress(100, "Trying", final=False))
        reason = "OK" if 200 <= code < 300 else "Failed"
        self._network.clock.later(0.0, lambda: self.post(TransferProgress(code, reason, True)))

    async def media(self) -> LegMedia:
        self._live()
        return self.audio

    def release(self) -> None:
        self._events.release()


class MemoryPhone:
    """The far end: plays audio, hears the daemon, presses keys, hangs up."""

    def __init__(
        self,
        network: MemoryNetwork,
        ext: str,
        on_incoming: OnIncoming = "answer",
        answer_after: float = 0.0,
        ack: bool = True,
    ) -> None:
        self._network = network
        self.ext = ext
        self.on_incoming = on_incoming
        self.answer_after = answer_after
        self.ack = ack
        self.media = LegMedia(network.rate, network.clock.frame_ms, network.clock)
        self.events: list[PhoneEvent] = []
        self.ended: Ended | None = None  # how the current call ended, as this side saw it
        self.connected = asyncio.Event()  # media flows both ways
        self.done = asyncio.Event()  # the call is over
        self.call: MemoryCall | None = None
        self.sends_audio = True

    def mute(self) -> None:
        """From now on none of this phone's audio reaches the daemon (no RTP at all, as
        with one-way audio through a NAT)."""
        self.sends_audio = False
        if self.call is not None and self.call.pair is not None:
            self.call.pair.b_sends = False

    def record(self, event: PhoneEvent) -> None:
        self.events.append(event)

    def play(self, pcm: NDArray[np.int16], item: str = "phone") -> None:
        """Queue ``pcm`` for the daemon to hear (from the next tick once connected)."""
        self.media.playout.push(item, pcm)
        self.media.playout.end_item(item)

    def heard(self) -> NDArray[np.int16]:
        """Everything the daemon's side sent this phone in the current call, silence included."""
        pair = self.call.pair if self.call is not None else None
        if pair is None:
            return np.zeros(0, dtype=np.int16)
        return np.frombuffer(b"".join(pair.heard_b), dtype="<i2").astype(np.int16)

    def press(self, digits: str, method: str = "rfc4733") -> None:
        """Press keys: the daemon's leg gets one Dtmf per digit, sent as ``method``
        ("rfc4733" or "info")."""
        call = self.call
        if call is not None and not call.ended:
            for digit in digits:
                call.leg.post(Dtmf(digit, method))

    def hang_up(self) -> None:
        call = self.call
        if call is None or call.ended:
            return
        code, reason = CLEARING if call.answered else TERMINATED
        self._network.end(call, Ended(code, reason, "", call.answered))


class MemoryNetwork:
    """Phones by extension, and the calls between them and the daemon's legs."""

    def __init__(
        self,
        clock: MediaClock,
        rate: int = 8000,
        transfer_result: int = 200,
        refer_refused: str | None = None,
        bye_seconds: float = 0.0,
    ) -> None:
        self.clock = clock
        self.rate = rate
        self.transfer_result = transfer_result  # final status a REFER reports
        self.refer_refused = refer_refused  # not None: a REFER raises LegError with this text
        self.bye_seconds = bye_seconds  # from a leg's hang-up to the end of its call
        self.phones: dict[str, MemoryPhone] = {}
        self._keys = itertools.count(1)

    def phone(
        self, ext: str, on_incoming: OnIncoming = "answer", answer_after: float = 0.0
    ) -> MemoryPhone:
        phone = MemoryPhone(self, ext, on_incoming, answer_after)
        self.phones[ext] = phone
        return phone

    async def dial(self, target: str, ring_timeout: float) -> MemoryLeg:
        """An outbound leg to the phone ``target`` (a Dialer): its events follow."""
        if not target:
            raise ValueError("no target to dial")
        leg = self._leg(
            CallInfo(key=f"m{next(self._keys)}", inbound=False, remote_uri=target, kind="memory")
        )
        phone = self.phones.get(target)
        if phone is None:
            self.clock.later(0.0, lambda: leg.post(Ended(404, "Not Found")))
            return leg
        call = self._call(leg, phone)
        later = self.clock.later
        later(0.0, lambda: leg.post(Ringing(180)))
        if phone.on_incoming == "ignore" or phone.answer_after >= ring_timeout:
            later(ring_timeout, lambda: self.end(call, Ended(*TERMINATED, "ring_timeout")))
        elif phone.on_incoming == "answer":
            later(phone.answer_after, lambda: self._pick_up(call))
        else:
            code, reason = (486, "Busy Here") if phone.on_incoming == "busy" else (603, "Decline")
            later(phone.answer_after, lambda: self.end(call, Ended(code, reason)))
        return leg

    def incoming(
        self,
        caller: str = "1001",
        headers: Mapping[str, str] | None = None,
        ack: bool = True,
    ) -> tuple[MemoryLeg, MemoryPhone]:
        """A call from ``caller`` to the daemon: the leg rings until the flow answers it."""
        key = f"m{next(self._keys)}"
        info = CallInfo(
            key=key,
            inbound=True,
            sip_call_id=f"{key}@memory",
            caller=caller,
            remote_uri=f"sip:{caller}@memory",
            headers=dict(headers or {}),
            kind="memory",
        )
        leg = self._leg(info)
        phone = MemoryPhone(self, caller, ack=ack)
        self._call(leg, phone)
        return leg, phone

    def _leg(self, info: CallInfo) -> MemoryLeg:
        return MemoryLeg(self, info, LegMedia(self.rate, self.clock.frame_ms, self.clock))

    def _call(self, leg: MemoryLeg, phone: MemoryPhone) -> MemoryCall:
        phone.media = LegMedia(self.rate, self.clock.frame_ms, self.clock)
        phone.ended = None
        phone.connected.clear()
        phone.done.clear()
        call = MemoryCall(leg, phone)
        leg.call = phone.call = call
        return call

    def _pick_up(self, call: MemoryCall) -> None:
        if not call.ended:
            self.connect(call)

    def connect(self, call: MemoryCall) -> None:
        """The call is up: media flows from the next tick, and the leg learns it."""
        if call.ended or call.answered:
            return
        call.answered = True
        call.pair = self.clock.connect(call.leg.audio, call.phone.media)
        call.pair.b_sends = call.phone.sends_audio
        call.phone.connected.set()
        call.leg.post(Answered())

    def end(self, call: MemoryCall, ended: Ended) -> None:
        """Both ends learn that the call is over: the daemon's leg gets ``ended``."""
        if call.ended:
            return
        call.ended = True
        if call.pair is not None:
            self.clock.disconnect(call.pair)
        call.leg.audio.closed = True
        call.phone.media.closed = True
        call.phone.ended = Ended(ended.code, ended.reason, answered=call.answered)
        call.phone.done.set()
        call.leg.post(ended)
