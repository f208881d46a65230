"""The embedded engine and the client speak one dialect mapping, GA and beta alike.

An engine session (the real ``EngineSession`` with the real receptionist brain) is fed the
client's own ``session.update`` and ``response.create``; every event it sends is checked by
the ``openai`` package's typed models and parsed by the client's ``Dialect.parse``. The
voice is a tone synthesizer of our ``Synthesizer`` interface, so the test needs no model.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from daemon.engine.brains import Receptionist
from daemon.engine.session import EngineSession
from daemon.realtime import events as ev
from daemon.realtime.dialect import DIALECTS, SessionConfig, SessionSettings, Tool
from daemon.speech import SpeechToText, TextToSpeech
from media.codec import PCM24K, PCMU
from tests.realtime_oracle import check_server_event

CONFIG = SessionConfig(  # the engine's default input, PCM out, a tool, transcription
    "You answer the phone for a garage.",
    "cedar",
    output_format=PCM24K,
    transcription_model="whisper-1",
    tools=(Tool("end_call", "Hang up.", {"type": "object", "properties": {}}),),
)


class ToneVoice:
    """A synthesizer that says every text as 10 ms of 440 Hz per character, at 22.05 kHz."""

    rate = 22050

    def synthesize(self, text: str) -> NDArray[np.int16]:
        t = np.arange(len(text) * self.rate // 100) / self.rate
        return (8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)


class NoRecognizer:
    def transcribe(self, pcm16k: NDArray[np.int16], hint: str = "") -> str:
        return ""


async def _served(
    dialect: str, *requests: dict[str, Any], tts: TextToSpeech | None = None
) -> list[dict[str, Any]]:
    """What an engine session in ``dialect`` sends for ``requests`` (until each is answered)."""
    sent: list[dict[str, Any]] = []
    answered = asyncio.Event()

    async def send(event: dict[str, Any]) -> None:
        sent.append(json.loads(json.dumps(event)))
        if event["type"] in ("session.updated", "response.done", "error"):
            answered.set()

    session = EngineSession(
        send,
        tts or TextToSpeech(ToneVoice(), "tone"),
        SpeechToText(NoRecognizer()),
        Receptionist(greeting="Hello. You called the practice."),
        dialect=DIALECTS[dialect],
    )
    try:
        await session.start()
        for request in requests:
            answered.clear()
            await session.handle(json.dumps(request))
            async with asyncio.timeout(10):
                await answered.wait()
    finally:
        await session.close()
    return sent


@pytest.mark.parametrize("dialect", ["ga", "beta"])
async def test_the_client_reads_what_the_engine_serves(dialect: str) -> None:
    """The engine's session.created/updated and reply events pass the oracle and parse with
    the client's Dialect.parse to the session asked for and to the audio it streamed."""
    d = DIALECTS[dialect]
    tts = TextToSpeech(ToneVoice(), "tone")
    sent = await _served(dialect, d.session_update(CONFIG), d.respond(), tts=tts)
    for event in sent:
        check_server_event(event, dialect)
    parsed = [d.parse(event) for event in sent]
    created, updated = (e for e in parsed if isinstance(e, ev.SessionReported))
    assert (created.created, created.input_format, created.output_format) == (True, PCMU, PCMU)
    assert not updated.created
    assert (updated.input_format, updated.output_format, updated.voice) == (PCMU, PCM24K, "cedar")
    assert (updated.instructions, updated.tools) == (CONFIG.instructions, ("end_call",))
    deltas = [e for e in parsed if isinstance(e, ev.AudioDelta)]
    [done] = [e for e in parsed if isinstance(e, ev.AudioDone)]
    [said] = [e for e in parsed if isinstance(e, ev.AgentTranscript)]
    [finished] = [e for e in parsed if isinstance(e, ev.ResponseDone)]
    assert said.text == "Hello. You called the practice."
    assert {(e.response_id, e.item_id) for e in deltas} == {(done.response_id, done.item_id)}
    assert done.item_id == said.item_id
    assert finished.status == "completed"
    streamed = b"".join(e.audio for e in deltas)  # PCM16 at 24 kHz, as asked
    voiced = [await tts.synthesize(s, 24000) for s in ("Hello.", "You called the practice.")]
    print(f"{dialect}: {len(deltas)} deltas, {len(streamed) // 2} samples of 24 kHz PCM")
    assert streamed == np.concatenate(voiced).astype("<i2").tobytes()
    assert not [e for e in parsed if isinstance(e, ev.ServerError)]


@pytest.mark.parametrize(
    ("dialect", "update", "message"),
    [
        ("ga", {"audio": {"input": {"format": {"type": "audio/pcma"}}}}, "audio/pcmu or"),
        ("beta", {"output_audio_format": "g711_alaw"}, "g711_ulaw or pcm16"),
    ],
)
async def test_formats_the_engine_does_not_serve_are_errors(
    dialect: str, update: dict[str, Any], message: str
) -> None:
    """A session.update asking for A-law gets an invalid_value error naming what is served,
    and the settings stay as they were."""
    sent = await _served(dialect, {"type": "session.update", "session": update})
    errors = [e for e in sent if e["type"] == "error"]
    assert len(errors) == 1, errors
    assert message in errors[0]["error"]["message"], errors
    check_server_event(errors[0], dialect)
    assert DIALECTS[dialect].read_session_update({}, SessionSettings()) == SessionSettings()
