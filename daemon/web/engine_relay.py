"""The embedded engine over WebRTC: OpenAI's ``/v1/realtime/calls`` shape, served in a web worker.

A browser (or any WebRTC client) that speaks to OpenAI's realtime models over WebRTC sends its
microphone on an audio track and exchanges the protocol's JSON events on a data channel named
``oai-events``. :class:`EngineRelay` gives it the same with the embedded engine, which speaks
the protocol over a WebSocket only (``/v1/realtime`` on the supervisor's API): it is a
WebSocket client of the engine on one side and a browser leg (track + data channel) on the
other, with no call flow and no call record (a bare WebSocket session has none either).

- It opens the engine's WebSocket at once, and first sends ``session.update`` with the session
  asked for (the ephemeral key's, or the offer's), its audio formats forced to ``audio/pcm``
  at 24 kHz both ways: the track is the audio transport, so the browser's format choices do
  not apply (a client ``session.update`` is rewritten the same way).
- Client events on the channel go to the engine, except ``input_audio_buffer.append`` (audio
  comes on the track) and ``output_audio_buffer.clear`` (the relay flushes its playout,
  cancels the response in progress and answers ``output_audio_buffer.cleared``).
- Engine events go to the channel (kept until the browser's channel opens), except
  ``response.output_audio.delta``: its audio is decoded into the leg's playout buffer, which
  the leg's outgoing track drains at 20 ms a frame (resampled to 48 kHz for Opus by the leg).
  The relay adds the WebRTC-only events: ``output_audio_buffer.started`` when a response's
  first frame is pulled for the track, ``.stopped`` once the response is done and its audio
  played out, ``.cleared`` on a flush.
- The track's audio (48 kHz, folded to 24 kHz mono by the leg) goes to the engine as
  ``input_audio_buffer.append`` every 40 ms. On ``input_audio_buffer.speech_started``
  (barge-in) the relay flushes the playout and truncates the item playing to what the
  browser really heard (the playout buffer's per-item accounting), as the inbound agent does.
- The session ends when either side does: the leg's end closes the WebSocket, the WebSocket's
  close hangs up the leg.

Everything runs on the web worker's event loop; the leg's media follows the rules of
:class:`daemon.legs.media.LegMedia` (its track pulls the playout, its uplink task appends).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import secrets
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import websockets
from aiortc import RTCDataChannel
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from config.schema import AgentSettings, ApiSettings, Backend
from daemon.ipc import messages as msg
from daemon.legs.leg import Answered, CallInfo, CallLeg, Ended, LegError
from daemon.legs.media import LegMedia
from daemon.legs.webrtc import BadOffer, WebRtcLeg
from daemon.logs import get_logger
from daemon.realtime.backends import endpoint
from daemon.realtime.client import Endpoint
from media.codec import PCM24K, PCMU, AudioFormat, Decoder

if TYPE_CHECKING:
    from daemon.web.host import WebHost

log = get_logger(__name__)

Json = dict[str, Any]

RATE = 24000  # the leg's media rate: the engine's audio/pcm
FORCED_FORMAT: Json = {"type": "audio/pcm", "rate": RATE}
APPEND_FRAMES = 2  # 20 ms frames per input_audio_buffer.append: 40 ms
CONNECT_SECONDS = 10.0  # to open the engine's WebSocket
EVENTS_CHANNEL = "oai-events"  # the data channel OpenAI's WebRTC clients open
WATCH_SECONDS = 0.02  # the output buffer watch: once per frame
MAX_BACKLOG = 1024  # engine events kept until the browser's channel opens
CLIENT_QUEUE = 256  # client events waiting for the WebSocket


class RelayFailed(Exception):
    """The engine could not be reached (or refused the session): the reason."""


def forced_session(session: Json | None) -> Json:
    """``session`` (GA shape) with both audio formats set to 24 kHz PCM, as a session.update's."""
    shaped = copy.deepcopy(session) if session else {}
    shaped.pop("id", None)  # a minted session's id and expiry are ours, not settings
    shaped.pop("object", None)
    shaped.pop("expires_at", None)
    shaped["type"] = "realtime"
    audio = shaped.get("audio")
    if not isinstance(audio, dict):
        audio = shaped["audio"] = {}
    for side in ("input", "output"):
        part = audio.get(side)
        if not isinstance(part, dict):
            part = audio[side] = {}
        part["format"] = dict(FORCED_FORMAT)
    return shaped


def _reported_output(event: Json) -> AudioFormat | None:
    """The output audio format a session.created/updated event reports, if any."""
    session = event.get("session")
    audio = session.get("audio") if isinstance(session, dict) else None
    output = audio.get("output") if isinstance(audio, dict) else None
    fmt = output.get("format") if isinstance(output, dict) else None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "audio/pcmu":
        return PCMU
    if kind == "audio/pcm":
        return PCM24K
    return None


def _event_id() -> str:
    return "event_" + secrets.token_hex(10)


class EngineRelay:
    """One WebRTC realtime session: ``leg`` (its track and its ``oai-events`` channel) <->
    the engine's WebSocket at ``endpoint``."""

    def __init__(self, leg: CallLeg, endpoint: Endpoint, session: Json | None) -> None:
        self.leg = leg
        self.endpoint = endpoint
        self.session = forced_session(session)
        self._send_channel: Callable[[str], None] | None = None
        self._backlog: list[str] = []  # engine events for a channel not open yet
        self._client: asyncio.Queue[str] = asyncio.Queue(CLIENT_QUEUE)
        self._ws: ClientConnection | None = None
        self._decoder = Decoder(PCM24K, RATE)
        self._output = PCM24K
        self._response: str | None = None  # the response in progress (response.created)
        self._playing: str | None = None  # the response whose audio is queued or playing
        self._items: list[str] = []  # audio items of the playing response, in order
        self._started = False  # output_audio_buffer.started sent for _playing
        self._audio_done = False  # response.done seen for _playing
        self._silenced: set[str] = set()  # responses flushed: their late audio is dropped
        self.ended = asyncio.Event()

    # -- the data channel -------------------------------------------------------------------

    def attach(self, send: Callable[[str], None]) -> None:
        """The browser's ``oai-events`` channel is open: ``send`` puts a text message on it."""
        self._send_channel = send
        backlog, self._backlog = self._backlog, []
        for text in backlog:
            send(text)

    def from_client(self, text: str) -> None:
        """A message from the channel (never blocks: the channel's callback calls it)."""
        try:
            self._client.put_nowait(text)
        except asyncio.QueueFull:
            self._to_client(
                {
                    "type": "error",
                    "event_id": _event_id(),
                    "error": {
                        "type": "invalid_request_error",
                        "code": "too_many_events",
                        "message": f"more than {CLIENT_QUEUE} events are waiting: one dropped",
                    },
                }
            )

    def _to_client(self, event: Json) -> None:
        text = json.dumps(event, separators=(",", ":"))
        send = self._send_channel
        if send is None:
            if len(self._backlog) < MAX_BACKLOG:
                self._backlog.append(text)
            return
        with contextlib.suppress(Exception):  # a channel closing under us: the leg ends too
            send(text)

    # -- the session ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the engine's WebSocket and send the session; RelayFailed if it cannot."""
        try:
            self._ws = await asyncio.wait_for(
                websockets.connect(
                    self.endpoint.url,
                    additional_headers=self.endpoint.headers,
                    max_size=16 * 1024 * 1024,
                    open_timeout=None,  # bounded by wait_for
                ),
                CONNECT_SECONDS,
            )
        except InvalidStatus as exc:
            raise RelayFailed(f"the engine answered HTTP {exc.response.status_code}") from None
        except (TimeoutError, OSError, InvalidHandshake) as exc:
            raise RelayFailed(f"the engine cannot be reached: {exc!r}") from None
        await self._ws.send(json.dumps({"type": "session.update", "session": self.session}))

    async def run(self) -> None:
        """Relay until either side ends; then end the other. Call :meth:`connect` first."""
        ws = self._ws
        if ws is None:
            raise RuntimeError("connect() first")
        tasks: list[asyncio.Task[None]] = [asyncio.create_task(self._watch_leg())]
        try:
            media = await self.leg.media()
        except LegError:
            media = None
        if media is not None:
            tasks += [
                asyncio.create_task(self._from_engine(ws, media)),
                asyncio.create_task(self._from_client(ws, media)),
                asyncio.create_task(self._uplink(ws, media)),
                asyncio.create_task(self._watch_output(media)),
            ]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await ws.close()
            await self.leg.hangup()
            self.ended.set()
            log.info("engine_relay.ended", call_id=self.leg.info.key)

    async def _watch_leg(self) -> None:
        while True:
            event = await self.leg.receive()
            if isinstance(event, Answered):
                log.info("engine_relay.connected", call_id=self.leg.info.key)
            if isinstance(event, Ended):
                return

    async def _from_engine(self, ws: ClientConnection, media: LegMedia) -> None:
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    continue
                event = json.loads(message)
                if isinstance(event, dict):
                    await self._engine_event(ws, media, event)
        except ConnectionClosed:
            pass
        log.info("engine_relay.engine_closed", call_id=self.leg.info.key)

    async def _engine_event(self, ws: ClientConnection, media: LegMedia, event: Json) -> None:
        kind = event.get("type")
        if kind in ("session.created", "session.updated"):
            reported = _reported_output(event)
            if reported is not None and reported != self._output:
                self._output = reported
                self._decoder = Decoder(reported, RATE)
        elif kind == "response.created":
            response = event.get("response")
            self._response = response.get("id") if isinstance(response, dict) else None
        elif kind == "response.output_audio.delta":
            self._play(media, str(event.get("response_id")), str(event.get("item_id")), event)
            return  # its audio goes on the track, not on the channel
        elif kind == "response.output_audio.done":
            media.playout.end_item(str(event.get("item_id")))
        elif kind == "response.done":
            response = event.get("response")
            done = response.get("id") if isinstance(response, dict) else None
            if done == self._playing:
                self._audio_done = True
            if done == self._response:
                self._response = None
        elif kind == "input_audio_buffer.speech_started":
            await self._barge_in(ws, media)
        self._to_client(event)

    def _play(self, media: LegMedia, response: str, item: str, event: Json) -> None:
        try:
            audio = base64.b64decode(str(event.get("delta", "")), validate=True)
        except ValueError:
            return
        if response in self._silenced:
            return  # cut off (barge-in or clear): what was still on its way is not played
        if response != self._playing:
            self._playing, self._items = response, []
            self._started = self._audio_done = False
        if item not in self._items:
            self._items.append(item)
        media.playout.push(item, self._decoder.decode(audio))

    async def _barge_in(self, ws: ClientConnection, media: LegMedia) -> None:
        """The browser's user spoke over the reply: silence it, and tell the engine how much
        of the item playing was really heard."""
        playing = self._playing
        if playing is None or not media.playout.depth_samples:
            return
        item = next((i for i in reversed(self._items) if media.playout.played_samples(i)), None)
        self._clear(media)
        if item is not None:
            truncate = {
                "type": "conversation.item.truncate",
                "item_id": item,
                "content_index": 0,
                "audio_end_ms": media.playout.played_ms(item),
            }
            with contextlib.suppress(ConnectionClosed):
                await ws.send(json.dumps(truncate))

    def _clear(self, media: LegMedia) -> None:
        """Flush the playout and say so (``output_audio_buffer.cleared``)."""
        playing = self._playing
        media.playout.flush()
        for silenced in (playing, self._response):
            if silenced is not None and len(self._silenced) < MAX_BACKLOG:
                self._silenced.add(silenced)
        self._playing, self._items, self._started = None, [], False
        if playing is not None:
            self._to_client(
                {
                    "type": "output_audio_buffer.cleared",
                    "event_id": _event_id(),
                    "response_id": playing,
                }
            )

    async def _from_client(self, ws: ClientConnection, media: LegMedia) -> None:
        while True:
            text = await self._client.get()
            try:
                event = json.loads(text)
            except ValueError:
                event = None
            if isinstance(event, dict):
                kind = event.get("type")
                if kind == "input_audio_buffer.append":
                    continue  # the audio is on the track
                if kind == "output_audio_buffer.clear":
                    if self._response is not None:
                        await ws.send(json.dumps({"type": "response.cancel"}))
                    self._clear(media)
                    continue
                if kind == "session.update" and isinstance(event.get("session"), dict):
                    event = {**event, "session": forced_session(event["session"])}
                    text = json.dumps(event)
            await ws.send(text)  # the engine judges the rest (its errors come back)

    async def _uplink(self, ws: ClientConnection, media: LegMedia) -> None:
        batch: list[bytes] = []
        async for frame in media.frames():
            batch.append(frame)
            if len(batch) < APPEND_FRAMES:
                continue
            audio = base64.b64encode(b"".join(batch)).decode("ascii")
            batch = []
            await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))

    async def _watch_output(self, media: LegMedia) -> None:
        """``output_audio_buffer.started`` at a response's first frame pulled for the track,
        ``.stopped`` once it is done and played out."""
        playout = media.playout
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            playing = self._playing
            if playing is None:
                continue
            if not self._started and any(playout.played_samples(i) for i in self._items):
                self._started = True
                self._to_client(self._buffer_event("started", playing))
            if self._started and self._audio_done and not playout.depth_samples:
                self._to_client(self._buffer_event("stopped", playing))
                for item in self._items:
                    playout.forget(item)
                self._playing, self._items, self._started = None, [], False

    @staticmethod
    def _buffer_event(what: str, response: str) -> Json:
        return {
            "type": f"output_audio_buffer.{what}",
            "event_id": _event_id(),
            "response_id": response,
        }


def engine_endpoint(api: ApiSettings) -> Endpoint:
    """The embedded engine's ``/v1/realtime`` on the supervisor's API, with the API's token
    (no ``X-Sipai-Call``: like a bare WebSocket session, a relayed one has no call record)."""
    return endpoint(AgentSettings(backend=Backend.LOCAL), api)


class EngineCalls:
    """The ``mode = "engine"`` offers of a :class:`~daemon.web.host.WebHost`: each one a
    browser leg at 24 kHz and an :class:`EngineRelay` on it, held as one of the host's calls
    (so ``[web] max_calls``, hang-up and drain apply as to agent calls)."""

    def __init__(self, host: WebHost, target: Endpoint, connect_timeout: float) -> None:
        self.host = host
        self.target = target
        self.connect_timeout = connect_timeout
        self._runs: set[asyncio.Task[None]] = set()

    async def offer(self, request: msg.WebOffer, key: str) -> msg.WebOfferReply:
        """Answer the offer and start relaying; 400 for an offer aiortc refuses, 503 when the
        engine cannot be reached."""
        info = CallInfo(
            key=key,
            inbound=True,
            sip_call_id=f"webrtc:{uuid.uuid4().hex}",
            caller=request.caller or "web:local",
            headers={"user-agent": request.user_agent} if request.user_agent else {},
            kind="web",
        )
        try:
            leg = await WebRtcLeg.accept(request.sdp, info, RATE, self.connect_timeout)
        except BadOffer as exc:
            log.info("engine_relay.offer_refused", call_id=key, error=str(exc))
            return msg.WebOfferReply(status=400, detail=f"the offer cannot be answered: {exc}")
        relay = EngineRelay(leg, self.target, request.session)

        def channel(opened: RTCDataChannel) -> None:
            if opened.label != EVENTS_CHANNEL:
                return
            opened.on("message", lambda m: relay.from_client(m) if isinstance(m, str) else None)
            relay.attach(opened.send)

        leg.peer.on("datachannel", channel)
        try:
            await relay.connect()
        except RelayFailed as exc:
            log.warning("engine_relay.engine_unreachable", call_id=key, error=str(exc))
            await leg.hangup()
            leg.release()
            return msg.WebOfferReply(status=503, detail=f"the realtime engine: {exc}")
        release = self.host.hold(key, leg)
        task = asyncio.create_task(self._run(relay, leg, release))
        self._runs.add(task)
        task.add_done_callback(self._runs.discard)
        log.info("engine_relay.offer_answered", call_id=key, caller=info.caller)
        return msg.WebOfferReply(sdp=leg.answer_sdp, call=key)

    async def _run(self, relay: EngineRelay, leg: WebRtcLeg, release: Callable[[], None]) -> None:
        try:
            await relay.run()
        except Exception as exc:
            log.error("engine_relay.failed", call_id=leg.info.key, error=repr(exc))
            await leg.hangup()
        finally:
            release()
            leg.release()
            await leg.wait_closed()
