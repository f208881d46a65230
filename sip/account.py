"""The extension's pjsua2 account: registration and incoming INVITEs (SIP thread).

:class:`SipAccount` carries out :class:`~sip.registration.Registration`'s decisions and takes
or refuses each INVITE that reaches pjsua. What it needs of the SIP thread is its
:class:`AccountOwner`: timers, events, the allow list, admission, and the calls it holds.
"""

from __future__ import annotations

from typing import Any, Protocol

import pjsua2 as pj

from sip import uri
from sip.admission import Refusal
from sip.call import CallOwner, SipCall
from sip.events import IncomingCall, RegistrationChanged
from sip.registration import Actions, Registration


class AccountOwner(CallOwner, Protocol):
    """What the account needs of the SIP thread (SIP thread only)."""

    @property
    def stopping(self) -> bool:
        """The thread is shutting pjsua2 down: registration stops."""
        ...

    def refresh_allow_from(self) -> None: ...

    def admit(self, source: str, message: str) -> Refusal | None:
        """None to take an INVITE from ``source``, else why not (logged and counted)."""
        ...

    def refuse(self, call: SipCall) -> None:
        """Keep a refused call alive until pjsua reports it DISCONNECTED."""
        ...

    def take(self, call: SipCall, sip_call_id: str) -> bool:
        """Hold ``call`` if this worker has room and wins its SIP Call-ID (forked INVITEs)."""
        ...


class SipAccount(pj.Account):  # type: ignore[misc]
    """The extension's account: carries out :class:`Registration`'s decisions (SIP thread)."""

    def __init__(self, owner: AccountOwner) -> None:
        super().__init__()
        self.owner: AccountOwner | None = owner  # None once shut down: nothing outlives it
        self.registration = Registration(keepalive=owner.settings.register_keepalive)

    def start_registration(self) -> None:
        self._carry_out(self.registration.start())

    def onRegState(self, prm: Any) -> None:
        owner = self.owner
        if owner is None:
            return
        code, reason = int(prm.code), str(prm.reason)
        if owner.stopping:
            self.registration.stop()
            owner.emit(RegistrationChanged(False, code, reason))
            return
        bound = bool(self.getInfo().regIsActive)
        self._carry_out(self.registration.on_response(code, reason, bound))

    def _on_timer(self, token: int) -> None:
        if self.owner is not None and not self.owner.stopping:
            self._carry_out(self.registration.on_timer(token))

    def _carry_out(self, actions: Actions) -> None:
        owner = self.owner
        if owner is None:
            return
        if actions.send:
            owner.refresh_allow_from()
            try:
                self.setRegistration(True)
            except pj.Error as exc:
                actions = self.registration.on_send_failed(exc.info())
        if actions.timer is not None:
            token = actions.timer.token
            owner.later(actions.timer.delay, lambda: self._on_timer(token))
        if actions.report:
            status = self.registration.status
            owner.emit(
                RegistrationChanged(
                    status.registered,
                    status.code,
                    status.reason,
                    retry_in=status.retry_in,
                    error=status.error,
                )
            )

    def onIncomingCall(self, prm: Any) -> None:
        owner = self.owner
        if owner is None:
            return
        call = SipCall(owner, self, prm.callId)
        # Normally refused earlier (sip.inbound_filter); here pjsua has spent a slot and RTP
        # sockets on the INVITE already, and frees them when this callback returns.
        source, message = str(prm.rdata.srcAddress), str(prm.rdata.wholeMsg)
        refusal = owner.admit(source, message)
        if refusal is not None:
            owner.refuse(call)
            headers = {"Retry-After": str(refusal.retry_after)} if refusal.retry_after else {}
            call.respond(refusal.code, headers)
            return
        info = call.getInfo()
        # Decide now, on this thread: a forked copy we lose must give its pjsua call slot
        # back before the next INVITE of a burst is processed (PJSUA_MAX_CALLS is 4).
        if not owner.take(call, info.callIdString):
            owner.refuse(call)
            call.respond(486)
            return
        call.respond(180)
        owner.emit(
            IncomingCall(
                call=call.key,
                sip_call_id=info.callIdString,
                remote_uri=info.remoteUri,
                display_name=uri.display_name(info.remoteUri),
                from_user=uri.user_of(info.remoteUri),
                headers=uri.headers(prm.rdata.wholeMsg),
            )
        )
