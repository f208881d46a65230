"""A pjsua2 test phone: one endpoint in this process, driven by JSON lines on stdin.

Commands (one JSON object per line, each with "cmd" and an optional "seq" echoed back):
  register {user, password, registrar}      mode {on_incoming, answer_after_ms}
  dial {uri}                                 hangup {call}
  play {call, wav}                           record {call, wav} / stop_record {call}
                                             ("recorded" once the WAV is complete)
  dtmf {call, digits, method: rfc4733|info}  hold {call} / unhold {call}      quit
  tap {call} / tap_stop {call, wav}          (what the phone hears, frame by frame, with the
                                             monotonic time each 20 ms frame arrived)
  media_info {call}                          (local and remote RTP addresses, RTP packets
                                             received and sent so far)
  send_raw {call, packets: [hex]}            (datagrams sent from the call's RTP socket to
                                             the far end's RTP address, as a faulty peer)
  reply {call, wav, after_s, silence_ms}     (play wav once the far end has talked for
                                             after_s, counted from its first voiced frame,
                                             then fallen silent for silence_ms: "replied")
  echo {call, gain_db, delay_ms}             (a line that echoes: send back what the phone
                                             hears, delay_ms later at gain_db, mixed with
                                             whatever it plays) / echo_stop {call}
on_incoming: "answer" (after answer_after_ms), "busy" (486), "decline" (603), "ignore"
(ring forever). Events go to stdout as JSON lines: "ok"/"error" replies, "reg", "incoming",
"call" (state changes), "media", "dtmf", "played". pjsip's own output goes to stderr.
Everything pjsua2 runs on this process's main thread.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import selectors
import sys
import time
from collections import deque
from typing import Any

import numpy as np
import pjsua2 as pj

from media.wav import write_wav
from sip import bytevector
from sip.rtp_guard import parse_address, udp_socket

# pjlib prints to stdout before any configuration applies: keep stdout for the protocol only.
_protocol = os.fdopen(os.dup(1), "w", buffering=1)
os.dup2(2, 1)


_MEDIA_STATUS = {
    pj.PJSUA_CALL_MEDIA_ACTIVE: "active",
    pj.PJSUA_CALL_MEDIA_LOCAL_HOLD: "local_hold",
    pj.PJSUA_CALL_MEDIA_REMOTE_HOLD: "remote_hold",
}


def emit(event: str, **fields: Any) -> None:
    _protocol.write(json.dumps({"event": event, **fields}) + "\n")


class PhoneCall(pj.Call):  # type: ignore[misc]
    def __init__(self, phone: Phone, account: pj.Account, call_id: int = pj.PJSUA_INVALID_ID):
        super().__init__(account, call_id)
        self.phone = phone
        self.key = phone.next_key()
        self.audio: pj.AudioMedia | None = None
        self.player: pj.AudioMediaPlayer | None = None
        self.recorder: pj.AudioMediaRecorder | None = None
        self.tap: Tap | None = None
        self.listener: tuple[Listener, str] | None = None  # and the WAV it answers with
        self.echo: Echo | None = None
        self.connected = False

    def onCallState(self, prm: pj.OnCallStateParam) -> None:
        info = self.getInfo()
        emit(
            "call",
            call=self.key,
            state=info.stateText,
            code=info.lastStatusCode,
            reason=info.lastReason,
            call_id=info.callIdString,
        )
        if info.state == pj.PJSIP_INV_STATE_DISCONNECTED:
            self.phone.drop(self)

    def onCallMediaState(self, prm: pj.OnCallMediaStateParam) -> None:
        info = self.getInfo()
        for index, media in enumerate(info.media):
            if media.type != pj.PJMEDIA_TYPE_AUDIO:
                continue
            if media.status == pj.PJSUA_CALL_MEDIA_ACTIVE:
                self.audio = self.getAudioMedia(index)
            emit("media", call=self.key, status=_MEDIA_STATUS.get(media.status, "other"))

    def onDtmfDigit(self, prm: pj.OnDtmfDigitParam) -> None:
        emit("dtmf", call=self.key, digit=prm.digit)

    def onCallSdpCreated(self, prm: pj.OnCallSdpCreatedParam) -> None:
        offset = self.phone.sdp_port_offset
        if offset:  # as a phone behind NAT: its RTP comes from another port than signalled
            prm.sdp.wholeSdp = re.sub(
                r"^(m=audio |a=rtcp:)(\d+)",
                lambda m: f"{m[1]}{int(m[2]) + offset}",
                prm.sdp.wholeSdp,
                flags=re.MULTILINE,
            )

    def onCallTransferRequest(self, prm: pj.OnCallTransferRequestParam) -> None:
        new_call = PhoneCall(self.phone, self.phone.account)
        self.phone.calls[new_call.key] = new_call
        prm.newCall = new_call
        emit("transfer_request", call=self.key, target=prm.dstUri, new_call=new_call.key)


class Tap(pj.AudioMediaPort):  # type: ignore[misc]
    """Keeps every frame the phone hears with the time it arrived (clock thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list[tuple[float, bytes]] = []

    def onFrameReceived(self, frame: Any) -> None:
        if frame.type == pj.PJMEDIA_FRAME_TYPE_AUDIO:
            self.frames.append((time.monotonic(), bytevector.read(frame.buf)))


class Listener(pj.AudioMediaPort):  # type: ignore[misc]
    """Follows when the far end talks (clock thread); :meth:`done` asks from the main thread."""

    VOICED_RMS = 300.0  # about -40 dBFS: speech frames are far above, line noise below

    def __init__(self, after_s: float, silence_ms: int) -> None:
        super().__init__()
        self.after_s, self.silence_s = after_s, silence_ms / 1000
        self.first_voiced: float | None = None
        self.last_voiced = 0.0

    def onFrameReceived(self, frame: Any) -> None:
        if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO:
            return
        pcm = np.frombuffer(bytevector.read(frame.buf), dtype="<i2").astype(np.float64)
        if pcm.size and float(np.sqrt(np.mean(pcm * pcm))) >= self.VOICED_RMS:
            now = time.monotonic()
            if self.first_voiced is None:
                self.first_voiced = now
            self.last_voiced = now

    def done(self, now: float) -> bool:
        first, last = self.first_voiced, self.last_voiced
        return first is not None and last - first >= self.after_s and now - last >= self.silence_s


class Echo(pj.AudioMediaPort):  # type: ignore[misc]
    """Sends back what the phone hears, ``delay_ms`` later at ``gain_db`` (clock thread:
    a frame in, a frame out per tick, through a queue that starts with the delay's silence)."""

    def __init__(self, gain_db: float, delay_ms: int) -> None:
        super().__init__()
        self.gain = 10 ** (gain_db / 20)
        self.silence = bytes(320)
        self.frames: deque[bytes] = deque([self.silence] * (delay_ms // 20), maxlen=50)

    def onFrameReceived(self, frame: Any) -> None:
        if frame.type != pj.PJMEDIA_FRAME_TYPE_AUDIO:
            self.frames.append(self.silence)
            return
        pcm = np.frombuffer(bytevector.read(frame.buf), dtype="<i2") * self.gain
        self.frames.append(np.rint(pcm).astype("<i2").tobytes())

    def onFrameRequested(self, frame: Any) -> None:
        data = self.frames.popleft() if self.frames else self.silence
        frame.type = pj.PJMEDIA_FRAME_TYPE_AUDIO
        if not bytevector.write(frame.buf, data):
            frame.buf = pj.ByteVector(data)


class Player(pj.AudioMediaPlayer):  # type: ignore[misc]
    def __init__(self, key: int) -> None:
        super().__init__()
        self.key = key

    def onEof2(self) -> None:
        emit("played", call=self.key)


class Account(pj.Account):  # type: ignore[misc]
    def __init__(self, phone: Phone) -> None:
        super().__init__()
        self.phone = phone

    def onRegState(self, prm: pj.OnRegStateParam) -> None:
        info = self.getInfo()
        emit("reg", code=prm.code, reason=prm.reason, active=info.regIsActive)

    def onIncomingCall(self, prm: pj.OnIncomingCallParam) -> None:
        call = PhoneCall(self.phone, self, prm.callId)
        self.phone.calls[call.key] = call
        info = call.getInfo()
        emit("incoming", call=call.key, remote=info.remoteUri, call_id=info.callIdString)
        self.phone.on_incoming(call)


class Phone:
    def __init__(
        self,
        sip_port: int,
        rtp_port: int,
        short_jitter_buffer: bool = False,
        sdp_port_offset: int = 0,
        vad: bool = True,
    ) -> None:
        self.ep = pj.Endpoint()
        self.ep.libCreate()
        config = pj.EpConfig()
        config.uaConfig.threadCnt = 0
        config.uaConfig.mainThreadOnly = True
        config.uaConfig.maxCalls = 4
        config.medConfig.clockRate = 8000
        config.medConfig.sndClockRate = 8000
        config.medConfig.jbMax = 200
        config.medConfig.noVad = not vad  # VAD on: silence is suppressed (no RTP sent)
        if short_jitter_buffer:
            # For tests that time what the phone hears against events elsewhere.
            config.medConfig.jbInit = 20
            config.medConfig.jbMinPre = 0
            config.medConfig.jbMaxPre = 40
        config.logConfig.level = 1
        config.logConfig.consoleLevel = 1
        self.ep.libInit(config)
        transport = pj.TransportConfig()
        transport.boundAddress = "127.0.0.1"
        transport.port = sip_port
        self.ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
        self.ep.audDevManager().setNullDev()
        self.ep.libStart()
        self.rtp_port = rtp_port
        self.sdp_port_offset = sdp_port_offset  # added to the RTP port the SDP offers
        self.account: Account | None = None
        self.calls: dict[int, PhoneCall] = {}
        self.mode = "answer"
        self.answer_after_ms = 0
        self.pending_answers: list[tuple[float, PhoneCall]] = []
        self.closing_recorders: list[tuple[float, int]] = []  # (due, call key)
        self.closing_taps: list[Tap] = []  # kept alive until the process ends
        self.closing_listeners: list[Listener] = []  # likewise
        self.closing_echoes: list[Echo] = []  # likewise
        self._keys = 0
        self.running = True

    def next_key(self) -> int:
        self._keys += 1
        return self._keys

    def drop(self, call: PhoneCall) -> None:
        call.player = None
        if call.echo is not None:
            self.closing_echoes.append(call.echo)  # removed from the bridge on a later tick
            call.echo = None
        if call.recorder is not None:
            # The clock thread removes the recorder's port on its next tick; only then is
            # the WAV complete: announce it a little later (from tick()).
            call.recorder = None
            self.closing_recorders.append((time.monotonic() + 0.25, call.key))
        call.audio = None
        self.calls.pop(call.key, None)

    def on_incoming(self, call: PhoneCall) -> None:
        if self.mode == "busy":
            self._answer(call, 486)
        elif self.mode == "decline":
            self._answer(call, 603)
        else:
            self._answer(call, 180)
            if self.mode == "answer":
                self.pending_answers.append((time.monotonic() + self.answer_after_ms / 1000, call))

    def _answer(self, call: PhoneCall, code: int) -> None:
        prm = pj.CallOpParam()
        prm.statusCode = code
        call.answer(prm)

    def tick(self) -> None:
        now = time.monotonic()
        for due, key in [r for r in self.closing_recorders if r[0] <= now]:
            self.closing_recorders.remove((due, key))
            emit("recorded", call=key)
        due = [c for t, c in self.pending_answers if t <= now]
        self.pending_answers = [(t, c) for t, c in self.pending_answers if t > now]
        for call in due:
            if call.key in self.calls:
                self._answer(call, 200)
        for call in list(self.calls.values()):
            if call.listener is None or not call.listener[0].done(now):
                continue
            listener, wav = call.listener
            call.listener = None
            if call.audio is not None:
                with contextlib.suppress(pj.Error):
                    call.audio.stopTransmit(listener)
            self.closing_listeners.append(listener)
            self.cmd_play(call.key, wav)
            emit("replied", call=call.key)

    # -- commands -------------------------------------------------------------------------

    def cmd_register(self, user: str, password: str, registrar: str) -> dict[str, Any]:
        config = pj.AccountConfig()
        host = registrar.removeprefix("sip:")
        config.idUri = f"sip:{user}@{host.split(':')[0]}"
        config.regConfig.registrarUri = registrar
        config.regConfig.timeoutSec = 60
        config.sipConfig.proxies.append(f"{registrar};lr")
        config.sipConfig.authCreds.append(pj.AuthCredInfo("digest", "*", user, 0, password))
        config.mediaConfig.transportConfig.port = self.rtp_port
        config.mediaConfig.transportConfig.portRange = 40
        config.mediaConfig.transportConfig.boundAddress = "127.0.0.1"
        self.account = Account(self)
        self.account.create(config)
        return {}

    def cmd_mode(self, on_incoming: str, answer_after_ms: int = 0) -> dict[str, Any]:
        self.mode = on_incoming
        self.answer_after_ms = answer_after_ms
        return {}

    def cmd_dial(self, uri: str) -> dict[str, Any]:
        assert self.account is not None, "register first"
        call = PhoneCall(self, self.account)
        self.calls[call.key] = call
        call.makeCall(uri, pj.CallOpParam(True))
        return {"call": call.key}

    def cmd_hangup(self, call: int) -> dict[str, Any]:
        self.calls[call].hangup(pj.CallOpParam())
        return {}

    def cmd_play(self, call: int, wav: str) -> dict[str, Any]:
        target = self.calls[call]
        assert target.audio is not None, "no active audio"
        player = Player(call)
        player.createPlayer(wav, pj.PJMEDIA_FILE_NO_LOOP)
        player.startTransmit(target.audio)
        target.player = player
        return {}

    def cmd_record(self, call: int, wav: str) -> dict[str, Any]:
        target = self.calls[call]
        assert target.audio is not None, "no active audio"
        recorder = pj.AudioMediaRecorder()
        recorder.createRecorder(wav)
        target.audio.startTransmit(recorder)
        target.recorder = recorder
        return {}

    def cmd_tap(self, call: int) -> dict[str, Any]:
        target = self.calls[call]
        assert target.audio is not None, "no active audio"
        tap = Tap()
        tap.createPort(f"tap{call}", _mono_8k())
        target.audio.startTransmit(tap)
        target.tap = tap
        return {}

    def cmd_reply(self, call: int, wav: str, after_s: float, silence_ms: int) -> dict[str, Any]:
        target = self.calls[call]
        assert target.audio is not None, "no active audio"
        listener = Listener(after_s, silence_ms)
        listener.createPort(f"listen{call}", _mono_8k())
        target.audio.startTransmit(listener)
        target.listener = (listener, wav)
        return {}

    def cmd_echo(self, call: int, gain_db: float = -10.0, delay_ms: int = 100) -> dict[str, Any]:
        target = self.calls[call]
        assert target.audio is not None, "no active audio"
        echo = Echo(gain_db, delay_ms)
        echo.createPort(f"echo{call}", _mono_8k())
        target.audio.startTransmit(echo)
        echo.startTransmit(target.audio)
        target.echo = echo
        return {}

    def cmd_echo_stop(self, call: int) -> dict[str, Any]:
        target = self.calls[call]
        echo, target.echo = target.echo, None
        if echo is not None and target.audio is not None:
            with contextlib.suppress(pj.Error):
                target.audio.stopTransmit(echo)
                echo.stopTransmit(target.audio)
            self.closing_echoes.append(echo)
        return {}

    def cmd_tap_stop(self, call: int, wav: str) -> dict[str, Any]:
        """Write what was heard; reply with each frame's arrival time."""
        target = self.calls[call]
        tap = target.tap
        assert tap is not None, "no tap on this call"
        if target.audio is not None:
            with contextlib.suppress(pj.Error):
                target.audio.stopTransmit(tap)
        frames = list(tap.frames)
        pcm = b"".join(data for _, data in frames)
        write_wav(wav, 8000, np.frombuffer(pcm, dtype="<i2").astype(np.int16))
        self.closing_taps.append(tap)  # removed from the bridge on a later clock tick
        target.tap = None
        return {"times": [at for at, _ in frames]}

    def cmd_media_info(self, call: int) -> dict[str, Any]:
        target = self.calls[call]
        transport = target.getMedTransportInfo(0)
        stream = target.getStreamInfo(0)
        stat = target.getStreamStat(0).rtcp
        return {
            "local_rtp": transport.localRtpName,
            "remote_rtp": stream.remoteRtpAddress,
            "remote_rtcp": stream.remoteRtcpAddress,
            "rx_packets": int(stat.rxStat.pkt),
            "tx_packets": int(stat.txStat.pkt),
        }

    def cmd_send_raw(self, call: int, packets: list[str]) -> dict[str, Any]:
        target = self.calls[call]
        local = parse_address(target.getMedTransportInfo(0).localRtpName)
        remote = parse_address(target.getStreamInfo(0).remoteRtpAddress)
        assert local is not None, "no local RTP address"
        assert remote is not None, "no remote RTP address"
        sock = udp_socket(local)
        assert sock is not None, "no RTP socket"
        with sock:
            for packet in packets:
                with contextlib.suppress(OSError):
                    sock.sendto(bytes.fromhex(packet), remote)
        return {}

    def cmd_stop_record(self, call: int) -> dict[str, Any]:
        target = self.calls.get(call)
        if target is not None:
            target.recorder = None  # destroying the recorder completes the WAV file...
            deadline = time.monotonic() + 0.2  # ...once the clock thread removes its port
            while time.monotonic() < deadline:
                self.ep.libHandleEvents(10)
        return {}

    def cmd_dtmf(self, call: int, digits: str, method: str = "rfc4733") -> dict[str, Any]:
        prm = pj.CallSendDtmfParam()
        prm.digits = digits
        prm.method = (
            pj.PJSUA_DTMF_METHOD_SIP_INFO if method == "info" else pj.PJSUA_DTMF_METHOD_RFC2833
        )
        self.calls[call].sendDtmf(prm)
        return {}

    def cmd_hold(self, call: int) -> dict[str, Any]:
        self.calls[call].setHold(pj.CallOpParam(True))
        return {}

    def cmd_unhold(self, call: int) -> dict[str, Any]:
        prm = pj.CallOpParam(True)
        prm.opt.flag = pj.PJSUA_CALL_UNHOLD
        self.calls[call].reinvite(prm)
        return {}

    def cmd_quit(self) -> dict[str, Any]:
        self.running = False
        return {}

    def shutdown(self) -> None:
        self.ep.hangupAllCalls()
        deadline = time.monotonic() + 1.0
        while self.calls and time.monotonic() < deadline:
            self.ep.libHandleEvents(10)
        for call in list(self.calls.values()):
            self.drop(call)
        self.account = None
        self.ep.libDestroy()


def _mono_8k() -> pj.MediaFormatAudio:
    fmt = pj.MediaFormatAudio()
    fmt.type = pj.PJMEDIA_TYPE_AUDIO
    fmt.clockRate = 8000
    fmt.channelCount = 1
    fmt.bitsPerSample = 16
    fmt.frameTimeUsec = 20000
    return fmt


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sip-port", type=int, default=0)
    parser.add_argument("--rtp-port", type=int, required=True)
    parser.add_argument("--short-jitter-buffer", action="store_true")
    parser.add_argument("--sdp-port-offset", type=int, default=0)
    parser.add_argument("--no-vad", action="store_true")
    args = parser.parse_args()
    phone = Phone(
        args.sip_port,
        args.rtp_port,
        args.short_jitter_buffer,
        args.sdp_port_offset,
        vad=not args.no_vad,
    )
    selector = selectors.DefaultSelector()
    selector.register(sys.stdin, selectors.EVENT_READ)
    emit("ready")
    buffer = ""
    while phone.running:
        phone.ep.libHandleEvents(10)
        phone.tick()
        while selector.select(timeout=0):
            chunk = os.read(sys.stdin.fileno(), 65536).decode()
            if not chunk:
                phone.running = False
                break
            buffer += chunk
            while "\n" in buffer:
                line, buffer = buffer.split("\n", 1)
                _run(phone, json.loads(line))
    phone.shutdown()
    emit("bye")
    return 0


def _run(phone: Phone, message: dict[str, Any]) -> None:
    seq = message.pop("seq", None)
    name = message.pop("cmd")
    try:
        result = getattr(phone, f"cmd_{name}")(**message)
    except Exception as exc:
        emit("error", seq=seq, cmd=name, error=repr(exc))
    else:
        emit("ok", seq=seq, cmd=name, **result)


if __name__ == "__main__":
    sys.exit(main())
