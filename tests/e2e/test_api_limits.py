"""The daemon's API under a flood: the outbound queue is bounded, a refused handshake is a 401.

The real supervisor runs (API server, SQLite store, queue, SIP worker) with a scripted runner
that holds every call answered, so the calls in flight never free their slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import httpx
import pytest
import websockets

from tests.support import DaemonProcess

pytestmark = pytest.mark.e2e
SCRIPT = "tests.e2e.scripted_supervisor"
TOKEN = "flood-token"
POSTS = 2000
RUNNING = 4  # one worker's slots: calls.max_concurrent's default
MAX_QUEUED = 240  # calls.max_queued's default


def _daemon(env: dict[str, str], started: Path) -> DaemonProcess:
    return DaemonProcess(
        env
        | {
            "SIPAI_TEST_RUNNER": "hold",
            "SIPAI_TEST_STARTED": str(started),
            "SIPAI_API__TOKEN": TOKEN,
            "SIPAI_DAEMON__DRAIN_SECONDS": "1",
        },
        script=SCRIPT,
    )


async def _flood(base: str) -> list[httpx.Response]:
    """Every post's answer. Each waits up to 30 s for the daemon once sent, but as long as it
    takes for one of the client's 32 connections: the last posts queue behind the whole flood
    (about 24 s on an idle machine), which the 120 s bound on the flood covers."""
    headers = {"authorization": f"Bearer {TOKEN}"}
    limits = httpx.Limits(max_connections=32)
    timeout = httpx.Timeout(30, pool=None)
    async with (
        httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=timeout) as c,
        asyncio.timeout(120),
    ):
        return list(
            await asyncio.gather(
                *(
                    c.post("/call", json={"message": "hi", "extension": "1001", "call_id": f"f{n}"})
                    for n in range(POSTS)
                )
            )
        )


def test_a_flood_of_posts_queues_up_to_the_bound_and_stores_nothing_beyond(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """2,000 concurrent POST /call with the default bounds: 4 run, 240 queue, every other one
    gets 503 with Retry-After and a detail, and only the accepted ones are in SQLite (20-30 s
    here: the 2,000 posts are the size of the flood this bound answers)."""
    api = int(daemon_env["SIPAI_API__PORT"])
    with _daemon(daemon_env, tmp_path / "started.txt"):
        began = time.monotonic()
        answers = asyncio.run(_flood(f"http://127.0.0.1:{api}"))
        seconds = time.monotonic() - began
        accepted = {f"f{n}" for n, r in enumerate(answers) if r.status_code == 200}
        refused = [r for r in answers if r.status_code != 200]
        print(f"accepted {len(accepted)} of {POSTS} posts in {seconds:.1f} s")
        assert len(accepted) == RUNNING + MAX_QUEUED, f"accepted {len(accepted)} of {POSTS}"
        assert {r.status_code for r in refused} == {503}
        assert {r.headers["retry-after"] for r in refused} == {"60"}
        assert "outbound queue is full (240 calls waiting" in refused[0].json()["detail"]
        health = httpx.get(f"http://127.0.0.1:{api}/health").json()
        assert health["queued_calls"] == MAX_QUEUED
        db = Path(daemon_env["SIPAI_STORAGE__PATH"])
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            stored = {row[0] for row in conn.execute("SELECT call_id FROM calls")}
        assert stored == accepted


def test_the_realtime_websocket_without_a_token_gets_401(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """The daemon's own server refuses a /v1/realtime handshake without a valid token with
    HTTP 401 and a JSON detail, as every other route does."""
    api = int(daemon_env["SIPAI_API__PORT"])
    with _daemon(daemon_env, tmp_path / "started.txt"):
        answers = {}
        for label, headers in (("none", {}), ("wrong", {"Authorization": "Bearer nope"})):
            with pytest.raises(websockets.InvalidStatus) as refused:
                asyncio.run(_handshake(f"ws://127.0.0.1:{api}/v1/realtime", headers))
            answers[label] = (
                refused.value.response.status_code,
                bytes(refused.value.response.body),
            )
        print(f"/v1/realtime refused with {answers}")
        detail = b'{"detail":"missing or invalid bearer token"}'
        assert answers == {"none": (401, detail), "wrong": (401, detail)}


async def _handshake(url: str, headers: dict[str, str]) -> None:
    async with websockets.connect(url, additional_headers=headers, open_timeout=10):
        pass
