"""A browser call: a :class:`~daemon.legs.leg.CallLeg` over one aiortc ``RTCPeerConnection``.

The browser posts an SDP offer; :meth:`WebRtcLeg.accept` answers it at once (aiortc gathers
its host candidates at ``setLocalDescription``: no trickle, and no STUN server ever, so an
offline box does not stall) and the answer goes back in the HTTP reply. The leg is shaped
like :class:`daemon.legs.memory.MemoryLeg`: its own event queue
(:class:`~daemon.legs.leg.LegEvents`: the last ``Ended`` replayed), an idempotent
:meth:`~WebRtcLeg.hangup`.

Signalling, mapped onto a SIP call's events so the inbound agent runs unchanged:

- ``connectionState`` ``connected`` is the caller's ACK: ``Answered``. :meth:`answer` is a
  no-op (the offer was answered when the leg was made).
- never connected within ``connect_timeout`` seconds: ``Ended(408, "browser never
  connected")``; ``failed``: ``Ended(480, "ICE/DTLS failed")``, also when ICE consent
  expires (:func:`use_consent`, ``[web] consent_seconds``: a browser that vanished without a
  word, or whose network is gone, ends 9-15 s after it went at the default of 10 s).
- ``closed``, ``disconnected`` for :data:`DISCONNECTED_GRACE` seconds, or ``{"type":
  "hangup"}`` on the page's ``sipai`` data channel: the caller hung up, ``Ended(200)``.
- :meth:`hangup` tells the page (``{"type": "hangup"}`` on that channel), closes the
  connection and ends with ``local_cause="hangup"``; :meth:`reject` ends with the code given.
  There is no DTMF and no transfer on a browser call: both raise :class:`LegError`.

Media. Both directions run on the event loop that owns the connection (aiortc calls
:meth:`PlayoutTrack.recv` there), and follow the one-writer rules of
:class:`~daemon.legs.media.LegMedia` exactly as :mod:`sip.audio_port` does: the uplink task
is the only writer of ``uplink`` and its counters, the outgoing track the only puller of the
playout. The outgoing track *is* the leg's media clock (as pjmedia's clock thread is for a SIP
call): it hands aiortc's encoder one 20 ms frame at ``start + n * 20 ms``; a late loop catches
up frame by frame and never skips a pull. Audio is converted by :mod:`media.opus_frames`
(48 kHz stereo <-> the leg's rate, one resampler per direction for the whole call).

ICE addresses. aioice never offers 127.0.0.1 as a host candidate, so a machine without
network (or a test on loopback) would have none. This module is the one place that decides
which addresses aioice uses: it replaces ``aioice.ice.get_host_addresses`` on import with
:func:`host_addresses`, which gives the addresses set by :func:`use_ice_addresses` (``[web]
ice_addresses``), or, when none are set, the host's addresses as aioice finds them plus
127.0.0.1. It also makes a loopback candidate ignore connectivity checks from addresses that
are not loopback (a browser on this machine would otherwise pair its network address with our
127.0.0.1 and select that). Every connection made here has
``RTCConfiguration(iceServers=[])`` (:func:`peer_connection`): aiortc would use Google's STUN
server otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections import deque
from collections.abc import Awaitable, Sequence
from ipaddress import ip_address
from typing import Any

import aioice.ice
import aioice.stun
import av
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.stats import (
    RTCInboundRtpStreamStats,
    RTCOutboundRtpStreamStats,
    RTCRemoteInboundRtpStreamStats,
)
from numpy.typing import NDArray

from daemon.legs.leg import Answered, CallInfo, Ended, LegError, LegEvent, LegEvents, MediaStats
from daemon.legs.media import UPLINK_FRAMES, LegMedia
from daemon.logs import get_logger
from media.opus_frames import (
    FRAME_MS,
    WEBRTC_FRAME_SAMPLES,
    WEBRTC_RATE,
    DownlinkFrames,
    UplinkFrames,
    prepare,
)

log = get_logger(__name__)

CONNECT_TIMEOUT = 15.0  # [web] connect_timeout_seconds: offer answered -> connected
DISCONNECTED_GRACE = 5.0  # "disconnected" this long is a caller gone
CHANNEL = "sipai"  # the page's data channel for signalling beyond SDP (hang-up)
HANGUP_FLUSH_SECONDS = 0.5  # at most this long for our hang-up message to leave
STATS_SECONDS = 1.0  # at most this long for the end-of-call statistics
CLEARING = (200, "Normal call clearing")
TERMINATED = (487, "Request Terminated")
NEVER_CONNECTED = (408, "browser never connected")
ICE_FAILED = (480, "ICE/DTLS failed")
OPUS_CLOCK = 48000  # RTP timestamp units of Opus: jitter comes in these
FRAME_SECONDS = FRAME_MS / 1000
TIME_BASE = fractions.Fraction(1, WEBRTC_RATE)


# -- ICE addresses --------------------------------------------------------------------------

_aioice_host_addresses = aioice.ice.get_host_addresses


class _IceAddresses:
    """The addresses set by :func:`use_ice_addresses` (empty: the host's plus 127.0.0.1)."""

    chosen: tuple[str, ...] = ()


def use_ice_addresses(addresses: Sequence[str]) -> None:
    """Offer only these IP addresses as ICE host candidates (empty: the host's, plus
    127.0.0.1). Process-wide: every peer connection of the process gathers from them."""
    for address in addresses:
        ip_address(address)  # ValueError names a bad one
    _IceAddresses.chosen = tuple(addresses)


def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """What aioice gathers host candidates on (installed as ``aioice.ice.get_host_addresses``)."""
    chosen = _IceAddresses.chosen
    if chosen:
        return [a for a in chosen if (use_ipv4 if ip_address(a).version == 4 else use_ipv6)]
    found = _aioice_host_addresses(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    if use_ipv4 and "127.0.0.1" not in found:
        found.append("127.0.0.1")
    return found


aioice.ice.get_host_addresses = host_addresses

# ICE consent (RFC 7675). aioice asks the peer for consent every 5 s and gives up after 6
# unanswered checks, so a browser that vanished without a word (tab closed, network gone) held
# its call, and an engine session behind it, for about 30 s. :func:`use_consent` ([web]
# consent_seconds) sets how long instead; the module's default applies until it is called.
CONSENT_FAILURES = 5  # unanswered checks in a row that end the connection
CONSENT_SECONDS = 10.0  # [web] consent_seconds' default
CONSENT_ANSWER_SECONDS = 0.5  # how long aioice waits for each check's answer (its STUN RTO)


def use_consent(seconds: float) -> None:
    """Check ICE consent every ``seconds / CONSENT_FAILURES`` (aioice randomises each wait
    by 0.8-1.2) and end the connection after :data:`CONSENT_FAILURES` unanswered checks in a
    row. Process-wide, like :func:`use_ice_addresses`. A peer that stops answering is dropped
    between :func:`consent_bounds` seconds after it went; a shorter outage never drops it."""
    if seconds <= 0:
        raise ValueError(f"consent seconds must be positive, not {seconds}")
    # aioice declares an int; it only multiplies it by a float (tests/unit/test_webrtc_ice.py)
    setattr(aioice.ice, "CONSENT_INTERVAL", seconds / CONSENT_FAILURES)  # noqa: B010
    aioice.ice.CONSENT_FAILURES = CONSENT_FAILURES


def consent_bounds(seconds: float) -> tuple[float, float]:
    """The shortest and longest time from a peer's last answer to the connection's end, for
    :func:`use_consent` ``(seconds)``: the failed checks' waits (0.8-1.2 x the interval) and
    their answer windows; the shortest is also the longest outage a call always survives."""
    interval = seconds / CONSENT_FAILURES
    shortest = (CONSENT_FAILURES - 1) * (0.8 * interval + CONSENT_ANSWER_SECONDS)
    longest = CONSENT_FAILURES * (1.2 * interval + CONSENT_ANSWER_SECONDS)
    return shortest + CONSENT_ANSWER_SECONDS, longest


use_consent(CONSENT_SECONDS)

_aioice_request_received = aioice.ice.Connection.request_received


def _is_loopback(host: str) -> bool:
    try:
        return ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _request_received(
    connection: aioice.ice.Connection,
    message: aioice.stun.Message,
    addr: tuple[str, int],
    protocol: aioice.ice.StunProtocol,
) -> None:
    """Drop a connectivity check that reaches a loopback candidate from an address that is
    not loopback (only this host can send one, from its own network address): a browser on
    the same machine then selects the loopback pair, as it must when only loopback is used."""
    if _is_loopback(protocol.local_candidate.host) and not _is_loopback(addr[0]):
        return
    _aioice_request_received(connection, message, addr, protocol)


setattr(aioice.ice.Connection, "request_received", _request_received)  # noqa: B010


def peer_connection() -> RTCPeerConnection:
    """A peer connection with no STUN or TURN server (host candidates only)."""
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


class BadOffer(LegError):
    """The offer could not be answered (not SDP aiortc accepts, or no Opus audio)."""


# -- media ------------------------------------------------------------------------------------


def audio_frame(pcm: NDArray[np.int16], index: int) -> av.AudioFrame:
    """One 20 ms mono 48 kHz frame for aiortc's encoder, the ``index``-th of the stream."""
    frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
    frame.sample_rate = WEBRTC_RATE
    frame.pts = index * WEBRTC_FRAME_SAMPLES
    frame.time_base = TIME_BASE
    return frame


class PlayoutTrack(MediaStreamTrack):
    """What the browser hears: the leg's playout, pulled one frame per 20 ms (the media clock)."""

    kind = "audio"

    def __init__(self, media: LegMedia) -> None:
        super().__init__()
        self._media = media
        self._down = DownlinkFrames(media.rate)
        self._ready: deque[NDArray[np.int16]] = deque()
        self._start: float | None = None
        self.sent = 0  # frames handed to the encoder

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self.sent * FRAME_SECONDS
        if due > now:
            await asyncio.sleep(due - now)
        media = self._media
        while not self._ready:
            data = media.playout.pull()
            media.tap_played(data)
            self._ready.extend(self._down.push(data))
        frame = audio_frame(self._ready.popleft(), self.sent)
        self.sent += 1
        return frame


def _receive(media: LegMedia, frame: bytes) -> None:
    """What :class:`sip.audio_port.CallAudioPort` does with a received frame."""
    if len(frame) != media.frame_bytes:
        return
    if len(media.uplink) == UPLINK_FRAMES:
        media.uplink_dropped += 1
    media.uplink.append((time.monotonic(), frame))
    media.uplink_frames += 1
    media.tap_heard(frame)


async def _uplink(track: MediaStreamTrack, media: LegMedia) -> None:
    """The browser's audio into the leg's uplink, until its track ends."""
    frames = UplinkFrames(media.rate)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        try:
            if not isinstance(frame, av.AudioFrame):
                raise TypeError(f"not audio: {type(frame).__name__}")
            if frame.format.name not in ("s16", "s16p") or frame.sample_rate != WEBRTC_RATE:
                raise TypeError(f"not 16-bit 48 kHz audio: {frame.format.name} {frame.sample_rate}")
            pcm = np.asarray(frame.to_ndarray(), dtype=np.int16)
            if frame.format.is_planar:
                pcm = pcm.T  # (channels, samples) -> interleaved
            for data in frames.push(pcm, len(frame.layout.channels)):
                _receive(media, data)
        except Exception:
            media.callback_errors += 1


# -- the leg ------------------------------------------------------------------------------


class WebRtcLeg:
    """The daemon's end of a browser call (see the module docstring)."""

    def __init__(
        self,
        pc: RTCPeerConnection,
        info: CallInfo,
        media: LegMedia,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self._pc = pc
        self._info = info
        self._media = media
        self._connect_timeout = connect_timeout
        self._events = LegEvents()
        self._ending = False
        self._ended = asyncio.Event()
        self._connected_at: float | None = None
        self._channel: RTCDataChannel | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._disconnect_timer: asyncio.Task[Any] | None = None
        self._uplink_task: asyncio.Task[Any] | None = None
        self.track = PlayoutTrack(media)
        pc.on("connectionstatechange", self._on_state)
        pc.on("track", self._on_track)
        pc.on("datachannel", self._on_channel)

    @classmethod
    async def accept(
        cls,
        offer: str,
        info: CallInfo,
        rate: int,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> WebRtcLeg:
        """A leg for the browser's ``offer`` (SDP), answered: :attr:`answer_sdp` goes back.

        Media runs at ``rate`` (the agent's input rate). :class:`BadOffer` if aiortc cannot
        answer the offer with Opus audio.
        """
        # The filters are designed once per process (1-2 s each on first use): a web worker
        # makes them at start (media.opus_frames.prepare); never on the loop if it did not.
        await asyncio.to_thread(prepare, (rate,))
        pc = peer_connection()
        leg = cls(pc, info, LegMedia(rate), connect_timeout)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
            audio = [t for t in pc.getTransceivers() if t.kind == "audio"]
            if not audio:
                raise BadOffer("the offer has no audio")
            opus = [
                c
                for c in RTCRtpSender.getCapabilities("audio").codecs
                if c.mimeType.lower() == "audio/opus"
            ]
            audio[0].setCodecPreferences(opus)
            pc.addTrack(leg.track)
            await pc.setLocalDescription(await pc.createAnswer())
        except BadOffer:
            await leg._abandon()
            raise
        except Exception as exc:  # aiortc raises ValueError and others on a bad offer
            await leg._abandon()
            raise BadOffer(f"cannot answer the offer: {exc}") from exc
        if " opus/" not in leg.answer_sdp.lower():
            await leg._abandon()
            raise BadOffer("the offer has no Opus audio")
        leg._spawn(leg._connect_deadline())
        log.info("webrtc.offer_answered", call_id=info.key, rate=rate)
        return leg

    async def _abandon(self) -> None:
        self._ending = True
        self._media.closed = True
        self.track.stop()
        await self._pc.close()

    @property
    def info(self) -> CallInfo:
        return self._info

    @property
    def peer(self) -> RTCPeerConnection:
        """The connection (for a caller that serves further data channels of the page)."""
        return self._pc

    @property
    def answer_sdp(self) -> str:
        description = self._pc.localDescription
        return description.sdp if description is not None else ""

    @property
    def connected(self) -> bool:
        return self._connected_at is not None

    # -- events ---------------------------------------------------------------------------

    async def receive(self) -> LegEvent:
        return await self._events.receive()

    def post(self, event: LegEvent) -> None:
        self._events.post(event)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _on_state(self) -> None:
        state = self._pc.connectionState
        if self._ending:
            return
        if state != "disconnected" and self._disconnect_timer is not None:
            self._disconnect_timer.cancel()
            self._disconnect_timer = None
        if state == "connected" and self._connected_at is None:
            self._connected_at = time.monotonic()
            log.info("webrtc.connected", call_id=self._info.key)
            self.post(Answered())
        elif state == "failed":
            self._spawn(self._end(*ICE_FAILED))
        elif state == "closed":
            self._spawn(self._end(*CLEARING))
        elif state == "disconnected" and self._disconnect_timer is None:
            self._disconnect_timer = self._spawn(self._after_disconnect())

    async def _after_disconnect(self) -> None:
        await asyncio.sleep(DISCONNECTED_GRACE)
        await self._end(*CLEARING)

    async def _connect_deadline(self) -> None:
        await asyncio.sleep(self._connect_timeout)
        if self._connected_at is None:
            await self._end(*NEVER_CONNECTED)

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and not self._ending and self._uplink_task is None:
            self._uplink_task = self._spawn(_uplink(track, self._media))

    def _on_channel(self, channel: RTCDataChannel) -> None:
        if channel.label != CHANNEL:
            return
        self._channel = channel
        channel.on("message", self._on_message)

    def _on_message(self, message: str | bytes) -> None:
        try:
            body = json.loads(message)
        except ValueError:
            return
        if isinstance(body, dict) and body.get("type") == "hangup" and not self._ending:
            log.info("webrtc.caller_hung_up", call_id=self._info.key)
            self._spawn(self._end(*CLEARING))

    # -- commands ---------------------------------------------------------------------------

    def _live(self) -> None:
        if self._ending:
            raise LegError(f"call {self._info.key} is gone")

    async def answer(self) -> None:
        """Nothing to send: the offer was answered when the leg was made; ``Answered``
        follows when the browser connects."""
        self._live()

    async def reject(self, code: int = 486) -> None:
        self._live()
        await self._end(code, "Rejected", "rejected")

    async def hangup(self) -> None:
        if self._ending:
            return
        channel = self._channel
        if channel is not None and channel.readyState == "open":
            channel.send(json.dumps({"type": "hangup"}))
            await self._flush(channel)
        code, reason = CLEARING if self.connected else TERMINATED
        await self._end(code, reason, "hangup")

    async def _flush(self, channel: RTCDataChannel) -> None:
        """Until what was sent on ``channel`` has gone to the wire (bounded)."""
        if not channel.bufferedAmount:
            return
        sent = asyncio.Event()
        channel.bufferedAmountLowThreshold = 0
        channel.once("bufferedamountlow", sent.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(sent.wait(), HANGUP_FLUSH_SECONDS)

    async def send_dtmf(self, digits: str) -> None:
        raise LegError("not on a browser call")

    async def transfer(self, target: str) -> None:
        raise LegError("not on a browser call")

    async def media(self) -> LegMedia:
        self._live()
        return self._media

    def release(self) -> None:
        self._events.release()

    async def wait_closed(self) -> None:
        """Until the leg has ended and its connection and tasks are gone."""
        await self._ended.wait()
        current = asyncio.current_task()
        await asyncio.gather(*(t for t in self._tasks if t is not current), return_exceptions=True)

    # -- the end ------------------------------------------------------------------------------

    async def _end(self, code: int, reason: str, local_cause: str = "") -> None:
        """Once: statistics, then close the connection, then ``Ended`` last."""
        if self._ending:
            return
        self._ending = True
        answered = self._connected_at is not None
        connect_seconds = time.monotonic() - self._connected_at if self._connected_at else 0.0
        stats: MediaStats | None = None
        try:
            stats = await self._stats()
            self._media.closed = True
            current, uplink = asyncio.current_task(), self._uplink_task
            for task in list(self._tasks):
                if task is not current and task is not uplink:
                    task.cancel()
            self.track.stop()
            await self._pc.close()  # ends the browser's track: the uplink task returns
            if uplink is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(uplink), STATS_SECONDS)
                uplink.cancel()
        except Exception as exc:  # the call ends whatever its statistics or close did
            log.warning("webrtc.close_failed", call_id=self._info.key, error=repr(exc))
        finally:
            self._media.closed = True
            log.info(
                "webrtc.ended",
                call_id=self._info.key,
                sip_code=code,
                reason=reason,
                local_cause=local_cause,
                answered=answered,
            )
            self.post(Ended(code, reason, local_cause, answered, stats, connect_seconds))
            self._ended.set()

    async def _stats(self) -> MediaStats:
        """The connection's RTP statistics and the media counters, as a SIP call gives them."""
        rx_packets = rx_lost = tx_packets = tx_lost = reports = 0
        rx_jitter_ms = tx_jitter_ms = 0.0
        rtt_ms: float | None = None
        report: dict[str, Any] = {}
        if self._connected_at is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(STATS_SECONDS):
                    report = dict(await self._pc.getStats())
        for entry in report.values():
            if isinstance(entry, RTCInboundRtpStreamStats) and entry.kind == "audio":
                rx_packets += entry.packetsReceived
                rx_lost += max(0, entry.packetsLost)
                rx_jitter_ms = max(rx_jitter_ms, entry.jitter * 1000 / OPUS_CLOCK)
            elif isinstance(entry, RTCRemoteInboundRtpStreamStats) and entry.kind == "audio":
                reports += 1
                tx_lost += max(0, entry.packetsLost)
                tx_jitter_ms = max(tx_jitter_ms, entry.jitter * 1000 / OPUS_CLOCK)
                if entry.roundTripTime is not None:  # None until an SR of ours is answered
                    rtt_ms = entry.roundTripTime * 1000
            elif isinstance(entry, RTCOutboundRtpStreamStats) and entry.kind == "audio":
                tx_packets += entry.packetsSent
        counters = self._media.stats()
        playout = self._media.playout.stats()
        return MediaStats(
            rx_packets=rx_packets,
            rx_lost=rx_lost,
            rx_jitter_ms=rx_jitter_ms,
            tx_packets=tx_packets,
            uplink_frames=counters.uplink_frames,
            uplink_dropped=counters.uplink_dropped,
            callback_errors=counters.callback_errors,
            playout_underruns=counters.playout_underruns,
            rx_jitter_max_ms=rx_jitter_ms,
            tx_lost_reported=tx_lost,
            tx_jitter_ms_reported=tx_jitter_ms,
            tx_reports=reports,
            rtt_ms_mean=rtt_ms,
            rtt_ms_max=rtt_ms or 0.0,
            rtt_samples=1 if rtt_ms is not None else 0,
            codec="opus",
            playout_overrun_samples=playout.overrun_samples,
            playout_flushes=playout.flushes,
        )
