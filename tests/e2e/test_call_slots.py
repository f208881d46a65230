"""Outbound calls queued beyond the call slots, and unreachable targets, through the daemon."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.peers.phone import TestPhone
from tests.support import DaemonProcess

pytestmark = pytest.mark.e2e

WORKERS = 2
SLOTS = WORKERS * 4
CALLS = 2 * SLOTS  # two rounds: the second dials into the slots the first one freed
IN_FLIGHT = 16  # calls.max_concurrent, above the slots: the rest wait in the workers' queue
RING_TIMEOUT = 5


async def _finished(
    client: httpx.AsyncClient, base: str, ids: list[str], within: float
) -> list[Any]:
    """The records of ``ids`` once every one of them is final."""
    views: dict[str, Any] = {}
    async with asyncio.timeout(within):
        while len(views) < len(ids):
            for call_id in ids:
                if call_id not in views:
                    view = (await client.get(f"{base}/call/{call_id}")).json()
                    if view["status"] == "not_found":  # the contract's word for "finished"
                        views[call_id] = view
            await asyncio.sleep(0.5)
    return [views[call_id] for call_id in ids]


async def test_queued_calls_wait_for_slots_pjsua_still_tears_down(
    tmp_path: Path, daemon_env: dict[str, str]
) -> None:
    """Calls queued beyond the slots to a registered phone that went silent all end no_answer:
    each waits until pjsua really freed a slot (~30 s after a ring timeout here), none fails."""
    async with running_kamailio(tmp_path / "k") as pbx:
        env = daemon_env | {
            "SIPAI_SIP__REGISTRAR": pbx.uri,
            "SIPAI_SIP__PASSWORD": password("1000"),
            "SIPAI_SIP__WORKERS": str(WORKERS),
            "SIPAI_CALLS__MAX_CONCURRENT": str(IN_FLIGHT),
        }
        async with DaemonProcess(env, wait="healthy") as daemon:
            base = daemon.base_url
            await _register_then_vanish(pbx, "1011")
            async with httpx.AsyncClient(timeout=10) as client:
                ids = []
                for _ in range(CALLS):
                    body = {"message": "Hello.", "extension": "1011", "ring_timeout": RING_TIMEOUT}
                    response = await client.post(f"{base}/call", json=body)
                    assert response.status_code == 200, response.text
                    ids.append(response.json()["call_id"])
                views = await _finished(client, base, ids, within=100)
    counts = collections.Counter(v["call_status"] for v in views)
    errors = collections.Counter(v["error"] for v in views if v["error"])
    print(f"{CALLS} calls, {IN_FLIGHT} in flight, {SLOTS} slots: {dict(counts)} {dict(errors)}")
    assert counts == {"no_answer": CALLS}, f"statuses {dict(counts)}, errors {dict(errors)}"


async def _register_then_vanish(pbx: Kamailio, user: str) -> None:
    """Register ``user`` from a phone, then kill the phone: its binding stays (60 s), so the
    proxy forwards INVITEs to a port where nothing answers and never sends a final reply
    before its own 30 s timer."""
    phone = await TestPhone.start("vanished")
    try:
        await phone.register(pbx, user)
    finally:
        await phone.kill()


async def test_target_where_nothing_listens_is_failed(daemon_env: dict[str, str]) -> None:
    """A call to a SIP address with no listener (no response at all) ends failed, not
    no_answer, and the error says nothing responded."""
    async with (
        DaemonProcess(daemon_env, wait="healthy") as daemon,
        httpx.AsyncClient(timeout=10) as c,
    ):
        client, base = c, daemon.base_url
        body = {"message": "Hello.", "extension": "sip:x@127.0.0.1:1", "ring_timeout": 5}
        response = await client.post(f"{base}/call", json=body)
        assert response.status_code == 200, response.text
        [view] = await _finished(client, base, [response.json()["call_id"]], within=30)
    print(f"sip:x@127.0.0.1:1 -> {view['call_status']} ({view['error']})")
    assert (view["call_status"], view["sip_code"]) == ("failed", None), view
    assert view["error"] == "no SIP response from sip:x@127.0.0.1:1"
