"""The REST API against its contract, with a real SQLite store and a scripted call runner."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator
from openapi_spec_validator import validate as validate_spec

from api.app import ApiContext, HealthReport, create_app
from api.spec import load_spec
from api.webhooks import Deliverer
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


async def _api(tmp_path: Path, token: str = "", max_concurrent: int = 4) -> Api:
    store = Store(tmp_path / "sipai.db")
    await store.open()
    runner = ScriptedRunner()
    deliverer = Deliverer(store, "secret", waits=(0.2,) * 7)
    service = OutboundService(store, runner, max_concurrent, on_final=deliverer.wake)
    await service.recover()
    service.start()
    deliverer.start()
    ctx = ApiContext(
        health=_health, store=store, outbound=service, token=token, max_body_bytes=4096, spec=SPEC
    )
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(ctx)), base_url="http://sipai"
    )
    return Api(client, store, runner, service, deliverer)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    a = await _api(tmp_path)
    yield a
    await a.client.aclose()
    await a.service.stop()
    await a.deliverer.stop()
    await a.store.close()


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
    ({**BASE, "message": 5}, "message:"),
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
    """With api.token set, requests without the bearer token get 401; /health stays open."""
    api = await _api(tmp_path, token="t0ken")
    try:
        for method, path in (
            ("POST", "/call"),
            ("GET", "/call/x"),
            ("GET", "/calls"),
            ("GET", "/metrics"),
            ("GET", "/openapi.json"),
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
        assert view["message_played"] is True
        [hook] = view["webhooks"]
        assert hook["state"] == "delivered"
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
        for event in api.runner.release.values():
            event.set()
        await api.client.aclose()
        await api.service.stop()
        await api.deliverer.stop()
        await api.store.close()


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
