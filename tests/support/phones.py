"""Test phones set up the way most tests need them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from tests.peers.kamailio import Kamailio
from tests.peers.phone import TestPhone


@contextlib.asynccontextmanager
async def callee(
    kamailio: Kamailio,
    user: str,
    mode: str = "answer",
    answer_after_ms: int = 0,
    name: str = "callee",
) -> AsyncIterator[TestPhone]:
    """A test phone registered as ``user`` that meets incoming calls with ``mode`` (answer,
    busy, decline, ignore), answering after ``answer_after_ms``; closed on exit."""
    phone = await TestPhone.start(name)
    try:
        await phone.register(kamailio, user)
        await phone.command("mode", on_incoming=mode, answer_after_ms=answer_after_ms)
        yield phone
    finally:
        await phone.close()
