"""The REST API against its contract, with a real SQLite store and a scripted call runner."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import sqlite3
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec
from structlog.testing import capture_logs

from api.app import ApiContext, HealthReport, create_app
from api.spec import load_spec
from api.webhooks import Deliverer
from daemon.blackbox import BlackBox, RecordingInfo
from daemon.outbound import CallResult, OutboundService, Report
from daemon.store import Store
from tests.peers.receiver import Receiver

SPEC = load_spec()
CONTRACT = load_spec()["paths"]["/call"]["post"]["requestBody"]["content"]["application/json"]


class ScriptedRunner:
    """Plays each call as told: ringing, answered, then the scripted result when released."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.release: dict[str, asyncio.Event] = {}
        self.result = CallResult("completed", duration_seconds=2.5, message_played=True)
        self.hold = False

    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        self.started.append(call_id)
        await report("ringing")
        await report("answered", answered_at=1.0)
        if self.hold:
            event = self.release.setdefault(call_id, asyncio.Event())
            await event.wait()
        return self.result


def _health() -> HealthReport:
    return HealthReport("healthy", False, "test", 1.0, 0, 0, [])


class Api:
    def __init__(
        self,
        client: httpx.AsyncClient,
        store: Store,
        runner: ScriptedRunner,
        service: OutboundService,
        deliverer: Deliverer,
    ) -> None:
        self.client = client
        self.store = store
        self.runner = runner
        self.service = service
        self.deliverer = deliverer


async def _api(
    tmp_path: Path,
    token: str = "",
    max_concurrent: int = 4,
    *,
    tokens: dict[str, str] | None = None,
    max_queued: int = 240,
    rate_limit_per_minute: int = 0,
) -> Api:
    store = Store(tmp_path / "sipai.db")
    await store.open()
    runner = ScriptedRunner()
    deliverer = Deliverer(store, "secret", waits=(0.2,) * 7)
    service = OutboundService(
        store, runner, max_concurrent, on_final=deliverer.wake, max_queued=max_queued
    )
    await service.recover()
    service.start()
    deliverer.start()
    named = ({"default": token} if token else {}) | (tokens or {})
    ctx = ApiContext(
        health=_health,
        store=store,
        outbound=service,
        tokens=named,
        max_body_bytes=4096,
        spec=SPEC,
        rate_limit_per_minute=rate_limit_per_minute,
    )
    client = _client(ctx)
    return Api(client, store, runner, service, deliverer)


def _client(ctx: ApiContext, address: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(ctx), client=(address, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://sipai")


async def _close(api: Api) -> None:
    for event in api.runner.release.values():
        event.set()
    await api.client.aclose()
    await api.service.stop()
    await api.deliverer.stop()
    await api.store.close()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    a = await _api(tmp_path)
    yield a
    await _close(a)


def _schema(ref: str) -> dict[str, Any]:
    """A component schema with every $ref inlined (the spec has no recursion)."""

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(SPEC["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    return inline(copy.deepcopy(SPEC["components"]["schemas"][ref]))


def _conforms(instance: Any, ref: str) -> None:
    OAS30Validator(_schema(ref)).validate(instance)


async def test_spec_is_valid_openapi_and_served(api: Api) -> None:
    """api/openapi.yaml is valid OpenAPI 3 and is what GET /openapi.json returns."""
    validate_spec(SPEC)
    served = await api.client.get("/openapi.json")
    assert served.json() == SPEC
    for field in ("message", "extension", "callback_url", "ring_timeout", "choice", "call_id"):
        assert field in SPEC["components"]["schemas"]["OutboundCallRequest"]["properties"]


async def test_every_contract_example_is_accepted(api: Api) -> None:
    """The contract's example bodies are queued; the answer matches OutboundCallResponse."""
    for name, example in CONTRACT["examples"].items():
        response = await api.client.post("/call", json=example["value"])
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        _conforms(body, "OutboundCallResponse")
        assert body["status"] == "queued"
        assert body["call_id"].startswith("out-")


BASE = {"message": "Your package has arrived.", "extension": "1001"}
CHOICE = {"prompt": "Yes or no?", "options": [{"value": "yes"}]}
INVALID: list[tuple[dict[str, Any], str]] = [
    ({"extension": "1001"}, "message: field required"),
    ({"message": "hi"}, "extension: field required"),
    ({**BASE, "message": "   "}, "message: must not be blank"),
    ({**BASE, "message": "\x1e\ufeff"}, "message: must not be blank"),
    ({**BASE, "extension": "10 01"}, "extension:"),
    ({**BASE, "ring_timeout": 4}, "ring_timeout:"),
    ({**BASE, "ring_timeout": 121}, "ring_timeout:"),
    ({**BASE, "ring_timeout": "30"}, "ring_timeout:"),
    ({**BASE, "ring_timeout": 30.5}, "ring_timeout:"),
    ({**BASE, "ring_timeout": True}, "ring_timeout:"),
    ({**BASE, "callback_url": "ftp://example.com/x"}, "callback_url:"),
    ({**BASE, "callback_url": "not a url"}, "callback_url:"),
    ({**BASE, "choice": CHOICE}, "callback_url is required when choice is specified"),
    (
        {**BASE, "callback_url": "https://e.x/h", "choice": {**CHOICE, "options": []}},
        "choice.options:",
    ),
    (
        {**BASE, "callback_url": "https://e.x/h", "choice": {**CHOICE, "timeout_seconds": 4}},
        "choice.timeout_seconds:",
    ),
    (
        {**BASE, "callback_url": "https://e.x/h", "choice": {**CHOICE, "timeout_seconds": 61}},
        "choice.timeout_seconds:",
    ),
    (
        {**BASE, "callback_url": "https://e.x/h", "choice": {**CHOICE, "repeat_count": 0}},
        "choice.repeat_count:",
    ),
    (
        {**BASE, "callback_url": "https://e.x/h", "choice": {**CHOICE, "repeat_count": 6}},
        "choice.repeat_count:",
    ),
    (
        {**BASE, "callback_url": "https://e.x/h", "choice": {"options": [{"value": "y"}]}},
        "choice.prompt: field required",
    ),
    (
        {**BASE, "callback_url": "https://e.x/h", "choice": {**CHOICE, "options": [{}]}},
        "choice.options.0.value: field required",
    ),
    ({**BASE, "colour": "red"}, "colour: unknown field"),
    ({**BASE, "call_id": "has spaces"}, "call_id:"),
    ({**BASE, "call_id": "in-0123456789abcdef"}, "call_id: must not begin with 'in-'"),
    ({**BASE, "message": 5}, "message:"),
    ({**BASE, "machine_detection": "yes"}, "machine_detection:"),
    (
        {
            **BASE,
            "callback_url": "https://e.x/h",
            "choice": {**CHOICE, "options": [{"value": "y", "dtmf": "12"}]},
        },
        "choice.options.0.dtmf:",
    ),
    (
        {
            **BASE,
            "callback_url": "https://e.x/h",
            "choice": {**CHOICE, "options": [{"value": "y", "dtmf": 1}]},
        },
        "choice.options.0.dtmf:",
    ),
    (
        {
            **BASE,
            "callback_url": "https://e.x/h",
            "choice": {
                **CHOICE,
                "options": [{"value": "y", "dtmf": "1"}, {"value": "n", "dtmf": "1"}],
            },
        },
        "choice.options: dtmf key '1' is given twice",
    ),
]


@pytest.mark.parametrize(("body", "detail"), INVALID)
async def test_invalid_bodies_get_400_naming_the_field(
    api: Api, body: dict[str, Any], detail: str
) -> None:
    """Each invalid body is refused with 400 and a detail naming the field; nothing stored."""
    response = await api.client.post("/call", json=body)
    assert response.status_code == 400
    _conforms(response.json(), "ErrorResponse")
    assert detail in response.json()["detail"]
    assert (await api.client.get("/calls")).json()["calls"] == []


async def test_range_edges_are_accepted(api: Api) -> None:
    """The inclusive bounds of every range are valid."""
    for ring, timeout, repeat in ((5, 5, 1), (120, 60, 5)):
        body = {
            **BASE,
            "ring_timeout": ring,
            "callback_url": "http://127.0.0.1:9/h",
            "choice": {**CHOICE, "timeout_seconds": timeout, "repeat_count": repeat},
        }
        assert (await api.client.post("/call", json=body)).status_code == 200


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"{not json", "body is not valid JSON"),
        (b"[1, 2]", "the body must be a JSON object"),
        (b"", "body is not valid JSON"),
        (b'{"message": "' + b"x" * 5000 + b'", "extension": "1"}', "request body exceeds"),
    ],
)
async def test_malformed_and_huge_bodies(api: Api, content: bytes, detail: str) -> None:
    """Malformed JSON, a non-object and a body over the limit are 400 with a detail."""
    response = await api.client.post(
        "/call", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert detail in response.json()["detail"]


async def test_duplicate_call_id_and_unknown_id(api: Api) -> None:
    """A caller-given id in use gets 409; an unknown id gets 404 with the contract body."""
    first = await api.client.post("/call", json={**BASE, "call_id": "my-id-1"})
    assert first.json()["call_id"] == "my-id-1"
    again = await api.client.post("/call", json={**BASE, "call_id": "my-id-1"})
    assert again.status_code == 409
    assert "my-id-1" in again.json()["detail"]
    missing = await api.client.get("/call/nope")
    assert missing.status_code == 404
    assert missing.json() == {"call_id": "nope", "status": "not_found"}
    _conforms(missing.json(), "CallStatusResponse")


async def test_token_guards_everything_but_health(tmp_path: Path) -> None:
    """With api.token set, requests without the bearer token (or a console session) get 401;
    /health stays open."""
    api = await _api(tmp_path, token="t0ken")
    try:
        for method, path in (
            ("POST", "/call"),
            ("GET", "/call/x"),
            ("GET", "/call/x/recording"),
            ("GET", "/calls"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
            ("POST", "/web/calls"),
            ("DELETE", "/web/calls/x"),
            ("GET", "/console/session"),
            ("GET", "/console/events"),
            ("POST", "/logout"),
            ("POST", "/v1/realtime/client_secrets"),
            ("POST", "/v1/realtime/calls"),
            ("POST", "/v1/realtime/calls/x/hangup"),
        ):
            response = await api.client.request(method, path, json=BASE)
            assert response.status_code == 401, path
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = await api.client.get("/calls", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        ok = await api.client.post("/call", json=BASE, headers={"authorization": "Bearer t0ken"})
        assert ok.status_code == 200
        assert (await api.client.get("/health")).status_code == 200
    finally:
        await api.client.aclose()
        await api.service.stop()
        await api.deliverer.stop()
        await api.store.close()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "message",
                        "extension",
                        "callback_url",
                        "ring_timeout",
                        "choice",
                        "call_id",
                        "prompt",
                        "options",
                        "value",
                        "synonyms",
                        "timeout_seconds",
                        "repeat_count",
                        "x",
                    ]
                ),
                inner,
                max_size=6,
            )
        ),
        max_leaves=12,
    )
)
async def test_no_body_causes_a_server_error(api: Api, body: Any) -> None:
    """Whatever JSON is posted, the answer is 200 (queued) or 400 with a detail, never 5xx."""
    response = await api.client.post(
        "/call", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code in (200, 400), response.text
    if response.status_code == 400:
        _conforms(response.json(), "ErrorResponse")
        assert response.json()["detail"]
    else:
        _conforms(response.json(), "OutboundCallResponse")


async def test_call_flow_through_the_api_and_webhook(api: Api) -> None:
    """A queued call runs, finishes, and its signed webhook's attempts show in GET /call."""
    receiver = Receiver()
    try:
        posted = await api.client.post("/call", json={**BASE, "callback_url": receiver.url})
        call_id = posted.json()["call_id"]
        async with asyncio.timeout(10):
            while not receiver.requests():
                await asyncio.sleep(0.02)
        [delivered] = receiver.requests()
        payload = json.loads(delivered.body)
        _conforms(payload, "WebhookPayload")
        assert payload == {
            "call_id": call_id,
            "status": "completed",
            "extension": "1001",
            "duration_seconds": 2.5,
            "message_played": True,
            "choice_response": None,
            "choice_raw_text": None,
            "error": None,
        }
        await asyncio.sleep(0.2)
        view = (await api.client.get(f"/call/{call_id}")).json()
        _conforms(view, "CallStatusResponse")
        assert (view["status"], view["call_status"]) == ("not_found", "completed")
        assert (view["direction"], view["recording"]) == ("outbound", None)
        assert view["message_played"] is True
        [hook] = view["webhooks"]
        assert (hook["state"], hook["kind"]) == ("delivered", "result")
        assert hook["webhook_id"] == delivered.headers["webhook-id"]
        assert [a["status_code"] for a in hook["attempts"]] == [200]
        listing = (await api.client.get("/calls")).json()
        assert [c["call_id"] for c in listing["calls"]] == [call_id]
    finally:
        receiver.close()


async def test_max_concurrent_and_fifo(tmp_path: Path) -> None:
    """With max_concurrent 2, calls 3 and 4 wait (queued) and start in order as slots free."""
    api = await _api(tmp_path, max_concurrent=2)
    api.runner.hold = True
    try:
        ids = [(await api.client.post("/call", json=BASE)).json()["call_id"] for _ in range(4)]
        async with asyncio.timeout(5):
            while len(api.runner.started) < 2:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert api.runner.started == ids[:2]
        views = [(await api.client.get(f"/call/{i}")).json() for i in ids]
        assert [v["call_status"] for v in views] == ["answered", "answered", "queued", "queued"]
        assert api.service.queued == 2
        api.runner.release[ids[1]].set()
        async with asyncio.timeout(5):
            while len(api.runner.started) < 3:
                await asyncio.sleep(0.01)
        assert api.runner.started == ids[:3]
    finally:
        await _close(api)


async def test_restart_mid_queue_loses_nothing_and_dials_nothing_twice(tmp_path: Path) -> None:
    """A process stopped mid-queue: the call in flight is failed and reported, the rest run."""
    first = await _api(tmp_path, max_concurrent=1)
    first.runner.hold = True
    ids = [(await first.client.post("/call", json=BASE)).json()["call_id"] for _ in range(3)]
    async with asyncio.timeout(5):
        while not first.runner.started:
            await asyncio.sleep(0.01)
    await first.service.stop()  # the process dies: call 1 stays "answered" in the store
    await first.deliverer.stop()
    await first.client.aclose()
    await first.store.close()

    second = await _api(tmp_path, max_concurrent=1)
    try:
        async with asyncio.timeout(5):
            while len(second.runner.started) < 2:
                await asyncio.sleep(0.01)
        assert second.runner.started == ids[1:]  # the first is never dialled again
        dead = (await second.client.get(f"/call/{ids[0]}")).json()
        assert dead["call_status"] == "failed"
        assert "stopped while the call was answered" in dead["error"]
    finally:
        await second.client.aclose()
        await second.service.stop()
        await second.deliverer.stop()
        await second.store.close()


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("before=9223372036854775808", "before"),
        ("before=-1", "before"),
        ("before=1e3", "before"),
        ("before=" + "9" * 5000, "before"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=1_0", "limit"),
        ("limit=%2010", "limit"),
    ],
)
async def test_out_of_range_query_parameters_are_400_naming_them(
    api: Api, query: str, named: str
) -> None:
    """GET /calls with a parameter beyond its type or range answers 400 naming it, never 500."""
    for direction in ("outbound", "inbound"):
        response = await api.client.get(f"/calls?{query}&direction={direction}")
        assert response.status_code == 400, (query, response.text)
        assert response.json()["detail"].startswith(f"{named}: "), response.text


async def test_largest_before_is_accepted(api: Api) -> None:
    """before=2**63-1, SQLite's largest integer, is a valid page start."""
    response = await api.client.get("/calls?before=9223372036854775807&direction=inbound")
    assert response.json() == {"calls": [], "next_before": None}


async def test_health_strict_takes_only_its_values(api: Api) -> None:
    """/health?strict= accepts 0, 1, true and false; anything else is 400 naming strict."""
    for value in ("0", "1", "true", "false"):
        assert (await api.client.get(f"/health?strict={value}")).status_code == 200
    wrong = await api.client.get("/health?strict=AAA")
    assert wrong.status_code == 400
    assert wrong.json()["detail"].startswith("strict: ")


async def test_a_wrong_method_gets_405_with_allow(api: Api) -> None:
    """A method a route does not serve answers 405 with an Allow header listing those it does."""
    for method, path, allowed in (
        ("TRACE", "/health", {"GET", "HEAD"}),
        ("DELETE", "/call", {"POST"}),
        ("PUT", "/calls", {"GET", "HEAD"}),
    ):
        response = await api.client.request(method, path)
        assert response.status_code == 405
        assert set(response.headers["allow"].split(", ")) == allowed, path
        _conforms(response.json(), "ErrorResponse")


async def test_blank_synonyms_are_accepted(api: Api) -> None:
    """The contract allows any string as a synonym: an empty one is accepted (it matches
    nothing)."""
    option = {"value": "yes", "synonyms": ["", "  ", "yeah"]}
    body = {
        **BASE,
        "callback_url": "http://127.0.0.1:9/h",
        "choice": {**CHOICE, "options": [option]},
    }
    assert (await api.client.post("/call", json=body)).status_code == 200


async def test_call_list_items_conform_to_the_served_spec(api: Api) -> None:
    """Each GET /calls item conforms to the served spec's item schema (anyOf of the two
    record kinds: an in-progress outbound record fits both)."""
    await api.client.post("/call", json=BASE)
    items = SPEC["paths"]["/calls"]["get"]["responses"]["200"]["content"]["application/json"]
    schema = copy.deepcopy(items["schema"]["properties"]["calls"]["items"])
    schema["components"] = SPEC["components"]
    for record in (await api.client.get("/calls")).json()["calls"]:
        OAS30Validator(schema).validate(record)


def _stored_ids(tmp_path: Path, table: str = "calls") -> set[str]:
    with contextlib.closing(sqlite3.connect(tmp_path / "sipai.db")) as db:
        return {row[0] for row in db.execute(f"SELECT call_id FROM {table}")}


async def test_posts_beyond_the_queue_bound_get_503_and_store_nothing(tmp_path: Path) -> None:
    """With 1 call running and max_queued 5, 40 concurrent posts queue 6: the other 34 get 503
    with Retry-After and a detail, no row in SQLite and no webhook."""
    api = await _api(tmp_path, max_concurrent=1, max_queued=5)
    api.runner.hold = True
    receiver = Receiver()
    posts = 40
    try:
        bodies = [{**BASE, "callback_url": receiver.url, "call_id": f"c{n}"} for n in range(posts)]
        # The first call must be running before the burst, so the bound is all that limits it.
        first = await api.client.post("/call", json=bodies[0])
        async with asyncio.timeout(5):
            while not api.runner.started:
                await asyncio.sleep(0.01)
        burst = await asyncio.gather(*(api.client.post("/call", json=b) for b in bodies[1:]))
        answers = [first, *burst]
        accepted = {b["call_id"] for b, r in zip(bodies, answers, strict=True) if r.is_success}
        refused = [r for r in answers if not r.is_success]
        print(f"accepted {len(accepted)} of {posts} posts (1 running + max_queued 5)")
        assert len(accepted) == 6, f"accepted {len(accepted)} of {posts} posts"
        assert {r.status_code for r in refused} == {503}
        assert {r.headers["retry-after"] for r in refused} == {"60"}
        assert "outbound queue is full (5 calls waiting" in refused[0].json()["detail"]
        assert api.service.queued == 5
        assert _stored_ids(tmp_path) == accepted
        for call_id in accepted:
            api.runner.release.setdefault(call_id, asyncio.Event()).set()
        async with asyncio.timeout(10):
            while len(receiver.requests()) < len(accepted):
                await asyncio.sleep(0.02)
                for call_id in api.runner.started:
                    api.runner.release.setdefault(call_id, asyncio.Event()).set()
        await asyncio.sleep(0.3)  # a stray webhook for a refused call would arrive meanwhile
        hooked = {json.loads(r.body)["call_id"] for r in receiver.requests()}
        assert hooked == accepted
        assert _stored_ids(tmp_path, "outbox") == accepted
        after = await api.client.post("/call", json={**BASE, "call_id": "later"})
        assert after.status_code == 200, "the queue takes calls again once it has room"
    finally:
        receiver.close()
        await _close(api)


async def test_the_rate_limit_is_per_token_name(tmp_path: Path) -> None:
    """With 3 posts a minute, a token's 4th post gets 429 with Retry-After (20 s) and is not
    stored, while another token's posts still go through."""
    api = await _api(tmp_path, tokens={"crm": "tok-crm", "ops": "tok-ops"}, rate_limit_per_minute=3)
    crm = {"authorization": "Bearer tok-crm"}
    ops = {"authorization": "Bearer tok-ops"}
    try:
        codes = [
            (await api.client.post("/call", json={**BASE, "call_id": f"c{n}"}, headers=crm))
            for n in range(4)
        ]
        assert [r.status_code for r in codes] == [200, 200, 200, 429]
        assert codes[3].headers["retry-after"] == "20"
        assert "more than 3 calls a minute" in codes[3].json()["detail"]
        assert "c3" not in _stored_ids(tmp_path)
        other = await api.client.post("/call", json=BASE, headers=ops)
        assert other.status_code == 200
        assert (await api.client.get("/calls", headers=crm)).status_code == 200, "POST /call only"
    finally:
        await _close(api)


async def test_without_tokens_the_rate_limit_is_per_client_address(tmp_path: Path) -> None:
    """Without tokens the limit counts per client address: a second address is unaffected."""
    api = await _api(tmp_path)
    ctx = ApiContext(health=_health, store=api.store, outbound=api.service, rate_limit_per_minute=1)
    # Two clients of one app: the limiter lives in the app.
    app = create_app(ctx)
    near = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.0.0.1", 1)), base_url="http://sipai"
    )
    far = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("10.0.0.2", 1)), base_url="http://sipai"
    )
    try:
        assert (await near.post("/call", json=BASE)).status_code == 200
        assert (await near.post("/call", json=BASE)).status_code == 429
        assert (await far.post("/call", json=BASE)).status_code == 200
    finally:
        await near.aclose()
        await far.aclose()
        await _close(api)


async def test_two_named_tokens_work_and_a_removed_one_is_refused(tmp_path: Path) -> None:
    """api.token and a named token both open every guarded route; once the old token is
    removed from the settings, it gets 401 with a detail while the new one keeps working."""
    api = await _api(tmp_path, token="tok-old", tokens={"crm-2027": "tok-new"})
    old = {"authorization": "Bearer tok-old"}
    new = {"authorization": "Bearer tok-new"}
    try:
        for headers in (old, new):
            assert (await api.client.post("/call", json=BASE, headers=headers)).status_code == 200
            assert (await api.client.get("/calls", headers=headers)).status_code == 200
        rotated = ApiContext(
            health=_health,
            store=api.store,
            outbound=api.service,
            tokens={"crm-2027": "tok-new"},
        )
        client = _client(rotated)
        try:
            refused = await client.post("/call", json=BASE, headers=old)
            assert refused.status_code == 401
            assert refused.json() == {"detail": "missing or invalid bearer token"}
            assert (await client.post("/call", json=BASE, headers=new)).status_code == 200
        finally:
            await client.aclose()
    finally:
        await _close(api)


async def test_the_access_log_names_the_token_never_the_token(tmp_path: Path) -> None:
    """Each request logs api.request with the token's name (None when refused, with the
    route's template for its path); the token's value appears in no log event."""
    api = await _api(tmp_path, tokens={"crm": "tok-crm-secret"})
    try:
        with capture_logs() as logs:
            await api.client.post(
                "/call", json=BASE, headers={"authorization": "Bearer tok-crm-secret"}
            )
            await api.client.get("/calls", headers={"authorization": "Bearer tok-crm-secret"})
            await api.client.get("/calls", headers={"authorization": "Bearer tok-crm-secre"})
            await api.client.get("/call/made-up-1")
            await api.client.get("/call/made-up-2")
        requests = [e for e in logs if e["event"] == "api.request"]
        assert [(e["method"], e["path"], e["status"], e["token"]) for e in requests] == [
            ("POST", "/call", 200, "crm"),
            ("GET", "/calls", 200, "crm"),
            ("GET", "/calls", 401, None),
            # refused: the route's template, so a flood of made-up ids repeats one line
            ("GET", "/call/{call_id}", 401, None),
            ("GET", "/call/{call_id}", 401, None),
        ]
        assert requests[0]["client"] == "127.0.0.1"
        assert not [e for e in logs if "tok-crm-secre" in repr(e)]
    finally:
        await _close(api)


BLACK_BOX: BlackBox = {
    "version": 1,
    "codec": "PCMU",
    "rate": 8000,
    "rtp": {
        "rx": {
            "packets": 200,
            "lost": 10,
            "loss_pct": 4.76,
            "discarded": 0,
            "duplicates": 0,
            "reordered": 0,
            "jitter_ms_mean": 1.2,
            "jitter_ms_max": 3.5,
        },
        "tx": {
            "packets": 210,
            "lost_reported": 0,
            "loss_pct_reported": None,
            "jitter_ms_reported": None,
            "reports": 0,
        },
        "rtt_ms": None,
        "jitter_buffer": {
            "avg_delay_ms": 40.0,
            "max_delay_ms": 60.0,
            "lost": 10,
            "discarded": 0,
            "empty": 3,
        },
    },
    "mos": {
        "rx": 3.86,
        "tx": None,
        "r_rx": 75.98,
        "r_tx": None,
        "one_way_ms": 60.0,
        "model": "g107-g711",
    },
    "media": {
        "uplink_frames": 200,
        "uplink_dropped": 0,
        "callback_errors": 0,
        "playout_underruns": 0,
        "overrun_samples": 0,
        "flushes": 1,
    },
    "turns": [
        {
            "at_s": 2.1,
            "caller_end_s": 2.0,
            "first_audio_s": 2.4,
            "latency_ms": 400.0,
            "item": "item_1",
        }
    ],
    "turn_latency_ms": {"p50": 400.0, "p95": 400.0, "max": 400.0, "count": 1, "unanswered": 0},
    "barge_ins": [{"at_s": 3.0, "stop_ms": 18.0, "truncated_at_ms": 900.0, "cancelled": True}],
    "model": {
        "connect_ms": 35.0,
        "reconnects": 0,
        "replacements": [{"at_s": 5.5, "reason": "failover"}],
        "failures": [],
        "failovers": [
            {
                "at_s": 5.5,
                "phase": "session",
                "kind": "closed",
                "error": "the realtime socket closed: 1006",
                "to": "local",
            }
        ],
    },
    "connect_seconds": 4.25,
}


async def test_an_inbound_id_answers_with_the_contract_fields(api: Api) -> None:
    """GET /call/{id} answers for an inbound id in the contract's terms (in_progress, and
    ringing until answered, then answered while up; not_found and completed with connect
    seconds, transcript and black box once ended), conforming to CallStatusResponse; the list
    keeps the record's own status."""
    store = api.store
    await store.insert_inbound("in-00000000000000a1", "abc@pbx", "1001", 0, extension="1000")
    up = await api.client.get("/call/in-00000000000000a1")
    assert up.status_code == 200, up.text
    view = up.json()
    _conforms(view, "CallStatusResponse")
    assert (view["call_id"], view["status"], view["call_status"], view["direction"]) == (
        "in-00000000000000a1",
        "in_progress",
        "ringing",
        "inbound",
    )
    assert view["answered_at"] is None
    await store.answer_inbound("in-00000000000000a1", view["created_at"] + 0.5)
    answered = (await api.client.get("/call/in-00000000000000a1")).json()
    _conforms(answered, "CallStatusResponse")
    assert (answered["call_status"], answered["answered_at"]) == (
        "answered",
        view["created_at"] + 0.5,
    )
    assert (view["caller"], view["extension"]) == ("1001", "1000")
    assert "black_box" not in view
    await store.add_turn("in-00000000000000a1", "agent", "Hello, dental practice.", 0.4)
    await store.finish_inbound(
        "in-00000000000000a1",
        "completed",
        "caller hung up",
        black_box=dict(BLACK_BOX),
        connect_seconds=4.25,
    )
    ended = (await api.client.get("/call/in-00000000000000a1")).json()
    _conforms(ended, "CallStatusResponse")
    assert (ended["status"], ended["call_status"], ended["end_cause"]) == (
        "not_found",
        "completed",
        "caller hung up",
    )
    assert ended["duration_seconds"] == 4.25
    assert ended["answered_at"] == pytest.approx(ended["ended_at"] - 4.25)
    assert ended["black_box"] == BLACK_BOX
    assert ended["recording"] is None
    assert ended["created_at"] <= ended["ended_at"]
    assert [t["text"] for t in ended["transcript"]] == ["Hello, dental practice."]
    [listed] = (await api.client.get("/calls?direction=inbound")).json()["calls"]
    _conforms(listed, "InboundCallRecord")
    assert (listed["status"], listed["call_status"]) == ("completed", "completed")
    assert listed["black_box"] == BLACK_BOX
    taken = await api.client.post("/call", json={**BASE, "call_id": "in-00000000000000a1"})
    assert taken.status_code == 400, "an inbound id is not free for POST /call"
    assert taken.json()["detail"].startswith("call_id:"), taken.json()


async def test_browser_calls_are_listed_under_direction_web(api: Api) -> None:
    """GET /calls?direction=web lists the browser calls' records (conforming to
    InboundCallRecord, direction web) and direction=inbound the SIP calls only; GET
    /call/{id} shows a browser call's direction."""
    store = api.store
    await store.insert_inbound("in-00000000000000c1", "abc@pbx", "1001", 0, extension="1000")
    await store.insert_inbound(
        "in-00000000000000c2", "webrtc:9f", "web:default", 1000, direction="web"
    )
    web = await api.client.get("/calls?direction=web")
    assert web.status_code == 200, web.text
    [listed] = web.json()["calls"]
    _conforms(listed, "InboundCallRecord")
    assert (listed["call_id"], listed["direction"], listed["caller"], listed["worker"]) == (
        "in-00000000000000c2",
        "web",
        "web:default",
        1000,
    )
    sip = (await api.client.get("/calls?direction=inbound")).json()["calls"]
    assert [(c["call_id"], c["direction"]) for c in sip] == [("in-00000000000000c1", "inbound")]
    view = (await api.client.get("/call/in-00000000000000c2")).json()
    _conforms(view, "CallStatusResponse")
    assert (view["direction"], view["status"]) == ("web", "in_progress")
    wrong = await api.client.get("/calls?direction=browser")
    assert wrong.status_code == 400
    assert wrong.json()["detail"] == "direction: must be 'outbound', 'inbound' or 'web'"


def _recording(path: Path, seconds: float) -> RecordingInfo:
    """A two-channel 8 kHz WAV of ``seconds`` at ``path``, described as the worker would."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(8000)
        wav.writeframes(bytes(range(256)) * round(seconds * 8000 * 4 / 256))
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    return RecordingInfo(str(path), seconds, len(data), sha, True, 0, 8000)


async def test_the_recording_is_served_with_ranges_behind_the_token(tmp_path: Path) -> None:
    """GET /call/{id}/recording needs the token, serves the whole WAV (audio/wav, ETag its
    sha256) or a byte range (206, Content-Range), and answers 404 with a detail while the call
    is up, once its file is gone and once retention removed it."""
    api = await _api(tmp_path, token="t0ken")
    auth = {"authorization": "Bearer t0ken"}
    store = api.store
    try:
        info = _recording(tmp_path / "recordings" / "in-00000000000000b2.wav", 0.5)
        await store.insert_inbound("in-00000000000000b2", "b2@pbx", "1001", 0, extension="1000")
        await store.save_recording("in-00000000000000b2", "inbound", info)
        url = "/call/in-00000000000000b2/recording"
        up = await api.client.get(url, headers=auth)
        assert (up.status_code, up.json()["detail"]) == (
            404,
            "call 'in-00000000000000b2' has no recording",
        ), "served while the call is up"
        await store.finish_inbound("in-00000000000000b2", "completed", "caller hung up")
        assert (await api.client.get(url)).status_code == 401
        whole = await api.client.get(url, headers=auth)
        assert whole.status_code == 200, whole.text
        assert whole.headers["content-type"] == "audio/wav"
        assert whole.content == Path(info.path).read_bytes()
        assert whole.headers["etag"] == f'"{info.sha256}"'
        assert whole.headers["accept-ranges"] == "bytes"
        assert (
            whole.headers["content-disposition"] == 'attachment; filename="in-00000000000000b2.wav"'
        )
        header = await api.client.get(url, headers={**auth, "range": "bytes=0-43"})
        assert header.status_code == 206
        assert header.headers["content-range"] == f"bytes 0-43/{info.bytes}"
        assert header.content == whole.content[:44]
        with wave.open(str(info.path)) as wav:
            assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
        beyond = await api.client.get(url, headers={**auth, "range": f"bytes={info.bytes}-"})
        assert beyond.status_code == 416
        assert beyond.headers["content-range"] == f"bytes */{info.bytes}"
        _conforms(beyond.json(), "ErrorResponse")
        garbled = await api.client.get(url, headers={**auth, "range": "seconds=1-2"})
        assert garbled.status_code == 400
        _conforms(garbled.json(), "ErrorResponse")
        view = (await api.client.get("/call/in-00000000000000b2", headers=auth)).json()
        _conforms(view, "CallStatusResponse")
        assert view["recording"] == {
            "url": url,
            "duration_seconds": 0.5,
            "bytes": info.bytes,
            "sha256": info.sha256,
            "complete": True,
            "dropped_frames": 0,
        }
        Path(info.path).unlink()
        gone = await api.client.get(url, headers=auth)
        assert (gone.status_code, gone.json()["detail"]) == (
            404,
            "the recording of call 'in-00000000000000b2' is gone",
        )
        again = _recording(Path(info.path), 0.5)
        await store.save_recording("in-00000000000000b2", "inbound", again)
        assert (await api.client.get(url, headers=auth)).status_code == 200
        assert await store.prune(None, time.time() + 1) == [again.path]
        pruned = await api.client.get(url, headers=auth)
        assert pruned.status_code == 404
        _conforms(pruned.json(), "ErrorResponse")
        view = (await api.client.get("/call/in-00000000000000b2", headers=auth)).json()
        assert view["recording"] is None
        assert (await api.client.get("/call/nope/recording", headers=auth)).status_code == 404
    finally:
        await _close(api)


async def test_a_recording_without_a_hash_gets_no_hash_etag(tmp_path: Path) -> None:
    """A late recording (stored with no sha256) is served with the server's own ETag from
    its size and time, not ``""``, which every other late recording would share."""
    api = await _api(tmp_path)
    try:
        etags = []
        for n in (1, 2):
            call_id = f"in-00000000000000c{n}"
            info = _recording(tmp_path / "recordings" / f"{call_id}.wav", 0.25 * n)
            late = RecordingInfo(info.path, info.duration_seconds, info.bytes, "", False, 0, 8000)
            await api.store.insert_inbound(call_id, f"c{n}@pbx", "1001", 0, extension="1000")
            await api.store.save_recording(call_id, "inbound", late)
            await api.store.finish_inbound(call_id, "completed", "caller hung up")
            served = await api.client.get(f"/call/{call_id}/recording")
            assert served.status_code == 200, served.text
            etags.append(served.headers.get("etag"))
        assert '""' not in etags, etags
        assert len(set(etags)) == 2, etags
    finally:
        await _close(api)


async def test_a_listed_outbound_call_carries_its_recording(tmp_path: Path) -> None:
    """GET /calls shows a finished outbound call's recording as GET /call/{id} does."""
    api = await _api(tmp_path)
    try:
        info = _recording(tmp_path / "recordings" / "out-rec.wav", 0.25)
        await api.store.insert_call("out-rec", {**BASE, "call_id": "out-rec"})
        await api.store.save_recording("out-rec", "outbound", info)
        result = {"call_id": "out-rec", "status": "completed", "message_played": True}
        await api.store.finish_call("out-rec", "completed", result)
        single = (await api.client.get("/call/out-rec")).json()["recording"]
        [listed] = (await api.client.get("/calls")).json()["calls"]
        assert single is not None
        assert single["sha256"] == info.sha256, single
        assert listed["recording"] == single, listed
    finally:
        await _close(api)


async def test_record_and_progress_events_are_accepted_beyond_the_contract(api: Api) -> None:
    """POST /call takes record and progress_events (kept in the stored request) and answers
    400 naming the field for progress_events without callback_url, an unknown or repeated
    status and a record that is not a boolean; the served spec says the same of each body."""
    request = SPEC["components"]["schemas"]["OutboundCallRequest"]
    schema = {**copy.deepcopy(request), "components": SPEC["components"]}
    hook = {"callback_url": "http://127.0.0.1:9/h"}
    good = {**BASE, **hook, "record": True, "progress_events": ["ringing", "answered"]}
    posted = await api.client.post("/call", json=good)
    assert posted.status_code == 200, posted.text
    stored = await api.store.get_call(posted.json()["call_id"])
    assert stored is not None
    assert (stored["request"]["record"], stored["request"]["progress_events"]) == (
        True,
        ["ringing", "answered"],
    )
    OAS30Validator(schema).validate(good)
    for body in (
        {**BASE, "record": False},
        {**BASE, "record": None},
        {**BASE, **hook, "progress_events": []},
    ):
        assert (await api.client.post("/call", json=body)).status_code == 200, body
        OAS30Validator(schema).validate(body)
    refused: list[tuple[dict[str, Any], str]] = [
        (
            {**BASE, "progress_events": ["ringing"]},
            "callback_url is required when progress_events is specified",
        ),
        ({**BASE, **hook, "progress_events": ["hungup"]}, "progress_events.0:"),
        ({**BASE, **hook, "progress_events": ["ringing", "ringing"]}, "progress_events:"),
        ({**BASE, "record": "yes"}, "record:"),
        ({**BASE, "record": 1}, "record:"),
    ]
    for body, detail in refused:
        response = await api.client.post("/call", json=body)
        assert response.status_code == 400, body
        assert detail in response.json()["detail"], response.text
        assert not OAS30Validator(schema).is_valid(body), body


async def test_machine_detection_and_keys_are_accepted_and_reported_beyond_the_contract(
    api: Api,
) -> None:
    """POST /call takes machine_detection and a dtmf key per option (kept in the stored
    request, valid under the served spec); the webhook and GET /call add answered_by and
    machine_detection_ms only for a call that asked for detection."""
    request = SPEC["components"]["schemas"]["OutboundCallRequest"]
    schema = {**copy.deepcopy(request), "components": SPEC["components"]}
    receiver = Receiver()
    api.runner.result = CallResult(
        "completed",
        duration_seconds=2.5,
        message_played=True,
        answered_by="machine",
        machine_detection_ms=1620,
    )
    try:
        hook = {"callback_url": receiver.url}
        keyed = {
            **BASE,
            **hook,
            "choice": {
                "prompt": "Press 1 or say yes.",
                "options": [{"value": "yes", "dtmf": "1"}, {"value": "no", "dtmf": "#"}],
            },
        }
        detected = {**BASE, **hook, "machine_detection": "voicemail"}
        ids = []
        for body in (keyed, detected):
            OAS30Validator(schema).validate(body)
            posted = await api.client.post("/call", json=body)
            assert posted.status_code == 200, posted.text
            ids.append(posted.json()["call_id"])
        stored = await api.store.get_call(ids[1])
        assert stored is not None
        assert stored["request"]["machine_detection"] == "voicemail"
        keys = await api.store.get_call(ids[0])
        assert keys is not None
        assert [o["dtmf"] for o in keys["request"]["choice"]["options"]] == ["1", "#"]
        async with asyncio.timeout(10):
            while len(receiver.requests()) < 2:
                await asyncio.sleep(0.02)
        payloads = {json.loads(r.body)["call_id"]: json.loads(r.body) for r in receiver.requests()}
        for payload in payloads.values():
            _conforms(payload, "WebhookPayload")
        contract = set(SPEC["components"]["schemas"]["WebhookPayload"]["properties"])
        detection = {"answered_by", "machine_detection_ms"}
        assert set(payloads[ids[0]]) == contract - detection
        assert set(payloads[ids[1]]) == contract
        assert (payloads[ids[1]]["answered_by"], payloads[ids[1]]["machine_detection_ms"]) == (
            "machine",
            1620,
        )
        plain = (await api.client.get(f"/call/{ids[0]}")).json()
        assert detection.isdisjoint(plain), plain
        view = (await api.client.get(f"/call/{ids[1]}")).json()
        _conforms(view, "CallStatusResponse")
        assert (view["answered_by"], view["machine_detection_ms"]) == ("machine", 1620)
    finally:
        receiver.close()


async def test_a_malformed_idempotency_key_is_refused_naming_the_header(api: Api) -> None:
    """An Idempotency-Key that is empty, too long or holds a space or a non-ASCII character is
    refused with 400 naming the header, and no call is stored; 255 visible characters pass."""
    for value in (b"", b"a" * 256, b"two words", "caf\u00e9".encode()):
        response = await api.client.post("/call", json=BASE, headers={b"Idempotency-Key": value})
        assert response.status_code == 400, (value, response.text)
        assert response.json()["detail"].startswith("Idempotency-Key: "), response.text
    assert (await api.client.get("/calls")).json()["calls"] == []
    ok = await api.client.post("/call", json=BASE, headers={"Idempotency-Key": "k" * 255})
    assert ok.status_code == 200, ok.text
