"""The SIP thread: the only thread that touches pjsua2.

:class:`SipThread` sets the pjsua2 endpoint up (:class:`~sip.endpoint.EndpointSetup`, with
``threadCnt = 0`` and ``mainThreadOnly = True``) and runs ``libHandleEvents(10 ms)`` in a
loop that also runs commands submitted from other threads (:meth:`SipThread.submit` returns
a ``concurrent.futures.Future``) and due timers (registration's, RTP latching's). pjsua2
callbacks run inside ``libHandleEvents`` on this thread and report through ``emit`` (which
hands events to the event loop with ``call_soon_threadsafe``). Strong references to every
account, call and audio port live here; a call's are dropped when it is disconnected,
everything is destroyed in order before ``libDestroy``.

Which thread may call what: :meth:`SipThread.start`, :meth:`SipThread.submit` and
:meth:`SipThread.stop` from any thread; everything else on the SIP thread only (through
``submit``).
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import heapq
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pjsua2 as pj

from config.schema import SipSettings
from sip import uri
from sip.account import SipAccount
from sip.admission import Admission, Refusal
from sip.audio_port import CallAudioPort
from sip.call import SipCall
from sip.endpoint import EndpointSetup
from sip.errors import NoFreeSlot, SipError, SlotInTeardown
from sip.events import SipEvent

Emit = Callable[[SipEvent], None]
# Asked on the SIP thread before an inbound call is taken: may this worker have the call with
# this SIP Call-ID? (Forked INVITEs reach every worker; one wins.) Must answer within ~0.5 s.
Claim = Callable[[str], bool]
LOOP_MS = 10

PJ_ETOOMANY = 70010
# pjsua's own count of call slots in use, calls being torn down included (pjsua2 has no
# binding for it; the C function is exported by the same library).
_pjsua_call_get_count = ctypes.CDLL(pj._pjsua2.__file__).pjsua_call_get_count
_pjsua_call_get_count.restype = ctypes.c_uint
_pjsua_call_get_count.argtypes = []

# pjsua is a per-process singleton: a second endpoint in one process aborts it.
_endpoint_in_use = threading.Lock()


@dataclass
class _Timer:
    due: float
    seq: int
    action: Callable[[], None] = field(compare=False)

    def __lt__(self, other: _Timer) -> bool:
        return (self.due, self.seq) < (other.due, other.seq)


class _Timers:
    """Actions due at a monotonic time, in order (SIP thread only)."""

    def __init__(self) -> None:
        self._heap: list[_Timer] = []
        self._seq = itertools.count()

    def add(self, delay: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, _Timer(time.monotonic() + delay, next(self._seq), action))

    def run_due(self) -> None:
        now = time.monotonic()
        while self._heap and self._heap[0].due <= now:
            heapq.heappop(self._heap).action()

    def clear(self) -> None:
        self._heap.clear()


class SipThread:
    def __init__(
        self, settings: SipSettings, index: int, emit: Emit, claim: Claim | None = None
    ) -> None:
        self._settings = settings
        self.index = index
        self.emit = emit
        self.claim = claim
        self.domain = settings.domain or uri.registrar_host(settings) or settings.bind
        self.setup = EndpointSetup(settings, index)
        self._commands: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._timers = _Timers()
        self._thread = threading.Thread(target=self._run, name=f"sip-{index}", daemon=True)
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._stopping = False
        self.account: SipAccount | None = None
        self.calls: dict[str, SipCall] = {}  # SIP thread only
        # Calls refused from onIncomingCall, kept alive until DISCONNECTED: pjsua sends that
        # answer after the callback returns, and a Call destroyed before then hangs up with
        # 603 Decline, which makes a forking proxy end every branch (SIP thread only).
        self.refused: dict[str, SipCall] = {}
        self._call_ids = itertools.count(1)

    @property
    def settings(self) -> SipSettings:
        return self._settings

    @property
    def endpoint(self) -> Any:
        return self.setup.endpoint

    @property
    def admission(self) -> Admission:
        return self.setup.admission

    @property
    def stopping(self) -> bool:
        return self._stopping

    # -- other threads ---------------------------------------------------------------------

    def start(self) -> concurrent.futures.Future[None]:
        if not _endpoint_in_use.acquire(blocking=False):
            raise SipError("a SIP endpoint already runs in this process (one per worker process)")
        self._thread.start()
        return self._started

    def submit(self, action: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``action`` on the SIP thread; its result or exception lands in the future."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(action())
            except BaseException as exc:
                future.set_exception(exc)

        self._commands.put(run)
        return future

    def stop(self) -> None:
        """Ask the thread to shut pjsua2 down in order and exit; then join it."""
        self._commands.put(None)
        self._thread.join(timeout=15)
        if not self._thread.is_alive():
            _endpoint_in_use.release()

    # -- the SIP thread --------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._init()
        except BaseException as exc:  # reported to start()'s caller
            if isinstance(exc, pj.Error):
                exc = SipError(
                    f"SIP start failed on {self._settings.bind}:{self.setup.port}: "
                    f"{exc.reason} (in {exc.title})"
                )
            self._destroy()
            _endpoint_in_use.release()
            self._started.set_exception(exc)
            return
        self._started.set_result(None)
        while True:
            self.setup.endpoint.libHandleEvents(LOOP_MS)
            if not self._drain_commands():
                break
            self._timers.run_due()
        self._shutdown()

    def _drain_commands(self) -> bool:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return True
            if command is None:
                return False
            command()

    def _init(self) -> None:
        self.setup.create()
        self.account = SipAccount(self)
        self.account.create(self.setup.account_config(self.domain))
        if not self._settings.direct_mode:
            self.account.start_registration()

    def _shutdown(self) -> None:
        self._stopping = True
        endpoint = self.setup.endpoint
        if self.calls:
            endpoint.hangupAllCalls()
            deadline = time.monotonic() + 2.0
            while self.calls and time.monotonic() < deadline:
                endpoint.libHandleEvents(LOOP_MS)
        account = self.account
        if account is not None and not self._settings.direct_mode:
            self._unregister(account)
        del account  # every pjsua2 object must be gone before libDestroy
        self._destroy()

    def _unregister(self, account: SipAccount) -> None:
        """Send REGISTER with expires 0, waiting out a refresh still in flight; bounded."""
        deadline = time.monotonic() + 3.0
        sent = False
        while time.monotonic() < deadline:
            try:
                if not account.getInfo().regIsActive:
                    return
                if not sent:
                    account.setRegistration(False)
                    sent = True
            except pj.Error:
                pass  # PJSIP_EBUSY: a REGISTER transaction is still running; try again
            self.setup.endpoint.libHandleEvents(LOOP_MS * 5)

    def _destroy(self) -> None:
        self._timers.clear()  # they hold the account: nothing pjsua2 may outlive libDestroy
        for call in [*self.calls.values(), *self.refused.values()]:
            call.release()
        self.calls.clear()
        self.refused.clear()
        if self.account is not None:
            self.account.shutdown()
            self.account.owner = None
            self.account = None
        self.setup.destroy()

    # -- what accounts and calls ask of the thread (SIP thread; AccountOwner, CallOwner) ----

    def later(self, delay: float, action: Callable[[], None]) -> None:
        self._timers.add(delay, action)

    def new_call_id(self) -> str:
        return f"w{self.index}-{next(self._call_ids)}"

    def borrow_port(self) -> CallAudioPort | None:
        return self.setup.ports.borrow()

    def return_port(self, port: CallAudioPort) -> None:
        self.setup.ports.give_back(port)

    def forget(self, call: SipCall) -> None:
        self.calls.pop(call.key, None)
        self.refused.pop(call.key, None)

    def refresh_allow_from(self) -> None:
        self.setup.refresh_allow_from(self._commands.put)

    def admit(self, source: str, message: str) -> Refusal | None:
        return self.setup.admit(source, message)

    def refuse(self, call: SipCall) -> None:
        self.refused[call.key] = call
        call.refused = True

    def take(self, call: SipCall, sip_call_id: str) -> bool:
        full = len(self.calls) >= self._settings.max_calls
        if full or (self.claim is not None and not self.claim(sip_call_id)):
            return False
        self.calls[call.key] = call
        return True

    # -- call commands (SIP thread) --------------------------------------------------------

    def pjsua_calls(self) -> int:
        """Call slots pjsua holds: live calls plus hung-up ones it is still tearing down."""
        return int(_pjsua_call_get_count())

    def make_call(self, uri: str) -> str:
        """Dial ``uri``; :class:`NoFreeSlot` when every call slot is taken (nothing sent)."""
        if self.account is None:
            raise SipError("the SIP endpoint is not running")
        max_calls = self._settings.max_calls
        if len(self.calls) >= max_calls:
            raise NoFreeSlot(
                f"this worker already holds {len(self.calls)} calls (sip.max_calls = {max_calls})"
            )
        if self.pjsua_calls() >= max_calls:  # checked first: pjsua logs a refusal
            raise SlotInTeardown(
                f"cannot call {uri} yet: {self.pjsua_calls() - len(self.calls)} call slots "
                "are still being torn down"
            )
        call = SipCall(self, self.account)
        try:
            call.makeCall(uri, pj.CallOpParam(True))
        except pj.Error as exc:
            call.release()
            if exc.status == PJ_ETOOMANY:
                raise SlotInTeardown(f"cannot call {uri} yet: {exc.info()}") from None
            raise SipError(f"cannot call {uri}: {exc.info()}") from None
        self.calls[call.key] = call
        return call.key

    def call(self, key: str) -> SipCall:
        try:
            return self.calls[key]
        except KeyError:
            raise SipError(f"no call {key!r} on this worker") from None
