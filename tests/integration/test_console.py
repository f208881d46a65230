"""The web console's routes: login and sessions, CSRF, the no-token loopback rule, the live
feed over server-sent events (a real server), the talk button's offer, and its files."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from structlog.testing import capture_logs

from api.app import ApiContext, WebCallRefused, create_app
from api.console_routes import CSP, FILES
from api.server import ApiServer
from api.spec import load_spec
from daemon.call_feed import CallFeed
from daemon.outbound import OutboundService
from daemon.store import Store
from tests.integration.test_api import BASE, ScriptedRunner, _health

TOKEN = "console-secret-1"
CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


class Backend:
    """A store and an outbound service with a scripted runner, as the supervisor has them."""

    def __init__(self, store: Store, service: OutboundService, runner: ScriptedRunner) -> None:
        self.store = store
        self.service = service
        self.runner = runner


@contextlib.asynccontextmanager
async def _backend(tmp_path: Path) -> AsyncIterator[Backend]:
    store = Store(tmp_path / "sipai.db")
    await store.open()
    runner = ScriptedRunner()
    service = OutboundService(store, runner, 4, max_queued=16)
    await service.recover()
    service.start()
    try:
        yield Backend(store, service, runner)
    finally:
        for event in runner.release.values():
            event.set()
        await service.stop()
        await store.close()


def _client(
    ctx: ApiContext, address: str = "127.0.0.1", base_url: str = "http://127.0.0.1:8080"
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(ctx), client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


def _set_cookie(response: httpx.Response, name: str) -> str:
    """The Set-Cookie header of ``response`` that sets ``name``."""
    for header in response.headers.get_list("set-cookie"):
        if header.startswith(f"{name}="):
            return header
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers}")


def _cookie_value(header: str) -> str:
    return header.split(";", 1)[0].split("=", 1)[1]


async def _login(client: httpx.AsyncClient, token: str) -> httpx.Response:
    """GET the login form, then post it with ``token`` and the form's CSRF token."""
    form = await client.get("/login")
    assert form.status_code == 200, form.text
    match = CSRF_FIELD.search(form.text)
    assert match is not None, form.text
    login_cookie = _cookie_value(_set_cookie(form, "sipai_login"))
    client.cookies.clear()
    return await client.post(
        "/login",
        data={"csrf": match.group(1), "token": token},
        headers={"cookie": f"sipai_login={login_cookie}"},
    )


async def test_login_sets_a_strict_httponly_cookie_and_forms_need_csrf(tmp_path: Path) -> None:
    """A good token at POST /login gives a session cookie (HttpOnly, SameSite=Strict, Path=/,
    12 h) that opens the API; with the cookie an unsafe request needs the session's
    X-CSRF-Token (403 without), with a bearer token it does not; a wrong token gets the login
    page again with 401, logged like a refused bearer token, and logout ends the session."""
    async with _backend(tmp_path) as backend:
        ctx = ApiContext(
            health=_health,
            store=backend.store,
            outbound=backend.service,
            tokens={"crm": TOKEN},
        )
        async with _client(ctx) as client:
            assert (await client.get("/calls")).status_code == 401
            index = await client.get("/")
            assert (index.status_code, index.headers["location"]) == (303, "/login")

            with capture_logs() as logs:
                wrong = await _login(client, "not-the-token")
            assert wrong.status_code == 401
            assert 'id="login-token"' in wrong.text
            assert "Wrong token." in wrong.text
            assert "sipai_session" not in wrong.headers.get("set-cookie", "")
            [refused] = [e for e in logs if e["event"] == "api.request" and e["status"] == 401]
            assert (refused["path"], refused["token"]) == ("/login", None)

            with capture_logs() as logs:
                good = await _login(client, TOKEN)
            assert (good.status_code, good.headers["location"]) == (303, "/")
            header = _set_cookie(good, "sipai_session")
            attributes = {part.strip().lower() for part in header.split(";")[1:]}
            assert {"httponly", "samesite=strict", "path=/", "max-age=43200"} <= attributes, header
            assert "secure" not in attributes, "plain http: no Secure flag"
            assert TOKEN not in str(logs), "the token is never logged"
            cookie = {"cookie": f"sipai_session={_cookie_value(header)}"}
            client.cookies.clear()

            listed = await client.get("/calls", headers=cookie)
            assert listed.status_code == 200, listed.text
            page = await client.get("/", headers=cookie)
            assert page.status_code == 200
            assert 'id="talk"' in page.text
            session = (await client.get("/console/session", headers=cookie)).json()
            assert (session["token_name"], session["auth"], session["warning"]) == (
                "crm",
                "token",
                None,
            )

            with capture_logs() as logs:
                no_csrf = await client.post("/call", json=BASE, headers=cookie)
            assert no_csrf.status_code == 403
            assert no_csrf.json() == {"detail": "missing or invalid CSRF token"}
            assert backend.runner.started == [], "nothing was placed"
            [line] = [e for e in logs if e["event"] == "api.request"]
            assert (line["status"], line["token"]) == (403, "crm")
            bad_csrf = await client.post(
                "/call", json=BASE, headers={**cookie, "x-csrf-token": session["csrf"] + "x"}
            )
            assert bad_csrf.status_code == 403
            with capture_logs() as logs:
                placed = await client.post(
                    "/call", json=BASE, headers={**cookie, "x-csrf-token": session["csrf"]}
                )
            assert placed.status_code == 200, placed.text
            [line] = [e for e in logs if e["event"] == "api.request"]
            assert line["token"] == "crm", "the access log names the session's token"
            bearer = await client.post(
                "/call", json=BASE, headers={"authorization": f"Bearer {TOKEN}"}
            )
            assert bearer.status_code == 200, "a bearer token needs no CSRF token"

            logout = await client.post(
                "/logout", headers={**cookie, "x-csrf-token": session["csrf"]}
            )
            assert logout.status_code == 200
            assert 'sipai_session=""' in _set_cookie(logout, "sipai_session")
            assert (await client.get("/calls", headers=cookie)).status_code == 401
            after = await client.get("/", headers=cookie)
            assert (after.status_code, after.headers["location"]) == (303, "/login")


async def test_the_cookie_is_secure_behind_a_tls_proxy_on_this_machine(tmp_path: Path) -> None:
    """X-Forwarded-Proto: https from a proxy on loopback marks the session cookie Secure; the
    same header from a client beyond loopback does not."""
    async with _backend(tmp_path) as backend:
        ctx = ApiContext(health=_health, store=backend.store, tokens={"crm": TOKEN})
        proxied = {"x-forwarded-proto": "https"}
        for address, secure in (("127.0.0.1", True), ("192.0.2.9", False)):
            async with _client(ctx, address) as client:
                client.headers.update(proxied)
                header = _set_cookie(await _login(client, TOKEN), "sipai_session")
                attributes = {part.strip().lower() for part in header.split(";")[1:]}
                assert ("secure" in attributes) is secure, (address, header)


async def test_the_login_form_needs_its_own_csrf_token(tmp_path: Path) -> None:
    """POST /login without the login page's token (cookie and field alike) is refused with
    403 and opens no session, even with the right API token."""
    async with _backend(tmp_path) as backend:
        ctx = ApiContext(health=_health, store=backend.store, tokens={"crm": TOKEN})
        async with _client(ctx) as client:
            forged = await client.post("/login", data={"csrf": "guess", "token": TOKEN})
            assert forged.status_code == 403
            assert "expired" in forged.text
            assert "sipai_session" not in forged.headers.get("set-cookie", "")


async def test_without_a_token_the_console_answers_loopback_only_with_a_warning(
    tmp_path: Path,
) -> None:
    """With no api.token the console and /web/calls answer 403 to a client beyond loopback
    (or one that came through a proxy) and 200 to one on loopback, whose session carries the
    warning; the JSON API stays open to both, as before."""
    async with _backend(tmp_path) as backend:
        ctx = ApiContext(health=_health, store=backend.store, outbound=backend.service)
        async with _client(ctx, "192.0.2.9") as remote, _client(ctx) as local:
            for method, path in (
                ("GET", "/"),
                ("GET", "/login"),
                ("GET", "/console/session"),
                ("GET", "/console/events"),
                ("GET", "/console/static/console.js"),
                ("POST", "/web/calls"),
                ("DELETE", "/web/calls/web-1"),
            ):
                refused = await remote.request(method, path)
                assert refused.status_code == 403, (method, path, refused.text)
                assert "only on this machine" in refused.json()["detail"]
            assert (await remote.get("/calls")).status_code == 200, "the JSON API is unchanged"
            assert (await remote.post("/call", json=BASE)).status_code == 200

            proxied = await local.get("/", headers={"x-forwarded-for": "192.0.2.9"})
            assert proxied.status_code == 403, "a proxy on loopback does not make clients local"
            page = await local.get("/")
            assert page.status_code == 200
            assert page.headers["content-security-policy"] == CSP
            login = await local.get("/login")
            assert (login.status_code, login.headers["location"]) == (303, "/")
            session = await local.get("/console/session")
            assert session.status_code == 200
            body = session.json()
            assert body["auth"] == "none"
            assert "No api.token" in body["warning"]
            cookie = {
                "cookie": f"sipai_session={_cookie_value(_set_cookie(session, 'sipai_session'))}"
            }
            local.cookies.clear()
            no_csrf = await local.post("/call", json=BASE, headers=cookie)
            assert no_csrf.status_code == 403, "the page's session still needs its CSRF token"
            placed = await local.post(
                "/call", json=BASE, headers={**cookie, "x-csrf-token": body["csrf"]}
            )
            assert placed.status_code == 200


async def test_without_a_token_a_rebound_name_gets_no_console_session(tmp_path: Path) -> None:
    """With no api.token a loopback client that asks for another host name (a site whose name
    was rebound to 127.0.0.1) gets 403 and no session from /console/session, while the
    loopback names 127.0.0.1, localhost and [::1] on any port get one."""
    async with _backend(tmp_path) as backend:
        ctx = ApiContext(health=_health, store=backend.store, outbound=backend.service)
        for base_url in ("http://attacker.example:8080", "http://sipai", "http://10.0.0.5"):
            async with _client(ctx, base_url=base_url) as rebound:
                session = await rebound.get("/console/session")
                assert session.status_code == 403, (base_url, session.text)
                assert "only on this machine" in session.json()["detail"], base_url
                assert "csrf" not in session.json(), base_url
                assert "set-cookie" not in session.headers, base_url
                assert (await rebound.get("/")).status_code == 403, base_url
                assert (await rebound.post("/web/calls")).status_code == 403, base_url
        for base_url in ("http://127.0.0.1:9", "http://localhost:8080", "http://[::1]:8080"):
            async with _client(ctx, base_url=base_url) as local:
                session = await local.get("/console/session")
                assert session.status_code == 200, (base_url, session.text)
                assert session.json()["csrf"], base_url


async def test_an_unsafe_request_from_another_origin_is_refused(tmp_path: Path) -> None:
    """POST /call, /v1/realtime/calls, /web/calls and /login with an Origin that is not the
    request's own (scheme, host and port) get 403 naming the cross-site refusal, with no
    token, a bearer token or a console cookie alike, and nothing is placed; the same request
    with its own Origin or with no Origin (curl, backends) works as before."""
    foreign = (
        "http://attacker.example",
        "null",
        "https://127.0.0.1:8080",
        "http://127.0.0.1:8081",
        "http://localhost:8080",
    )
    async with _backend(tmp_path) as backend:
        open_ctx = ApiContext(health=_health, store=backend.store, outbound=backend.service)
        async with _client(open_ctx) as client:
            for origin in foreign:
                headers = {"origin": origin, "content-type": "text/plain"}
                for path, body in (
                    ("/call", json.dumps(BASE)),
                    ("/web/calls", OFFER),
                ):
                    refused = await client.post(path, content=body, headers=headers)
                    assert refused.status_code == 403, (origin, path, refused.text)
                    assert "cross-site" in refused.json()["detail"], (origin, path)
                form = await client.post(
                    "/v1/realtime/calls",
                    files={"sdp": ("offer", OFFER)},
                    headers={"origin": origin},
                )
                assert form.status_code == 403, (origin, form.text)
                assert "cross-site" in form.json()["detail"], origin
            assert await backend.store.list_calls(10) == [], "no call was placed"
            placed = await client.post("/call", json=BASE)
            assert placed.status_code == 200, "curl with no Origin works as before"
            same = await client.post(
                "/call", json=BASE, headers={"origin": "http://127.0.0.1:8080"}
            )
            assert same.status_code == 200, "the page's own origin is not foreign"

        token_ctx = ApiContext(
            health=_health,
            store=backend.store,
            outbound=backend.service,
            tokens={"crm": TOKEN},
        )
        async with _client(token_ctx) as client:
            bearer = {"authorization": f"Bearer {TOKEN}"}
            refused = await client.post(
                "/call", json=BASE, headers={**bearer, "origin": "http://attacker.example"}
            )
            assert refused.status_code == 403, refused.text
            assert (await client.post("/call", json=BASE, headers=bearer)).status_code == 200
            good = await _login(client, TOKEN)
            cookie = {
                "cookie": f"sipai_session={_cookie_value(_set_cookie(good, 'sipai_session'))}"
            }
            client.cookies.clear()
            csrf = (await client.get("/console/session", headers=cookie)).json()["csrf"]
            with_cookie = {**cookie, "x-csrf-token": csrf}
            refused = await client.post(
                "/call", json=BASE, headers={**with_cookie, "origin": "http://attacker.example"}
            )
            assert refused.status_code == 403, refused.text
            assert "cross-site" in refused.json()["detail"]
            login = await client.post(
                "/login",
                data={"csrf": "x", "token": TOKEN},
                headers={"origin": "http://attacker.example"},
            )
            assert login.status_code == 403, login.text
            assert "cross-site" in login.json()["detail"]
            assert (await client.post("/call", json=BASE, headers=with_cookie)).status_code == 200


class FakeWebCalls:
    """The web workers' side of POST /web/calls, answering as told."""

    def __init__(self) -> None:
        self.offers: list[tuple[str, str, str, str]] = []
        self.hung_up: list[str] = []
        self.refusal: WebCallRefused | None = None

    async def offer(
        self,
        sdp: str,
        mode: Literal["agent", "engine"],
        session: dict[str, Any] | None,
        caller: str,
        user_agent: str,
    ) -> tuple[str, str]:
        if self.refusal is not None:
            raise self.refusal
        self.offers.append((sdp, mode, caller, user_agent))
        return "web-7", "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\n"

    async def hangup(self, call: str) -> None:
        self.hung_up.append(call)


OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"


async def test_the_talk_button_posts_an_offer_and_gets_the_answer(tmp_path: Path) -> None:
    """POST /web/calls hands the browser's offer to the web workers as the session's token
    (caller web:<name>) and answers 201 with the SDP answer and the call's URL; a body that is
    not an offer gets 400, a refusal its status and detail, no web workers 503; DELETE on the
    call's URL hangs it up."""
    web = FakeWebCalls()
    async with _backend(tmp_path) as backend:
        ctx = ApiContext(health=_health, store=backend.store, tokens={"crm": TOKEN}, web=web)
        async with _client(ctx) as client:
            header = _set_cookie(await _login(client, TOKEN), "sipai_session")
            client.cookies.clear()
            cookie = {"cookie": f"sipai_session={_cookie_value(header)}"}
            csrf = (await client.get("/console/session", headers=cookie)).json()["csrf"]
            sdp = {"content-type": "application/sdp", "user-agent": "Chromium/156"}
            headers = {**cookie, **sdp, "x-csrf-token": csrf}

            answered = await client.post("/web/calls", content=OFFER, headers=headers)
            assert answered.status_code == 201, answered.text
            assert answered.headers["content-type"].startswith("application/sdp")
            assert answered.headers["location"] == "/web/calls/web-7"
            assert answered.text.startswith("v=0")
            assert web.offers == [(OFFER, "agent", "web:crm", "Chromium/156")]

            no_csrf = await client.post("/web/calls", content=OFFER, headers={**cookie, **sdp})
            assert no_csrf.status_code == 403
            for body, kind in ((b"hello", "application/sdp"), (OFFER.encode(), "text/plain")):
                bad = await client.post(
                    "/web/calls", content=body, headers={**headers, "content-type": kind}
                )
                assert bad.status_code == 400, bad.text
            binary = await client.post("/web/calls", content=b"v=0\xff\xfe", headers=headers)
            assert binary.json()["detail"] == "the SDP offer is not UTF-8 text"
            huge = await client.post("/web/calls", content="v=0" + "a" * 70000, headers=headers)
            assert huge.status_code == 400
            assert "exceeds" in huge.json()["detail"]
            web.refusal = WebCallRefused(503, "every web worker is full (8 calls)")
            full = await client.post("/web/calls", content=OFFER, headers=headers)
            assert (full.status_code, full.json()["detail"]) == (
                503,
                "every web worker is full (8 calls)",
            )
            assert len(web.offers) == 1

            ended = await client.delete(
                "/web/calls/web-7", headers={**cookie, "x-csrf-token": csrf}
            )
            assert ended.status_code == 200
            assert web.hung_up == ["web-7"]

        off = ApiContext(health=_health, store=backend.store)
        async with _client(off) as client:
            response = await client.post(
                "/web/calls", content=OFFER, headers={"content-type": "application/sdp"}
            )
            assert response.status_code == 503
            assert "off" in response.json()["detail"]


class _Stream:
    """One GET /console/events read event by event, with arrival times."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self) -> tuple[str, str, float]:
        """The next event or comment: (event name or ":" for a comment, data, arrival)."""
        name, data = "", ""
        async with asyncio.timeout(5):
            async for line in self._lines:
                if line.startswith(":"):
                    return ":", line[1:].strip(), time.monotonic()
                if line.startswith("event:"):
                    name = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    data = line.split(":", 1)[1].strip()
                elif line == "" and name:
                    return name, data, time.monotonic()
        return "", "", time.monotonic()  # the stream ended


async def test_calls_are_pushed_over_sse_and_drain_ends_the_stream(tmp_path: Path) -> None:
    """A stream of /console/events (a real server) starts with a snapshot of the calls in
    progress, then gets each published change as a ``call`` event, in order, within 100 ms;
    a ``: ping`` when idle; the 17th stream gets 503 and a closed one frees its place; draining
    the feed ends every stream so the server stops at once."""
    feed = CallFeed(ping_seconds=0.2)
    feed.publish(
        {"call_id": "out-1", "direction": "outbound", "call_status": "ringing", "extension": "1001"}
    )
    async with _backend(tmp_path) as backend:
        ctx = ApiContext(health=_health, store=backend.store, tokens={"crm": TOKEN}, feed=feed)
        server = ApiServer(create_app(ctx), "127.0.0.1", 0)
        await server.start()
        base = f"http://127.0.0.1:{server.address[1]}"
        bearer = {"authorization": f"Bearer {TOKEN}"}
        stopped = False
        try:
            async with (
                contextlib.AsyncExitStack() as streams,
                httpx.AsyncClient(base_url=base, headers=bearer, timeout=5) as client,
            ):
                response = await streams.enter_async_context(
                    client.stream("GET", "/console/events")
                )
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                stream = _Stream(response)
                name, data, _ = await stream.next()
                assert name == "snapshot"
                [live] = json.loads(data)["calls"]
                assert (live["call_id"], live["status"], live["call_status"]) == (
                    "out-1",
                    "in_progress",
                    "ringing",
                )

                published = [
                    {
                        "call_id": "in-00000000000000b1",
                        "direction": "web",
                        "status": "in_progress",
                        "call_status": "answered",
                        "caller": "web:crm",
                        "extension": None,
                        "started_at": time.time(),
                    },
                    {
                        "call_id": "in-00000000000000b1",
                        "call_status": "answered",
                        "turn": {"role": "caller", "text": "Call me back.", "at": 1.5},
                    },
                    {"call_id": "in-00000000000000b1", "call_status": "completed"},
                ]
                seen = []
                for event in published:
                    sent = time.monotonic()
                    feed.publish(event)
                    name, data, arrived = await stream.next()
                    while name == ":":  # a ping may come first
                        name, data, arrived = await stream.next()
                    assert name == "call"
                    delay_ms = (arrived - sent) * 1000
                    assert delay_ms < 100, f"a call event took {delay_ms:.1f} ms"
                    print(f"call event delivered in {delay_ms:.1f} ms")
                    seen.append(json.loads(data))
                assert [(e["status"], e["call_status"]) for e in seen] == [
                    ("in_progress", "answered"),
                    ("in_progress", "answered"),
                    ("ended", "completed"),
                ]
                assert {e["direction"] for e in seen} == {"web"}
                assert seen[1]["turn"]["text"] == "Call me back."
                assert seen[2]["caller"] == "web:crm", "events are completed from the call"
                assert [c["call_id"] for c in feed.snapshot()] == ["out-1"]

                started = time.monotonic()
                name, _, arrived = await stream.next()
                assert name == ":", "an idle stream is pinged"
                assert arrived - started < 1.0

                others = []  # each read on, so that its stream stays open
                for _ in range(15):
                    more = await streams.enter_async_context(
                        client.stream("GET", "/console/events")
                    )
                    assert more.status_code == 200
                    others.append(_Stream(more))
                    assert (await others[-1].next())[0] == "snapshot"
                assert feed.subscribers == 16
                seventeenth = await client.get("/console/events")
                assert seventeenth.status_code == 503
                assert "16 console streams" in seventeenth.json()["detail"]
                await others.pop().response.aclose()  # a page closed: its place is free
                async with asyncio.timeout(5):
                    while feed.subscribers != 15:
                        await asyncio.sleep(0.01)

                feed.drain()
                assert (await stream.next())[0] == "", "the stream ended"
                started = time.monotonic()
                await server.stop(grace_seconds=5)
                stopped, stopped_s = True, time.monotonic() - started
            assert stopped_s < 1.0, f"the server took {stopped_s:.2f} s to stop"
            assert feed.subscribers == 0
        finally:
            if not stopped:
                await server.stop(grace_seconds=1)


async def test_outbound_statuses_reach_the_feed(tmp_path: Path) -> None:
    """An outbound call placed through the API is on the feed at each stored status: queued,
    dialing, ringing, answered, then completed (and off the snapshot)."""
    feed = CallFeed()
    async with _backend(tmp_path) as backend:
        backend.service.status_listeners.append(feed.outbound_status)
        ctx = ApiContext(health=_health, store=backend.store, outbound=backend.service)
        events = feed.subscribe()
        async with _client(ctx) as client:
            placed = await client.post("/call", json=BASE)
            assert placed.status_code == 200
            call_id = placed.json()["call_id"]
        seen = []
        async with asyncio.timeout(5):
            async for event in events:
                seen.append(event)
                if event["status"] == "ended":
                    break
        assert [e["call_status"] for e in seen] == [
            "queued",
            "dialing",
            "ringing",
            "answered",
            "completed",
        ]
        assert {(e["call_id"], e["direction"], e["extension"]) for e in seen} == {
            (call_id, "outbound", "1001")
        }
        assert feed.snapshot() == []


def test_console_files_reference_nothing_outside_the_daemon() -> None:
    """The console's files load nothing from another origin (no http://, https:// or
    protocol-relative URL) and hold no inline script body or style attribute, which the
    Content-Security-Policy would refuse."""
    files = sorted(p for p in FILES.iterdir() if p.suffix in (".html", ".css", ".js"))
    assert {p.name for p in files} >= {
        "index.html",
        "login.html",
        "console.css",
        "console.js",
        "talk.js",
        "rtc.js",
    }
    served = {p.name for p in files}
    for path in files:
        text = path.read_text()
        for pattern in ("http://", "https://", '"//', "'//", "url(//", "style="):
            assert pattern not in text, f"{path.name} has {pattern!r}"
        if path.suffix == ".html":
            for script in re.finditer(r"<script\b([^>]*)>(.*?)</script>", text, re.S):
                assert "src=" in script.group(1), f"{path.name}: a script without src"
                assert script.group(2).strip() == "", f"{path.name}: an inline script body"
                src = re.search(r'src="/console/static/([^"]+)"', script.group(1))
                assert src is not None, f"{path.name}: {script[0]}"
                assert src.group(1) in served, f"{path.name}: {script[0]}"
            assert "<style" not in text, f"{path.name}: an inline style sheet"
            assert re.search(r"\son[a-z]+=", text) is None, f"{path.name}: an inline handler"


async def test_console_pages_carry_the_security_headers(tmp_path: Path) -> None:
    """Every console answer has the Content-Security-Policy, nosniff and same-origin referrer
    headers; its HTML is never cached; its files are served by name only; api.console =
    false turns the pages off (404) and leaves the JSON API."""
    async with _backend(tmp_path) as backend:
        ctx = ApiContext(health=_health, store=backend.store, tokens={"crm": TOKEN})
        async with _client(ctx) as client:
            for path, kind in (
                ("/login", "text/html"),
                ("/console/static/console.css", "text/css"),
                ("/console/static/console.js", "text/javascript"),
                ("/console/static/talk.js", "text/javascript"),
                ("/console/static/rtc.js", "text/javascript"),
            ):
                response = await client.get(path)
                assert response.status_code == 200, path
                assert response.headers["content-type"].startswith(kind), path
                assert response.headers["content-security-policy"] == CSP
                assert response.headers["x-content-type-options"] == "nosniff"
                assert response.headers["referrer-policy"] == "same-origin"
            login = await client.get("/login")
            assert login.headers["cache-control"] == "no-store"
            for path in (
                "/console/login.html",
                "/console/nope.html",
                "/console/static/index.html",
                "/console/static/..%2Fapp.py",
                "/console/static/nope.js",
            ):
                response = await client.get(path, headers={"authorization": f"Bearer {TOKEN}"})
                assert response.status_code == 404, path
        off = ApiContext(health=_health, store=backend.store, console=False)
        async with _client(off) as client:
            for path in ("/", "/login", "/console/session", "/console/events"):
                response = await client.get(path)
                assert response.status_code == 404, path
                assert response.json()["detail"] == "the console is off (api.console = false)"
            assert (await client.get("/calls")).status_code == 200


async def test_a_flood_of_local_sessions_cannot_log_out_the_admin(tmp_path: Path) -> None:
    """With no token, 1,100 cookieless ``GET /console/session`` (any local process may send
    them) leave the admin's session in use alive; once the flood presents its cookies back
    and fills every place, a new session gets 503 with a detail, and the admin's still works."""
    async with _backend(tmp_path) as backend:
        transport = httpx.ASGITransport(
            app=create_app(ApiContext(health=_health, store=backend.store)),
            client=("127.0.0.1", 40000),
        )
        admin = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080")
        flood = httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080")
        async with admin, flood:  # two browsers of one app
            mine = (await admin.get("/console/session")).json()["csrf"]
            assert (await admin.get("/console/session")).json()["csrf"] == mine  # in use
            for _ in range(1100):
                flood.cookies.clear()
                assert (await flood.get("/console/session")).status_code == 200
            assert (await admin.get("/console/session")).json()["csrf"] == mine, "logged out"
            refused: list[httpx.Response] = []
            for _ in range(1100):
                flood.cookies.clear()
                opened = await flood.get("/console/session")
                if opened.status_code != 200:
                    refused.append(opened)
                    continue
                assert (await flood.get("/calls?limit=1")).status_code == 200  # presented
            after = await admin.get("/console/session")
    assert len(refused) == 1100 - 1023, f"{len(refused)} refused"  # the admin holds a place
    assert {r.status_code for r in refused} == {503}, [r.text for r in refused[:3]]
    assert "console sessions are open and in use" in refused[0].json()["detail"], refused[0].text
    print(f"{len(refused)} of 1100 presented sessions refused once the 1024 places were in use")
    assert after.status_code == 200, after.text
    assert after.json()["csrf"] == mine, "the flood logged the admin out"


def test_the_readme_and_the_spec_name_the_routes_as_the_app_does() -> None:
    """Every route README.md names with its method (`` `DELETE /web/calls/{call}` ``) and every
    path of the served spec is a route of the app, spelt as the app spells its parameters."""
    app = create_app(ApiContext(health=_health, store=None))
    routes = {str(route.path) for route in app.routes if hasattr(route, "path")}
    readme = (FILES.parent.parent / "README.md").read_text()
    named = set(re.findall(r"`(?:GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)", readme))
    assert "/web/calls/{call}" in named, sorted(named)
    assert sorted(named - routes) == [], f"README names routes the app has not: {named - routes}"
    spec = set(load_spec()["paths"])
    assert sorted(spec - routes) == [], f"the spec has paths the app has not: {spec - routes}"


async def test_the_session_cookie_does_not_open_the_realtime_websocket(tmp_path: Path) -> None:
    """A logged-in browser's cookie, which opens the HTTP routes, gets 401 at the
    ``/v1/realtime`` WebSocket handshake (a key or a token opens it), as the README says."""
    import websockets  # noqa: PLC0415 - only this test speaks WebSocket

    async def engine(websocket: Any) -> None:
        await websocket.accept()
        await websocket.close()

    async with _backend(tmp_path) as backend:
        ctx = ApiContext(health=_health, store=backend.store, tokens={"crm": TOKEN}, engine=engine)
        server = ApiServer(create_app(ctx), "127.0.0.1", 0)
        await server.start()
        base = f"127.0.0.1:{server.address[1]}"
        try:
            async with httpx.AsyncClient(base_url=f"http://{base}", timeout=5) as client:
                login = await _login(client, TOKEN)
                assert login.status_code == 303, login.text
                cookie = {"cookie": f"sipai_session={client.cookies['sipai_session']}"}
                assert (await client.get("/calls", headers=cookie)).status_code == 200
            origin = {"origin": f"http://{base}"}
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(
                    f"ws://{base}/v1/realtime", additional_headers=cookie | origin, open_timeout=5
                ):
                    raise AssertionError("the console's cookie opened the /v1/realtime WebSocket")
            bearer = {"authorization": f"Bearer {TOKEN}"}
            async with websockets.connect(
                f"ws://{base}/v1/realtime", additional_headers=bearer, open_timeout=5
            ) as opened:
                assert opened.response is not None
        finally:
            await server.stop(grace_seconds=1)
    assert refused.value.response.status_code == 401, refused.value.response
