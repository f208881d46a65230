"""POST /call with an Idempotency-Key: a retried request places one call, through the real
API app, a real SQLite store and the outbound queue with a scripted call runner."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_schema_validator import OAS30Validator

from api.app import ApiContext, HealthReport, create_app
from api.spec import load_spec
from daemon.outbound import CallResult, OutboundService, Report
from daemon.store import Store

BODY = {"message": "Your package has arrived.", "extension": "1001"}
KEY = {"idempotency-key": "order-4711"}
SPEC = load_spec()
POST_CALL = SPEC["paths"]["/call"]["post"]


@dataclass
class HeldRunner:
    """Counts the calls it runs; each runs until released (when ``hold`` is set)."""

    started: list[str] = field(default_factory=list)
    hold: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        self.started.append(call_id)
        if self.hold:
            await self.release.wait()
        return CallResult("completed", duration_seconds=1.0, message_played=True)


@dataclass
class Api:
    client: httpx.AsyncClient
    store: Store
    service: OutboundService
    runner: HeldRunner
    path: Path

    def calls(self) -> list[str]:
        db = sqlite3.connect(self.path)
        try:
            return [row[0] for row in db.execute("SELECT call_id FROM calls ORDER BY seq")]
        finally:
            db.close()

    def claims(self) -> list[tuple[str, str, str]]:
        db = sqlite3.connect(self.path)
        try:
            return db.execute("SELECT scope, key, call_id FROM idempotency_keys").fetchall()
        finally:
            db.close()


async def _api(
    tmp_path: Path, *, tokens: dict[str, str] | None = None, max_queued: int = 240
) -> Api:
    store = Store(tmp_path / "sipai.db")
    await store.open()
    runner = HeldRunner()
    service = OutboundService(store, runner, 1, max_queued=max_queued)
    service.start()
    ctx = ApiContext(
        health=lambda: HealthReport("healthy", False, "test", 1.0, 0, 0, []),
        store=store,
        outbound=service,
        tokens=tokens or {},
        spec=SPEC,
    )
    transport = httpx.ASGITransport(app=create_app(ctx), client=("127.0.0.1", 40000))
    client = httpx.AsyncClient(transport=transport, base_url="http://sipai")
    return Api(client, store, service, runner, tmp_path / "sipai.db")


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    a = await _api(tmp_path)
    yield a
    await _close(a)


async def _close(api: Api) -> None:
    api.runner.release.set()
    await api.client.aclose()
    await api.service.stop()
    await api.store.close()


async def _ran(api: Api, count: int) -> None:
    """Wait until the runner started ``count`` calls, then a little for any more."""
    async with asyncio.timeout(5):
        while len(api.runner.started) < count:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)


async def test_a_repeated_request_places_one_call_and_replays_the_response(api: Api) -> None:
    """The same key with the same body twice: one stored call, one run, the same response;
    the second carries Idempotent-Replayed: true (the quoted form of the key is the key)."""
    first = await api.client.post("/call", json=BODY, headers=KEY)
    second = await api.client.post("/call", json=BODY, headers={"idempotency-key": '"order-4711"'})
    assert (first.status_code, second.status_code) == (200, 200)
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert "Idempotent-Replayed" in POST_CALL["responses"]["200"]["headers"]
    assert second.json() == first.json()
    assert first.json()["status"] == "queued"
    await _ran(api, 1)
    assert api.calls() == [first.json()["call_id"]]
    assert api.runner.started == [first.json()["call_id"]]


async def test_key_order_whitespace_and_explicit_defaults_are_the_same_body(api: Api) -> None:
    """A retry whose JSON differs only in key order, whitespace and a default given
    explicitly (ring_timeout 30) replays instead of being refused."""
    first = await api.client.post("/call", json=BODY, headers=KEY)
    retry = json.dumps(
        {"extension": "1001", "ring_timeout": 30, "message": BODY["message"]}, indent=4
    )
    second = await api.client.post(
        "/call", content=retry, headers={**KEY, "content-type": "application/json"}
    )
    assert second.status_code == 200, second.text
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json()["call_id"] == first.json()["call_id"]
    assert len(api.calls()) == 1


async def test_the_key_with_another_body_gets_422_naming_the_first_call(api: Api) -> None:
    """The same key with another body is refused with 422, a detail naming the key and the
    call it placed, and that call's id; nothing is stored or run for it."""
    first = await api.client.post("/call", json=BODY, headers=KEY)
    call_id = first.json()["call_id"]
    other = await api.client.post("/call", json={**BODY, "extension": "1002"}, headers=KEY)
    assert other.status_code == 422
    assert other.json() == {
        "detail": f"Idempotency-Key 'order-4711' was used with a different request body (call"
        f" {call_id}); use a new key for a new call",
        "call_id": call_id,
    }
    OAS30Validator(SPEC["components"]["schemas"]["IdempotencyConflict"]).validate(other.json())
    assert "422" in POST_CALL["responses"]
    await _ran(api, 1)
    assert api.calls() == [call_id]
    assert api.runner.started == [call_id]


async def test_concurrent_requests_with_one_key_place_one_call(api: Api) -> None:
    """Two posts of one key at once (both miss the first look-up): one call is stored and
    both get its response; two posts of one key with different bodies at once: one 200 and
    one 422."""
    same = await asyncio.gather(
        *(api.client.post("/call", json=BODY, headers=KEY) for _ in range(2))
    )
    assert [r.status_code for r in same] == [200, 200]
    assert same[0].json()["call_id"] == same[1].json()["call_id"]
    assert sorted(r.headers.get("idempotent-replayed", "") for r in same) == ["", "true"]
    other = {"idempotency-key": "order-4712"}
    mixed = await asyncio.gather(
        api.client.post("/call", json=BODY, headers=other),
        api.client.post("/call", json={**BODY, "extension": "1002"}, headers=other),
    )
    assert sorted(r.status_code for r in mixed) == [200, 422]
    await _ran(api, 2)
    assert len(api.calls()) == 2, api.calls()
    assert len(api.runner.started) == 2


async def test_keys_belong_to_their_token(tmp_path: Path) -> None:
    """The same key sent with two tokens places two calls: each caller has its own keys."""
    api = await _api(tmp_path, tokens={"crm": "tok-crm", "ops": "tok-ops"})
    try:
        crm = await api.client.post(
            "/call", json=BODY, headers={**KEY, "authorization": "Bearer tok-crm"}
        )
        ops = await api.client.post(
            "/call", json=BODY, headers={**KEY, "authorization": "Bearer tok-ops"}
        )
        assert (crm.status_code, ops.status_code) == (200, 200)
        assert "idempotent-replayed" not in ops.headers
        assert crm.json()["call_id"] != ops.json()["call_id"]
        assert sorted(scope for scope, _, _ in api.claims()) == ["crm", "ops"]
    finally:
        await _close(api)


@pytest.mark.parametrize(
    "key",
    ["", "x" * 256, "order 4711", "b\u00e4r".encode("latin-1"), "tab\there"],
    ids=["empty", "too-long", "space", "not-ascii", "control"],
)
async def test_a_malformed_key_gets_400_and_stores_nothing(api: Api, key: str | bytes) -> None:
    """A key that is not 1-255 visible ASCII characters is refused with 400 saying so."""
    answer = await api.client.post("/call", json=BODY, headers={"idempotency-key": key})
    assert answer.status_code == 400
    assert answer.json() == {"detail": "Idempotency-Key: must be 1-255 visible ASCII characters"}
    assert (api.calls(), api.claims()) == ([], [])


async def test_refused_requests_leave_no_key(tmp_path: Path) -> None:
    """A 400 (invalid body), a 409 (call_id in use) and a 503 (queue full) with a key store
    no key: the same key then places a call with a new body instead of a 422."""
    api = await _api(tmp_path, max_queued=1)
    api.runner.hold = True
    try:
        invalid = await api.client.post("/call", json={"extension": "1001"}, headers=KEY)
        assert invalid.status_code == 400
        assert (await api.client.post("/call", json={**BODY, "call_id": "taken"})).is_success
        taken = await api.client.post("/call", json={**BODY, "call_id": "taken"}, headers=KEY)
        assert taken.status_code == 409
        await _ran(api, 1)  # "taken" runs (held); the next one waits in the queue
        assert (await api.client.post("/call", json=BODY)).is_success
        full = await api.client.post("/call", json={**BODY, "extension": "1003"}, headers=KEY)
        assert full.status_code == 503
        assert api.claims() == []
        api.runner.release.set()
        await _ran(api, 2)
        placed = await api.client.post("/call", json={**BODY, "extension": "1004"}, headers=KEY)
        assert placed.status_code == 200, placed.text
        assert "idempotent-replayed" not in placed.headers
        assert api.claims() == [("", "order-4711", placed.json()["call_id"])]
    finally:
        await _close(api)


async def test_a_key_of_255_characters_is_accepted(api: Api) -> None:
    """The longest key the spec allows (255 visible ASCII characters) is taken and replays."""
    key = {"idempotency-key": "~" * 255}
    first = await api.client.post("/call", json=BODY, headers=key)
    second = await api.client.post("/call", json=BODY, headers=key)
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.headers["idempotent-replayed"] == "true"
    assert api.claims() == [("", "~" * 255, first.json()["call_id"])]


async def test_a_racing_retry_at_the_queue_bound_replays(tmp_path: Path) -> None:
    """Two same-key requests at once with room for one more call: the one that lost the bound
    check replays the first one's response (no 503), and one call is stored."""
    api = await _api(tmp_path, max_queued=1)
    api.runner.hold = True
    try:
        answers = await asyncio.gather(
            *(api.client.post("/call", json=BODY, headers=KEY) for _ in range(2))
        )
        seen = [(a.status_code, a.headers.get("idempotent-replayed")) for a in answers]
        assert set(seen) == {(200, None), (200, "true")}, [a.text for a in answers]
        assert len({a.json()["call_id"] for a in answers}) == 1
        assert len(api.calls()) == 1
    finally:
        await _close(api)
