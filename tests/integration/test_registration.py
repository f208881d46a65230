"""A SIP worker's registration against Kamailio: prompt with the right password, patient
with a wrong one, and back to the short schedule once the registrar accepts it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from sip.events import RegistrationChanged
from tests.integration.conftest import Recorded, worker_settings
from tests.peers.kamailio import Kamailio, password, running_kamailio

MakeWorker = Callable[..., Awaitable[Recorded]]


async def test_right_password_registers_promptly(
    kamailio: Kamailio, make_worker: MakeWorker
) -> None:
    """With the right password the worker is registered within 2 s of starting."""
    started = time.monotonic()
    worker = await make_worker(worker_settings(kamailio, register_expires=300))
    event = await worker.expect(RegistrationChanged)
    seconds = worker.last_arrival - started
    assert (event.registered, event.code, event.error) == (True, 200, "")
    assert seconds <= 2, f"registered {seconds:.1f} s after start"


async def test_a_fixed_password_registers_and_resets_the_backoff(
    make_worker: MakeWorker, tmp_path: Path
) -> None:
    """Refused with 401, the worker waits about 30 s; once the registrar accepts its password
    it registers at that attempt, and a later refusal waits 30 s again, not 60 s."""
    async with running_kamailio(tmp_path / "k") as kamailio:
        kamailio.set_password("1000", "old-secret")
        await asyncio.to_thread(kamailio.restart)
        worker = await make_worker(worker_settings(kamailio, register_expires=300))
        refused = await worker.expect(RegistrationChanged, registered=False)
        assert refused.code == 401
        assert "authentication failed" in refused.error
        assert refused.retry_in is not None
        assert 27 <= refused.retry_in <= 33, refused

        kamailio.set_password("1000", password("1000"))  # the administrator fixes the PBX
        await asyncio.to_thread(kamailio.restart)
        registered = await worker.expect(RegistrationChanged, registered=True, timeout=40)
        assert registered.error == ""

        kamailio.set_password("1000", "rotated")  # refused again: the schedule starts over
        await asyncio.to_thread(kamailio.restart)
        again = await worker.expect(RegistrationChanged, registered=False, timeout=20)
        while again.code != 401:  # the keep-alive may first meet the registrar restarting
            again = await worker.expect(RegistrationChanged, registered=False, timeout=40)
        assert again.retry_in is not None
        assert 27 <= again.retry_in <= 33, f"second refusal waits {again.retry_in:.0f} s"


async def test_keepalive_registers_every_10_s(kamailio: Kamailio, make_worker: MakeWorker) -> None:
    """While registered, the worker re-REGISTERs every 10 s: each keep-alive is one challenge
    and one authenticated REGISTER that succeeds, and the binding stays."""
    worker = await make_worker(worker_settings(kamailio, register_expires=300))
    await worker.expect(RegistrationChanged, registered=True)
    before = kamailio.registers("1000")
    await asyncio.sleep(25)
    registers, digests = (a - b for a, b in zip(kamailio.registers("1000"), before, strict=True))
    print(f"in 25 s while registered: {registers} REGISTERs, {digests} with credentials")
    assert (registers, digests) == (4, 2), f"{registers} REGISTERs, {digests} with credentials"
    assert worker.sip.registration.registered
    assert [c.split(";")[0] for c in kamailio.contacts("1000")] == [worker.sip.contact]


async def test_binding_returns_after_a_quick_registrar_restart(
    kamailio: Kamailio, make_worker: MakeWorker
) -> None:
    """A registrar restarted at once (down for well under the answer deadline) that lost its
    location table holds the binding again within 12 s, with a 300 s expiry."""
    worker = await make_worker(worker_settings(kamailio, register_expires=300))
    await worker.expect(RegistrationChanged, registered=True)
    await asyncio.to_thread(kamailio.restart)
    back = time.monotonic()
    async with asyncio.timeout(60):
        while not await asyncio.to_thread(kamailio.contacts, "1000"):
            await asyncio.sleep(0.2)
    seconds = time.monotonic() - back
    print(f"binding back {seconds:.1f} s after a quick restart")
    assert seconds <= 12, f"binding back {seconds:.1f} s after a quick restart"
    assert worker.sip.registration.registered
