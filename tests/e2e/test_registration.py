"""The daemon's registration as a PBX sees it: back soon after a registrar reboot, and no
flood of failed digest authentications with a wrong password."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.peers.kamailio import Kamailio, password, running_kamailio
from tests.support import DaemonProcess

pytestmark = pytest.mark.e2e

OUTAGE_SECONDS = 30.0
# The first REGISTER and the one retry 30 s later fall in this window; the next is 60 s on.
COUNT_SECONDS = 35.0


class HealthLog:
    """``GET /health`` every 0.25 s in the background: (monotonic time, body) samples."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/health"
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        async with httpx.AsyncClient() as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    body = (await client.get(self.url, timeout=2)).json()
                    self.samples.append((time.monotonic(), body))
                await asyncio.sleep(0.25)

    async def wait(self, timeout: float, **fields: Any) -> dict[str, Any]:
        """The first sample from now on whose fields include ``fields``."""
        start = len(self.samples)
        async with asyncio.timeout(timeout):
            while True:
                for _, body in self.samples[start:]:
                    if all(body.get(k) == v for k, v in fields.items()):
                        return body
                await asyncio.sleep(0.1)

    def between(self, start: float, end: float) -> list[dict[str, Any]]:
        return [body for at, body in self.samples if start <= at <= end]

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[HealthLog]:
        self._task = asyncio.create_task(self._poll())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def _daemon(
    daemon_env: dict[str, str], kamailio: Kamailio, secret: str
) -> AsyncIterator[HealthLog]:
    env = daemon_env | {
        "SIPAI_SIP__REGISTRAR": kamailio.uri,
        "SIPAI_SIP__PASSWORD": secret,
    }
    async with (
        DaemonProcess(env, wait=None) as daemon,
        HealthLog(daemon.api_port).running() as health,
    ):
        yield health


async def _until_bound(kamailio: Kamailio, timeout: float) -> None:
    """Return once Kamailio's location table holds a contact of the daemon's extension."""
    async with asyncio.timeout(timeout):
        while not await asyncio.to_thread(kamailio.contacts, "1000"):
            await asyncio.sleep(0.2)


async def test_binding_returns_soon_after_a_registrar_restart(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """With the default 300 s expiry, a registrar down 30 s and back with an empty location
    table holds the daemon's binding again within 15 s, and /health says unregistered while
    the registrar is away."""
    async with (
        running_kamailio(tmp_path / "k") as kamailio,
        _daemon(daemon_env, kamailio, password("1000")) as health,
    ):
        await health.wait(30, sip_registered=True)
        await asyncio.to_thread(kamailio.stop)
        down = time.monotonic()
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(kamailio.start)
        back = time.monotonic()
        assert not await asyncio.to_thread(kamailio.contacts, "1000")  # it forgot the binding
        await _until_bound(kamailio, timeout=60)
        seconds = time.monotonic() - back
        print(f"binding back {seconds:.1f} s after the registrar returned")
        during = health.between(down + 1, back)
        assert any(not body["sip_registered"] for body in during), (
            f"/health said registered for all {len(during)} samples of the outage"
        )
        assert any(not body["sip_registered"] and body["status"] == "unhealthy" for body in during)
        assert any(body.get("registration_error") for body in during), during[-1]
        assert seconds <= 15, f"binding back {seconds:.1f} s after the registrar returned"
        await health.wait(15, sip_registered=True)


async def test_wrong_password_is_tried_rarely_and_reported(
    daemon_env: dict[str, str], tmp_path: Path
) -> None:
    """A wrong password costs the PBX at most 2 digest authentications in its first 35 s
    (retried after 30 s, then 1, 2, 5 min), and /health names the failure in
    registration_error."""
    async with running_kamailio(tmp_path / "k") as kamailio:
        before = await asyncio.to_thread(kamailio.registers, "1000")
        async with _daemon(daemon_env, kamailio, "wrong") as health:
            async with asyncio.timeout(30):  # the window opens with the first REGISTER
                while (await asyncio.to_thread(kamailio.registers, "1000"))[0] == before[0]:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(COUNT_SECONDS)
            after = await asyncio.to_thread(kamailio.registers, "1000")
            body = health.samples[-1][1]
        registers, digests = (a - b for a, b in zip(after, before, strict=True))
        print(f"in {COUNT_SECONDS:.0f} s: {registers} REGISTERs, {digests} with credentials")
        assert 1 <= digests <= 2, (
            f"{digests} digest attempts ({registers} REGISTERs) in {COUNT_SECONDS:.0f} s"
        )
        assert not body["sip_registered"]
        error = body.get("registration_error") or ""
        assert "401" in error, body
        assert "authentication failed" in error, body
