"""One pjsua2 call: its SIP states as events, its audio bridged to a borrowed port (SIP thread).

A :class:`SipCall` reports through its :class:`CallOwner` (the SIP thread) and asks it for
everything shared between calls: a conference port for its audio, timers, the call key, and
being forgotten once DISCONNECTED. Every callback runs on the SIP thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import time
from collections.abc import Callable
from typing import Any, Protocol

import pjsua2 as pj

from config.schema import SipSettings
from daemon.logs import get_logger
from sip.audio_port import CallAudio, CallAudioPort
from sip.events import (
    CallAnswered,
    CallEnded,
    CallRinging,
    DtmfReceived,
    MediaStats,
    SipEvent,
    TransferProgress,
)
from sip.rtp_guard import LATCH_POLL_SECONDS, MediaGuard

log = get_logger(__name__)

# Ends a transaction at once (pjsua2 has no binding for it).
_pjsip_tsx_terminate = ctypes.CDLL(pj._pjsua2.__file__).pjsip_tsx_terminate
_pjsip_tsx_terminate.restype = ctypes.c_int
_pjsip_tsx_terminate.argtypes = [ctypes.c_void_p, ctypes.c_int]
# After our 200 OK went unACKed for 64 x T1 (32 s), pjsip sends BYE and keeps the call slot
# until that BYE is answered or times out (another 32 s): a peer that never ACKs, never
# answers a BYE either. The BYE gets this long (two retransmissions) before it is ended.
UNACKED_BYE_SECONDS = 1.0


def _seconds(duration: Any) -> float:
    """A pjsua2 ``TimeVal`` in seconds."""
    return int(duration.sec) + int(duration.msec) / 1000


class CallOwner(Protocol):
    """What a call needs of the SIP thread that holds it (SIP thread only)."""

    @property
    def settings(self) -> SipSettings: ...

    def emit(self, event: SipEvent) -> None: ...

    def later(self, delay: float, action: Callable[[], None]) -> None: ...

    def new_call_id(self) -> str: ...

    def borrow_port(self) -> CallAudioPort | None:
        """A free conference port for a call's audio (None: none left)."""
        ...

    def return_port(self, port: CallAudioPort) -> None: ...

    def forget(self, call: SipCall) -> None:
        """The call is DISCONNECTED: no longer held, live or refused."""
        ...


class SipCall(pj.Call):  # type: ignore[misc]
    def __init__(self, owner: CallOwner, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.owner = owner
        self.key = owner.new_call_id()
        self.audio = CallAudio(owner.settings.clock_rate)
        self.port: CallAudioPort | None = None
        self.media: Any = None
        self.answered = False
        self.local_cause = ""
        self.stats: MediaStats | None = None
        self.ended = False
        self.refused = False  # answered 486 in onIncomingCall: no events, no audio
        self.responded = False  # any SIP response to our INVITE arrived (100 Trying counts)
        self.guard = MediaGuard(owner.settings.rtp_latching)  # SIP thread only
        # pjsip's BYE for a 200 OK never ACKed, while that BYE transaction is alive (SIP thread)
        self.unacked_bye: int | None = None
        self.inbound = call_id != pj.PJSUA_INVALID_ID

    def respond(self, code: int, headers: dict[str, str] | None = None) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = code
        for name, value in (headers or {}).items():
            header = pj.SipHeader()
            header.hName = name
            header.hValue = value
            prm.txOption.headers.append(header)
        self.answer(prm)

    def end(self, cause: str, code: int = 0) -> None:
        """Hang up (BYE, CANCEL or a final reply, as the state requires); idempotent."""
        if self.ended:
            return
        self.local_cause = self.local_cause or cause
        prm = pj.CallOpParam()
        if code:
            prm.statusCode = code
        # Already terminated (a race with the remote BYE): the DISCONNECTED callback reports it.
        with contextlib.suppress(pj.Error):
            self.hangup(prm)

    def onCallState(self, prm: Any) -> None:
        info = self.getInfo()
        state = info.state
        if state == pj.PJSIP_INV_STATE_EARLY and info.lastStatusCode in (180, 183):
            if info.role == pj.PJSIP_ROLE_UAC:
                self.owner.emit(CallRinging(self.key, int(info.lastStatusCode)))
        elif state == pj.PJSIP_INV_STATE_CONFIRMED and not self.answered:
            self.answered = True
            self.owner.emit(CallAnswered(self.key))
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED and self.refused:
            self.ended = True
            self.owner.forget(self)
            self.release()
        elif state == pj.PJSIP_INV_STATE_DISCONNECTED and not self.ended:
            self.ended = True
            self.audio.closed = True
            code = int(info.lastStatusCode)
            self.owner.emit(
                CallEnded(
                    call=self.key,
                    code=code,
                    reason=str(info.lastReason),
                    local_cause=self.local_cause,
                    answered=self.answered,
                    stats=self.stats,
                    connect_seconds=_seconds(info.connectDuration),
                )
            )
            self.owner.forget(self)
            self.release()

    def onCallTsxState(self, prm: Any) -> None:
        event = prm.e
        if event.type != pj.PJSIP_EVENT_TSX_STATE:
            return
        if not self.responded:
            self.responded = event.body.tsxState.type == pj.PJSIP_EVENT_RX_MSG
        tsx = event.body.tsxState.tsx
        if tsx.method != "BYE" or tsx.role != pj.PJSIP_ROLE_UAC:
            return
        pointer = int(tsx.pjTransaction)
        if tsx.state == pj.PJSIP_TSX_STATE_CALLING and self.inbound and not self.answered:
            # pjsip's own BYE before any ACK: our 200 OK went unanswered for 32 s.
            self.unacked_bye = pointer
            self.owner.later(UNACKED_BYE_SECONDS, self._end_unacked_bye)
        elif pointer == self.unacked_bye and tsx.state >= pj.PJSIP_TSX_STATE_COMPLETED:
            self.unacked_bye = None  # answered (or gone): never touched again

    def _end_unacked_bye(self) -> None:
        """Still no answer to the BYE: end its transaction, the call and its slot now."""
        pointer, self.unacked_bye = self.unacked_bye, None
        if pointer is not None and not self.ended:
            _pjsip_tsx_terminate(pointer, 408)

    def onCallMediaState(self, prm: Any) -> None:
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if media.status not in (pj.PJSUA_CALL_MEDIA_ACTIVE, pj.PJSUA_CALL_MEDIA_REMOTE_HOLD):
                continue
            audio_media = self.getAudioMedia(index)
            if self.port is not None and self.media is not None:
                if self.media.getPortId() == audio_media.getPortId():
                    return  # re-INVITE, hold or unhold: already bridged, never twice
                with contextlib.suppress(pj.Error):
                    self.media.stopTransmit(self.port)
                    self.port.stopTransmit(self.media)
            if self.port is None:
                self.port = self.owner.borrow_port()
                if self.port is None:
                    return  # cannot happen: one port per call slot
                self.port.audio = self.audio
            self.media = audio_media
            audio_media.startTransmit(self.port)
            self.port.startTransmit(audio_media)
            return

    def onStreamPreCreate(self, prm: Any) -> None:
        """Before pjmedia's stream is attached to the call's sockets (a new call, or a
        re-INVITE that changed the media): admit RTP and RTCP only from the peer the SDP
        negotiated (sip.rtp_guard)."""
        info, index = prm.streamInfo, int(prm.streamIdx)
        if info.type != pj.PJMEDIA_TYPE_AUDIO:
            return
        try:
            transport = self.getMedTransportInfo(index)
            local_rtp, local_rtcp = transport.localRtpName, transport.localRtcpName
        except pj.Error:
            local_rtp = local_rtcp = ""  # reported by the guard: it has nothing to filter
        if self.guard.update(
            local_rtp,
            local_rtcp,
            info.remoteRtpAddress,
            info.remoteRtcpAddress,
            time.monotonic(),
        ):
            latch = self.guard.latch
            self.owner.later(LATCH_POLL_SECONDS, lambda: self._check_latch(index, latch))

    def _check_latch(self, index: int, latch: object) -> None:
        if self.ended or self.guard.latch is not latch:
            return  # the call ended or its media restarted with a new latch
        now = time.monotonic()
        try:
            received = int(self.getStreamStat(index).rtcp.rxStat.pkt)
            transport = self.getMedTransportInfo(index)
            sources = (transport.srcRtpName, transport.srcRtcpName)
        except pj.Error:  # no stream to ask: lock to the signalled peer at once
            received, sources, now = 0, ("", ""), float("inf")
        if self.guard.check(received, *sources, now):
            self.owner.later(LATCH_POLL_SECONDS, lambda: self._check_latch(index, latch))

    def onStreamDestroyed(self, prm: Any) -> None:
        self.stats = guarded_stats(self.key, self.audio, lambda: self._stream_stats(prm))

    def _stream_stats(self, prm: Any) -> MediaStats:
        """The stream's RTP, RTCP and jitter buffer statistics and the media counters, as
        pjmedia holds them just before the stream goes (the whole call's figures)."""
        index = int(prm.streamIdx)
        stat = self.getStreamStat(index)
        try:
            codec = str(self.getStreamInfo(index).codecName)
        except pj.Error:
            codec = ""
        return media_stats(stat, codec, self.audio)

    def onDtmfDigit(self, prm: Any) -> None:
        method = "info" if getattr(prm, "method", 0) == pj.PJSUA_DTMF_METHOD_SIP_INFO else "rfc4733"
        self.owner.emit(DtmfReceived(self.key, str(prm.digit), method))

    def onCallTransferStatus(self, prm: Any) -> None:
        self.owner.emit(
            TransferProgress(self.key, int(prm.statusCode), str(prm.reason), bool(prm.finalNotify))
        )
        if prm.finalNotify:
            prm.cont = False

    def release(self) -> None:
        """Give the audio port back and drop references so nothing outlives the call.

        On DISCONNECTED pjsua has already removed the call's conference slot and with it the
        connections to the port, so there is nothing to disconnect here.
        """
        port, self.port = self.port, None
        if port is not None:
            self.owner.return_port(port)
        self.media = None
        self.audio.closed = True


def guarded_stats(call: str, audio: CallAudio, read: Callable[[], MediaStats]) -> MediaStats | None:
    """A stream's statistics as ``read`` gets them, or None; nothing escapes into pjsua2 (a
    Python exception raised through a callback is not pjsua2's to handle). pj.Error: the
    stream is gone already; any other error is counted in the call's ``callback_errors`` and
    logged (a stream goes once)."""
    try:
        return read()
    except pj.Error:
        return None
    except Exception as exc:
        audio.callback_errors += 1
        log.error("call.stats_failed", call_id=call, error=repr(exc))
        return None


def media_stats(stat: Any, codec: str, audio: CallAudio) -> MediaStats:
    """A pjsua2 ``StreamStat`` and the call's own counters as :class:`MediaStats`."""
    rx, tx, rtt, jbuf = stat.rtcp.rxStat, stat.rtcp.txStat, stat.rtcp.rttUsec, stat.jbuf
    counters = audio.stats()
    playout = audio.playout.stats()
    reports = int(tx.updateCount)  # the peer's receiver reports about our stream
    return MediaStats(
        rx_packets=int(rx.pkt),
        rx_lost=int(rx.loss),
        rx_jitter_ms=float(rx.jitterUsec.mean) / 1000,
        tx_packets=int(tx.pkt),
        uplink_frames=counters.uplink_frames,
        uplink_dropped=counters.uplink_dropped,
        callback_errors=counters.callback_errors,
        playout_underruns=counters.playout_underruns,
        rx_discarded=int(rx.discard),
        rx_duplicates=int(rx.dup),
        rx_reordered=int(rx.reorder),
        rx_jitter_max_ms=float(rx.jitterUsec.max) / 1000 if rx.jitterUsec.n else 0.0,
        tx_lost_reported=int(tx.loss) if reports else 0,
        tx_jitter_ms_reported=float(tx.jitterUsec.mean) / 1000 if reports else 0.0,
        tx_reports=reports,
        rtt_ms_mean=float(rtt.mean) / 1000 if rtt.n else None,
        rtt_ms_max=float(rtt.max) / 1000 if rtt.n else 0.0,
        rtt_samples=int(rtt.n),
        jb_avg_delay_ms=float(jbuf.avgDelayMsec),
        jb_max_delay_ms=float(jbuf.maxDelayMsec),
        jb_lost=int(jbuf.lost),
        jb_discarded=int(jbuf.discard),
        jb_empty=int(jbuf.empty),
        codec=codec,
        playout_overrun_samples=playout.overrun_samples,
        playout_flushes=playout.flushes,
    )
