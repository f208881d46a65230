"""The realtime session client against real WebSocket servers: checks and failure kinds."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import pytest
import websockets

from daemon.realtime.client import Endpoint, RealtimeError, RealtimeSession, SessionMismatch
from daemon.realtime.dialect import DIALECTS, SessionConfig, Tool
from media.codec import PCM24K, PCMU
from tests.peers.realtime_server import FakeRealtime
from tests.support import free_port

CONFIG = SessionConfig("Be brief.", "alloy", PCMU, PCMU, tools=(Tool("end_call", "End.", {}),))


def _endpoint(url: str, dialect: str = "ga") -> Endpoint:
    return Endpoint(url, {"Authorization": "Bearer k"}, DIALECTS[dialect])


async def test_a_session_that_changes_the_input_format_is_refused() -> None:
    """Told mu-law, a session that says it hears PCM would hear noise: fail loudly."""
    override = {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}}}}
    async with FakeRealtime("ga", session_override=override) as fake:
        session = RealtimeSession(_endpoint(fake.url), CONFIG)
        with pytest.raises(SessionMismatch, match="input format"):
            await session.open(5)


async def test_missing_tools_are_refused_and_a_new_output_format_is_followed() -> None:
    async with FakeRealtime("beta", session_override={"tools": []}) as fake:
        with pytest.raises(SessionMismatch, match="lacks the tools"):
            await RealtimeSession(_endpoint(fake.url, "beta"), CONFIG).open(5)
    async with FakeRealtime("beta", session_override={"output_audio_format": "pcm16"}) as fake:
        session = RealtimeSession(_endpoint(fake.url, "beta"), CONFIG)
        reported = await session.open(5)
        await session.close()
    assert (reported.input_format, reported.output_format) == (PCMU, PCM24K)


async def test_failures_are_classified() -> None:
    """Nobody listening: connect. 401 and 429 on the handshake: auth, rate_limit. A server
    that never says session.created: timeout. Only connect and timeout are retryable."""

    def refuse(status: HTTPStatus) -> Any:
        def process_request(connection: Any, request: Any) -> Any:
            return connection.respond(status, "no\n")

        return process_request

    with pytest.raises(RealtimeError) as caught:
        await RealtimeSession(_endpoint(f"ws://127.0.0.1:{free_port()}/"), CONFIG).open(5)
    assert (caught.value.kind, caught.value.retryable) == ("connect", True)

    async def silent(connection: Any) -> None:
        await connection.wait_closed()  # says nothing until the client gives up

    for status, kind in (
        (HTTPStatus.UNAUTHORIZED, "auth"),
        (HTTPStatus.TOO_MANY_REQUESTS, "rate_limit"),
    ):
        async with websockets.serve(silent, "127.0.0.1", 0, process_request=refuse(status)) as srv:
            port = next(iter(srv.sockets)).getsockname()[1]
            with pytest.raises(RealtimeError) as caught:
                await RealtimeSession(_endpoint(f"ws://127.0.0.1:{port}/"), CONFIG).open(5)
            assert (caught.value.kind, caught.value.retryable) == (kind, False)

    async with websockets.serve(silent, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        with pytest.raises(RealtimeError) as caught:
            await RealtimeSession(_endpoint(f"ws://127.0.0.1:{port}/"), CONFIG).open(0.5)
        assert (caught.value.kind, caught.value.retryable) == ("timeout", True)
