"""OpenAI's realtime WebRTC routes on the daemon's API, driven by the official ``openai`` SDK and
a real aiortc peer, with a web host (the web worker's :class:`~daemon.web.host.WebHost` and
its engine relay) in the API's process, the embedded engine (Piper, Whisper, the
receptionist) behind it. Every data channel event is checked against the SDK's typed models.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import uvicorn
import websockets
from openai import AsyncOpenAI
from openai.types.realtime import ClientSecretCreateResponse

from api.app import ApiContext, HealthReport, WebCallRefused, WebCalls, create_app
from api.ephemeral import EphemeralKeys
from api.spec import load_spec
from config.schema import (
    AgentSettings,
    ApiSettings,
    DaemonSettings,
    RealtimeSettings,
    Settings,
    WebSettings,
)
from daemon.ipc import messages as msg
from daemon.legs.webrtc import WebRtcLeg, use_ice_addresses
from daemon.web.engine_relay import EVENTS_CHANNEL, EngineCalls, engine_endpoint
from daemon.web.flows import WebContext
from daemon.web.host import WebHost
from daemon.web.pool import WebPool
from tests.integration.test_engine import TOKEN, EngineServer
from tests.peers.webrtc_client import WebRtcClient
from tests.realtime_oracle import check_server_event

SESSION = {"type": "realtime", "instructions": "You are the front desk."}


class _NoServices:
    """A web host serving engine calls only needs no speech and reports nothing."""

    async def synthesize(self, text: str, rate: int) -> Any:
        raise AssertionError("an engine call synthesises nothing itself")

    async def report(self, kind: str, body: dict[str, Any]) -> None:
        raise AssertionError(f"an engine call reports nothing ({kind})")


class HostCalls:
    """The API's ``WebCalls`` served by a web host in the API's own process (no IPC)."""

    def __init__(self) -> None:
        self.host: WebHost | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def start(self, port: int) -> None:
        api = ApiSettings(host="127.0.0.1", port=port, token=TOKEN)
        ctx = WebContext(
            index=1000,
            services=_NoServices(),
            agent=AgentSettings(),
            api=api,
            realtime=RealtimeSettings(),
        )
        web = WebSettings(max_calls=4, connect_timeout_seconds=5)
        host = self.host = WebHost(ctx, web)
        host.modes["engine"] = EngineCalls(host, engine_endpoint(api), 5).offer

    async def offer(
        self, sdp: str, mode: Any, session: dict[str, Any] | None, caller: str, user_agent: str
    ) -> tuple[str, str]:
        assert self.host is not None
        self.loop = asyncio.get_running_loop()
        request = msg.WebOffer(
            sdp=sdp, mode=mode, session=session, caller=caller, user_agent=user_agent
        )
        reply = await self.host.offer(request)
        if reply.status != 201:
            raise WebCallRefused(reply.status, reply.detail)
        return f"rtc_{reply.call}", reply.sdp

    async def hangup(self, call: str) -> None:
        assert self.host is not None
        await self.host.hangup(call.removeprefix("rtc_"))

    def stop(self) -> None:
        if self.host is not None and self.loop is not None:
            asyncio.run_coroutine_threadsafe(self.host.stop(), self.loop).result(timeout=10)


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[EngineServer, HostCalls]]:
    use_ice_addresses(["127.0.0.1"])  # both peers of this process: loopback only
    calls = HostCalls()
    engine = EngineServer(web=calls)
    calls.start(engine.port)
    try:
        yield engine, calls
    finally:
        calls.stop()
        engine.close()
        use_ice_addresses([])


@pytest.fixture
async def http(server: tuple[EngineServer, HostCalls]) -> AsyncIterator[httpx.AsyncClient]:
    engine, _ = server
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{engine.port}", timeout=20) as c:
        yield c


class Browser(WebRtcClient):
    """An aiortc peer shaped like OpenAI's browser sample: microphone track + ``oai-events``."""

    def __init__(self) -> None:
        super().__init__(freq=0.0, channel=False)  # a silent microphone: no barge-in
        self.events: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self.oai = self.pc.createDataChannel(EVENTS_CHANNEL)
        self.oai.on("message", self._on_event)

    def _on_event(self, message: str | bytes) -> None:
        self.events.append(json.loads(message))
        self.arrived.set()

    async def until(self, kind: str, within: float) -> dict[str, Any]:
        """The first event of type ``kind`` (waiting up to ``within`` seconds)."""
        deadline = time.monotonic() + within
        while True:
            for event in self.events:
                if event["type"] == kind:
                    return event
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} within {within} s; got {[e['type'] for e in self.events]}"
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)


async def _mint(http: httpx.AsyncClient, seconds: int = 60) -> str:
    minted = await http.post(
        "/v1/realtime/client_secrets",
        json={"expires_after": {"anchor": "created_at", "seconds": seconds}, "session": SESSION},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert minted.status_code == 200, minted.text
    return str(minted.json()["value"])


async def test_the_openai_sdk_mints_a_key_and_gets_an_answer(
    server: tuple[EngineServer, HostCalls], http: httpx.AsyncClient
) -> None:
    """The SDK's client_secrets.create parses our answer as ClientSecretCreateResponse and its
    calls.create (JSON) gets an SDP answer; a raw application/sdp offer with the key, and a
    multipart sdp+session offer, get 201 with application/sdp and a Location to hang up."""
    engine, calls = server
    peers = [Browser() for _ in range(3)]
    try:
        async with AsyncOpenAI(
            api_key=TOKEN, base_url=f"http://127.0.0.1:{engine.port}/v1"
        ) as client:
            secret = await client.realtime.client_secrets.create(
                expires_after={"anchor": "created_at", "seconds": 120}, session=SESSION
            )
            assert isinstance(secret, ClientSecretCreateResponse)
            assert secret.value.startswith("ek_"), secret.value
            assert secret.session.type == "realtime"
            assert abs(secret.expires_at - (time.time() + 120)) < 5, secret.expires_at
            answer = await client.realtime.calls.create(sdp=await peers[0].offer())
            assert "a=fingerprint:" in answer.text, answer.text
            await peers[0].accept(answer.text)

        raw = await http.post(
            "/v1/realtime/calls",
            content=await peers[1].offer(),
            headers={"authorization": f"Bearer {secret.value}", "content-type": "application/sdp"},
        )
        assert raw.status_code == 201, raw.text
        assert raw.headers["content-type"].startswith("application/sdp")
        location = raw.headers["location"]
        assert location.startswith("/v1/realtime/calls/rtc_"), location
        await peers[1].accept(raw.text)

        form = await http.post(
            "/v1/realtime/calls",
            files={"sdp": (None, await peers[2].offer()), "session": (None, json.dumps(SESSION))},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert form.status_code == 201, form.text
        assert "a=fingerprint:" in form.text

        for peer in peers[:2]:
            await asyncio.wait_for(peer.connected.wait(), 10)
        assert calls.host is not None
        legs = [leg for leg in calls.host._legs.values() if isinstance(leg, WebRtcLeg)]
        assert len(legs) == 3, calls.host._legs
        hung = await http.post(f"{location}/hangup", headers={"authorization": f"Bearer {TOKEN}"})
        assert hung.status_code == 200, hung.text
        states = [leg.peer.connectionState for leg in legs]
        assert states.count("closed") == 1, states  # the daemon closed its side before the 200
        # The peer hears DTLS close_notify at once; if that one datagram is lost it still
        # learns of the end when its ICE consent checks go unanswered (this process's peers
        # use the web leg's default, [web] consent_seconds: about 15 s at the most).
        await asyncio.wait_for(peers[1].closed.wait(), 40)
        again = await http.post(f"{location}/hangup", headers={"authorization": f"Bearer {TOKEN}"})
        assert again.status_code == 404, again.text
    finally:
        for peer in peers:
            await peer.close()


async def test_bad_sdp_400_expired_or_used_key_401_wrong_type_415(
    server: tuple[EngineServer, HostCalls], http: httpx.AsyncClient
) -> None:
    """Garbage offers get 400 naming the problem (without using the key up), keys that are
    used, expired or unknown get 401, a body of another type 415; a key opens no other route."""
    engine, _ = server
    key = await _mint(http)
    bearer = {"authorization": f"Bearer {key}"}

    def refused(response: httpx.Response, status: int, code: str, detail: str) -> None:
        assert response.status_code == status, (response.status_code, response.text)
        body = response.json()
        assert detail in body["detail"], body
        assert body["error"] == {
            "message": body["detail"],
            "type": "invalid_request_error",
            "code": code,
        }, body

    sdp_type = {**bearer, "content-type": "application/sdp"}
    for offer, problem in (
        (b"", "empty"),
        (b"hello", "does not start with v=0"),
        (b"v=0\r\n\xff\xfe", "not UTF-8"),
        (b"v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n", "no audio"),
    ):
        response = await http.post("/v1/realtime/calls", content=offer, headers=sdp_type)
        refused(response, 400, "invalid_sdp", problem)
    too_big = await http.post("/v1/realtime/calls", content=b"v=0\r\n" * 40000, headers=sdp_type)
    refused(too_big, 400, "body_too_large", "exceeds")
    plain = {**bearer, "content-type": "text/plain"}
    refused(
        await http.post("/v1/realtime/calls", content=b"v=0", headers=plain),
        415,
        "unsupported_media_type",
        "content-type",
    )
    not_json = {**bearer, "content-type": "application/json"}
    refused(
        await http.post("/v1/realtime/calls", content=b"{", headers=not_json),
        400,
        "invalid_json",
        "not valid JSON",
    )

    # The key opens no REST route, nor does it mint keys.
    for method, path in (
        ("GET", "/calls"),
        ("POST", "/call"),
        ("POST", "/v1/realtime/client_secrets"),
    ):
        other = await http.request(method, path, headers=bearer, json={})
        assert other.status_code == 401, (path, other.status_code)

    peer = Browser()
    try:
        opened = await http.post("/v1/realtime/calls", content=await peer.offer(), headers=sdp_type)
        assert opened.status_code == 201, opened.text  # the bad offers left the key unused
        used = await http.post("/v1/realtime/calls", content=await peer.offer(), headers=sdp_type)
        refused(used, 401, "used_key", "ephemeral key already used")
        assert used.headers["www-authenticate"] == "Bearer"
    finally:
        await peer.close()

    late = await _mint(http, seconds=10)
    engine.skew = 11.0
    try:
        expired = await http.post(
            "/v1/realtime/calls",
            content=b"v=0",
            headers={"authorization": f"Bearer {late}", "content-type": "application/sdp"},
        )
    finally:
        engine.skew = 0.0
    refused(expired, 401, "expired_key", "ephemeral key expired")
    unknown = {"authorization": "Bearer ek_" + "0" * 32, "content-type": "application/sdp"}
    refused(
        await http.post("/v1/realtime/calls", content=b"v=0", headers=unknown),
        401,
        "invalid_key",
        "unknown ephemeral key",
    )
    short = await http.post(
        "/v1/realtime/client_secrets",
        json={"expires_after": {"seconds": 9}},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    refused(short, 400, "invalid_request", "expires_after.seconds")


async def test_the_engine_speaks_over_the_track_and_events_go_over_the_data_channel(
    server: tuple[EngineServer, HostCalls], http: httpx.AsyncClient
) -> None:
    """A response.create sent on oai-events makes the engine speak on the track (audio with
    energy), with session.created, response.done and output_audio_buffer.started/stopped on
    the channel, every event a valid GA server event, and no audio delta among them."""
    key = await _mint(http)
    browser = Browser()
    try:
        answer = await http.post(
            "/v1/realtime/calls",
            content=await browser.offer(),
            headers={"authorization": f"Bearer {key}", "content-type": "application/sdp"},
        )
        assert answer.status_code == 201, answer.text
        await browser.accept(answer.text)
        await asyncio.wait_for(browser.connected.wait(), 10)
        await browser.until("session.created", 10)
        updated = await browser.until("session.updated", 10)
        assert updated["session"]["instructions"] == SESSION["instructions"], updated
        assert updated["session"]["audio"]["output"]["format"] == {
            "type": "audio/pcm",
            "rate": 24000,
        }
        browser.oai.send(json.dumps({"type": "response.create"}))
        started = await browser.until("output_audio_buffer.started", 20)
        done = await browser.until("response.done", 30)
        stopped = await browser.until("output_audio_buffer.stopped", 30)
        assert started["response_id"] == done["response"]["id"] == stopped["response_id"]
        kinds = [e["type"] for e in browser.events]
        assert "response.output_audio.delta" not in kinds, kinds
        assert kinds.index("output_audio_buffer.stopped") > kinds.index("response.done"), kinds
        for event in browser.events:
            check_server_event(event, "ga")
        heard = browser.heard_pcm().astype(np.float64) / 32768.0
        window = 4800  # 100 ms at 48 kHz
        levels = [
            float(np.sqrt(np.mean(heard[i : i + window] ** 2)))
            for i in range(0, len(heard) - window, window)
        ]
        loudest = max(levels, default=0.0)
        print(f"track level: loudest 100 ms RMS {loudest:.4f} over {len(levels) / 10:.1f} s")
        assert loudest > 0.01, f"the track carried no speech (loudest 100 ms RMS {loudest:.4f})"
    finally:
        await browser.close()


async def test_output_audio_buffer_clear_silences_the_track_at_once(
    server: tuple[EngineServer, HostCalls], http: httpx.AsyncClient
) -> None:
    """output_audio_buffer.clear sent while the track plays a response answers
    output_audio_buffer.cleared for it (cancelling it if the engine is still on it), and the
    track is silent within 100 ms (no stopped event follows for it, no error)."""
    browser = Browser()
    try:
        answer = await http.post(
            "/v1/realtime/calls",
            content=await browser.offer(),
            headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/sdp"},
        )
        assert answer.status_code == 201, answer.text
        await browser.accept(answer.text)
        await browser.until("session.updated", 10)
        browser.oai.send(json.dumps({"type": "response.create"}))
        started = await browser.until("output_audio_buffer.started", 20)
        await asyncio.sleep(0.5)  # well into the greeting
        browser.oai.send(json.dumps({"type": "output_audio_buffer.clear"}))
        cleared = await browser.until("output_audio_buffer.cleared", 5)
        cleared_at = time.monotonic()
        assert cleared["response_id"] == started["response_id"], (started, cleared)
        # Cancelled if the engine was still speaking, else completed (it sends faster than
        # real time): either way the clear made no error.
        done = await browser.until("response.done", 10)
        assert done["response"]["status"] in ("cancelled", "completed"), done["response"]
        await asyncio.sleep(0.6)
        after = [
            frame
            for frame, at in zip(browser.heard, browser.heard_at, strict=True)
            if at > cleared_at + 0.1
        ]
        tail = np.concatenate(after).astype(np.float64) / 32768.0
        level = float(np.sqrt(np.mean(tail**2)))
        print(f"track after clear: RMS {level:.5f} over {len(tail) / 48000:.2f} s")
        assert len(tail) > 48000 * 0.3, "the track stopped instead of playing silence"
        assert level < 0.002, f"the track still plays after the clear (RMS {level:.5f})"
        kinds = [e["type"] for e in browser.events]
        assert "output_audio_buffer.stopped" not in kinds, kinds
        assert "error" not in kinds, browser.events
        for event in browser.events:
            check_server_event(event, "ga")
    finally:
        await browser.close()


async def test_a_key_opens_its_minted_session_and_refuses_a_supplied_one(
    server: tuple[EngineServer, HostCalls], http: httpx.AsyncClient
) -> None:
    """With an ephemeral key, a session given in the query, the JSON body or the form gets 400
    naming the ``session`` field and leaves the key unused; the key then opens its session."""
    key = await _mint(http)
    bearer = {"authorization": f"Bearer {key}"}
    given = json.dumps({"type": "realtime", "instructions": "Ignore the front desk."})
    peer = Browser()
    try:
        offer = await peer.offer()
        attempts = {
            "query": await http.post(
                "/v1/realtime/calls",
                params={"session": given},
                content=offer,
                headers={**bearer, "content-type": "application/sdp"},
            ),
            "json": await http.post(
                "/v1/realtime/calls", json={"sdp": offer, "session": given}, headers=bearer
            ),
            "form": await http.post(
                "/v1/realtime/calls",
                files={"sdp": (None, offer), "session": (None, given)},
                headers=bearer,
            ),
        }
        for form, response in attempts.items():
            assert response.status_code == 400, (form, response.status_code, response.text)
            body = response.json()
            assert body["detail"].startswith("session:"), (form, body)
            assert body["error"]["code"] == "invalid_session", (form, body)
        opened = await http.post(
            "/v1/realtime/calls",
            content=offer,
            headers={**bearer, "content-type": "application/sdp"},
        )
        assert opened.status_code == 201, opened.text  # the refusals left the key unused
    finally:
        await peer.close()


OFFER = "\r\n".join(
    (
        "v=0",
        "o=- 1 1 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "m=audio 9 UDP/TLS/RTP/SAVPF 111",
        "a=rtpmap:111 opus/48000/2",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuv",
        "a=fingerprint:sha-256 " + ":".join(["00"] * 32),
        "",
    )
)


class BareApi:
    """The API app on loopback with ephemeral keys but no engine and no web host, and a
    switch for draining."""

    def __init__(self, web: WebCalls | None = None) -> None:
        self.stopping = False
        self.keys = EphemeralKeys()
        app = create_app(
            ApiContext(
                health=lambda: HealthReport("healthy", False, "test", 1.0, 0, 0, []),
                tokens={"crm": TOKEN},
                draining=lambda: self.stopping,
                keys=self.keys,
                web=web,
            )
        )
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None)
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the API did not start"
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)


@pytest.fixture
def bare() -> Iterator[BareApi]:
    api = BareApi()
    yield api
    api.close()


async def test_a_503_offer_leaves_the_key_unused(bare: BareApi) -> None:
    """An offer refused with 503 (the daemon stopping, then browser calls off) does not use its
    ephemeral key up."""
    key = bare.keys.mint(60, {}).value
    headers = {"authorization": f"Bearer {key}", "content-type": "application/sdp"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bare.port}", timeout=10) as http:
        bare.stopping = True
        stopping = await http.post("/v1/realtime/calls", content=OFFER, headers=headers)
        bare.stopping = False
        off = await http.post("/v1/realtime/calls", content=OFFER, headers=headers)
    assert stopping.status_code == 503, stopping.text
    assert "stopping" in stopping.json()["detail"], stopping.text
    assert off.status_code == 503, off.text
    assert "browser calls are off" in off.json()["detail"], off.text
    bare.keys.check(key)  # raises KeyRefused("used_key") if a 503 used it up


async def test_a_503_from_the_web_pool_leaves_the_key_unused(tmp_path: Path) -> None:
    """An offer with an ephemeral key that the web pool refuses with 503 (no web worker is
    up) leaves the key unused."""
    pool = WebPool(Settings(daemon=DaemonSettings(runtime_dir=str(tmp_path))))
    api = BareApi(web=pool)
    try:
        key = api.keys.mint(60, {}).value
        headers = {"authorization": f"Bearer {key}", "content-type": "application/sdp"}
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.port}", timeout=10) as c:
            refused = await c.post("/v1/realtime/calls", content=OFFER, headers=headers)
            again = await c.post("/v1/realtime/calls", content=OFFER, headers=headers)
    finally:
        api.close()
    for response in (refused, again):  # not 401 used_key the second time
        assert response.status_code == 503, response.text
        assert response.json()["detail"] == "no web worker is up", response.text
    api.keys.check(key)  # raises KeyRefused("used_key") if a refusal used it up


async def test_an_offer_the_web_worker_refuses_leaves_the_key_unused(
    server: tuple[EngineServer, HostCalls], http: httpx.AsyncClient
) -> None:
    """An offer with an ephemeral key that passes the API's check but that the web worker's
    aiortc refuses (400) leaves the key unused: the same key then opens its session."""
    key = await _mint(http)
    headers = {"authorization": f"Bearer {key}", "content-type": "application/sdp"}
    refused = await http.post("/v1/realtime/calls", content=OFFER, headers=headers)
    assert refused.status_code == 400, refused.text
    assert refused.json()["detail"].startswith("the offer cannot be answered"), refused.text
    peer = Browser()
    try:
        opened = await http.post("/v1/realtime/calls", content=await peer.offer(), headers=headers)
        assert opened.status_code == 201, opened.text  # not 401 used_key
        hung = await http.post(
            f"{opened.headers['location']}/hangup", headers={"authorization": f"Bearer {TOKEN}"}
        )
        assert hung.status_code == 200, hung.text
    finally:
        await peer.close()


async def test_a_503_handshake_leaves_the_key_unused(bare: BareApi) -> None:
    """A ``/v1/realtime`` handshake refused with 503 (no engine) does not use its ephemeral
    key up."""
    key = bare.keys.mint(60, {}).value
    url = f"ws://127.0.0.1:{bare.port}/v1/realtime"
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            url, additional_headers={"authorization": f"Bearer {key}"}, open_timeout=10
        ):
            raise AssertionError("a handshake with no engine behind it was accepted")
    assert refused.value.response.status_code == 503, refused.value.response
    bare.keys.check(key)


def test_the_spec_lists_403_for_the_keyed_routes() -> None:
    """The spec lists the 403 a console session without its CSRF token gets on
    ``/v1/realtime/calls`` and ``/v1/realtime/client_secrets``."""
    paths = load_spec()["paths"]
    for path in ("/v1/realtime/calls", "/v1/realtime/client_secrets"):
        assert "403" in paths[path]["post"]["responses"], (path, paths[path]["post"]["responses"])


async def test_a_full_key_store_answers_503_with_retry_after(bare: BareApi) -> None:
    """With as many live unused keys as the store holds, a mint gets 503 with a detail and
    ``Retry-After`` (the seconds until the soonest key expires), as the spec lists it, not a
    400: the request is not wrong."""
    bare.keys.limit = 2
    headers = {"authorization": f"Bearer {TOKEN}"}
    body = {"expires_after": {"anchor": "created_at", "seconds": 30}}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bare.port}", timeout=10) as http:
        minted = [
            await http.post("/v1/realtime/client_secrets", json=body, headers=headers)
            for _ in range(2)
        ]
        full = await http.post("/v1/realtime/client_secrets", json=body, headers=headers)
    assert [r.status_code for r in minted] == [200, 200], [r.text for r in minted]
    assert full.status_code == 503, full.text
    assert "2 ephemeral keys are unused and live" in full.json()["detail"], full.text
    assert full.json()["error"]["code"] == "too_many_keys", full.text
    assert 1 <= int(full.headers["retry-after"]) <= 30, full.headers
    assert "503" in load_spec()["paths"]["/v1/realtime/client_secrets"]["post"]["responses"]
