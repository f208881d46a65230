"""The embedded engine when speech recognition fails: the caller hears an apology, not silence.

The session runs on this test's loop with the real Piper voice and a recognizer of our own
``Transcriber`` interface that fails the way CTranslate2 does when it may not generate code.
Every event the session sends is checked against the ``openai`` package's typed models.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray
from structlog.testing import capture_logs

from daemon.engine.brains import Receptionist
from daemon.engine.session import MAX_STT_FAILURES, EngineSession
from daemon.speech import SpeechToText, TextToSpeech
from daemon.speech.local import PiperSynthesizer
from media import g711
from media.resample import resample
from tests.realtime_oracle import check_server_event

DELTA = "response.output_audio.delta"


class BrokenRecognizer:
    """Speech recognition that cannot run: every transcription raises, as under MDWE."""

    def __init__(self) -> None:
        self.calls = 0

    def transcribe(self, pcm16k: NDArray[np.int16], hint: str = "") -> str:
        self.calls += 1
        raise RuntimeError("could not create a primitive")


@pytest.fixture(scope="module")
def piper() -> PiperSynthesizer:
    return PiperSynthesizer()


def _turn(piper: PiperSynthesizer, text: str) -> Iterator[str]:
    """A spoken caller turn as 100 ms input_audio_buffer.append payloads (mu-law, base64)."""
    pcm = resample(piper.synthesize(text), piper.rate, 8000)
    silence = np.zeros(8000, dtype=np.int16)  # a second of silence ends the turn
    audio = g711.ulaw_encode(np.concatenate((silence[:2000], pcm, silence))).tobytes()
    for offset in range(0, len(audio), 800):
        yield base64.b64encode(audio[offset : offset + 800]).decode()


class Client:
    """The far end of the session: every event it gets, checked, and a way to wait for one."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Condition()

    async def send(self, event: dict[str, Any]) -> None:
        check_server_event(json.loads(json.dumps(event)), "ga")
        async with self._arrived:
            self.events.append(event)
            self._arrived.notify_all()

    async def until(self, kind: str, after: int, timeout: float = 60) -> int:
        """Index of the first ``kind`` event at or after index ``after``."""
        async with asyncio.timeout(timeout), self._arrived:
            while True:
                for index in range(after, len(self.events)):
                    if self.events[index]["type"] == kind:
                        return index
                await self._arrived.wait()


async def test_a_failed_transcription_is_apologised_for_and_handled(
    piper: PiperSynthesizer,
) -> None:
    """Each caller turn whose transcription raises gets a transcription.failed event, a spoken
    apology (a goodbye and end_call on the second in a row), an error log and an on_error
    report; no task exception goes unhandled."""
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: unhandled.append(context))
    recognizer = BrokenRecognizer()
    client = Client()
    session = EngineSession(
        client.send,
        TextToSpeech(piper, piper.name),
        SpeechToText(recognizer),
        Receptionist(),
    )
    reported: list[str] = []
    session.on_error = reported.append
    update = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "audio": {
                "input": {
                    "format": {"type": "audio/pcmu"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                },
                "output": {"format": {"type": "audio/pcmu"}},
            },
        },
    }
    replies: list[tuple[str, int]] = []  # (what the caller was told, bytes of mu-law heard)
    try:
        with capture_logs() as logs:
            await session.start()
            await session.handle(json.dumps(update))
            await session.handle(json.dumps({"type": "response.create"}))
            mark = await client.until("response.done", 0)  # the greeting
            for text in ("Please call me back.", "Can you hear me?"):
                for chunk in _turn(piper, text):
                    await session.handle(
                        json.dumps({"type": "input_audio_buffer.append", "audio": chunk})
                    )
                failed = await client.until(
                    "conversation.item.input_audio_transcription.failed", mark + 1
                )
                mark = await client.until("response.done", failed)
                reply = client.events[failed:mark]
                said = " ".join(
                    e["delta"] for e in reply if e["type"].endswith("audio_transcript.delta")
                )
                heard = sum(len(base64.b64decode(e["delta"])) for e in reply if e["type"] == DELTA)
                replies.append((said, heard))
        ended_by = [
            e["item"]["name"]
            for e in client.events[failed:]
            if e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"
        ]
    finally:
        await session.close()
    gc.collect()  # a task whose exception was never retrieved reports it when collected
    assert recognizer.calls == MAX_STT_FAILURES
    print(json.dumps({"replies": replies}))
    for said, heard in replies:
        assert said.startswith("Sorry"), replies
        assert heard > 8000, f"{heard} bytes of mu-law: under a second of apology"
    assert "technical problem" in replies[-1][0], replies
    assert ended_by == ["end_call"]
    errors = [e for e in logs if e["event"] == "engine.transcription_failed"]
    assert [e["log_level"] for e in errors] == ["error"] * MAX_STT_FAILURES
    assert "could not create a primitive" in errors[0]["error"]
    expected = "speech recognition failed: RuntimeError: could not create a primitive"
    assert reported == [expected] * MAX_STT_FAILURES
    assert not [e for e in logs if e["event"] == "engine.task_failed"], logs
    assert unhandled == []
