"""The daemon's SIP worker killed during an inbound agent call: the call's record still ends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.peers.realtime_server import FakeRealtime, FakeSession
from tests.peers.receiver import Receiver
from tests.support import DaemonProcess, registered

pytestmark = pytest.mark.e2e

CALLS_FAILED_BY_ERROR = (
    'sipai_calls_total{direction="inbound",end_cause="worker_died",status="failed"} 1.0'
)


@pytest.fixture
async def pbx(tmp_path: Path) -> AsyncIterator[Kamailio]:
    async with running_kamailio(tmp_path / "k") as kamailio:
        yield kamailio


def _ended(receiver: Receiver) -> list[dict[str, Any]]:
    bodies = [json.loads(request.body) for request in receiver.requests()]
    return [body for body in bodies if body["type"] == "inbound.ended"]


async def test_a_killed_worker_ends_its_inbound_call_failed(
    pbx: Kamailio, daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """SIGKILL the worker holding an answered agent call: the record, answered while up, ends
    failed with a worker_died cause, its inbound.ended webhook goes once, and /metrics counts
    the call."""

    async def hold(session: FakeSession) -> None:
        await session.wait_for("input_audio_buffer.append")
        await asyncio.Event().wait()  # on the line until the worker dies

    receiver = Receiver()
    env = daemon_env | {
        "SIPAI_SIP__REGISTRAR": pbx.uri,
        "SIPAI_SIP__PASSWORD": password("1000"),
        "SIPAI_AGENT__BACKEND": "url",
        "SIPAI_AGENT__DIALECT": "ga",
        "SIPAI_AGENT__GREETING": "",
        "SIPAI_WEBHOOKS__INBOUND_URL": receiver.url,
    }
    try:
        async with (
            FakeRealtime("ga", hold) as fake,
            DaemonProcess(env | {"SIPAI_AGENT__URL": fake.url}, wait=registered) as daemon,
            httpx.AsyncClient(base_url=daemon.base_url, timeout=5) as client,
        ):
            phone = await TestPhone.start("caller")
            try:
                await phone.register(pbx, "1001")
                dialled = await phone.command("dial", uri="sip:1000@127.0.0.1")
                await phone.expect("media", call=int(dialled["call"]), status="active", timeout=15)
                listed: list[dict[str, Any]] = []
                for _ in range(200):  # up to 10 s for the record and its answer (checked below)
                    listed = (await client.get("/calls?direction=inbound")).json()["calls"]
                    if listed and listed[0]["answered_at"] is not None:
                        break
                    await asyncio.sleep(0.05)
                assert listed, "no record of the inbound call"
                call_id = listed[0]["call_id"]
                up = (await client.get(f"/call/{call_id}")).json()
                [worker] = (await client.get("/health")).json()["workers"]
                os.kill(worker["pid"], signal.SIGKILL)
                async with asyncio.timeout(15):
                    while not _ended(receiver):
                        await asyncio.sleep(0.1)
            finally:
                await phone.close()
            record = (await client.get(f"/call/{call_id}")).json()
            scrape = (await client.get("/metrics")).text
            await asyncio.sleep(0.5)  # a second end-of-call webhook would arrive meanwhile
            assert len(_ended(receiver)) == 1, receiver.requests()
    finally:
        receiver.close()
    assert (up["status"], up["call_status"]) == ("in_progress", "answered"), up
    assert (record["status"], record["call_status"]) == ("not_found", "failed"), record
    assert record["end_cause"].startswith("worker_died: SIP worker 0 died"), record
    assert record["answered_at"] == up["answered_at"]
    [ended] = _ended(receiver)
    assert (ended["call_id"], ended["call_status"]) == (call_id, "failed"), ended
    assert CALLS_FAILED_BY_ERROR in scrape, [
        line for line in scrape.splitlines() if line.startswith("sipai_calls_total")
    ]
