"""The embedded engine's replies, streamed as realtime output items.

:func:`respond` runs one response: ``response.created``, then for each part of the brain's
reply either a function call item or spoken text, and ``response.done`` whatever happens
(``cancelled`` when the task is cancelled: a new turn or ``response.cancel``). Spoken text is
one :class:`Speech` item per response, synthesised sentence by sentence so the first audio
leaves before the whole reply is said. Events are written with their GA names; the session's
:meth:`~daemon.realtime.dialect.Dialect.event` renames them on the way out.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from daemon.engine.brains import BrainCall, Turn
from daemon.logs import get_logger
from media import g711
from media.codec import PCMU, AudioFormat
from media.resample import Resampler

if TYPE_CHECKING:
    from daemon.engine.session import EngineSession

log = get_logger(__name__)

Json = dict[str, Any]
CHUNK_MS = 100  # audio deltas carry this much audio each
SENTENCE = re.compile(r"(?<=[.!?])\s+")
_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_{next(_ids):06d}"


async def respond(
    session: EngineSession, instructions: str, script: Sequence[str | BrainCall] | None = None
) -> None:
    """One response: the brain's words, or ``script``'s when the engine itself must speak."""
    response_id = new_id("resp")
    output: list[Json] = []
    await session.send(
        {
            "type": "response.created",
            "response": {
                "id": response_id,
                "object": "realtime.response",
                "status": "in_progress",
                "output": [],
            },
        }
    )
    status = "completed"
    speech: Speech | None = None
    try:
        settings = session.settings
        reply = (
            _scripted(script)
            if script is not None
            else session.brain.reply(
                session.conversation, settings.instructions, instructions, list(settings.tools)
            )
        )
        async for part in reply:
            if isinstance(part, BrainCall):
                output.append(await _function_call(session, response_id, len(output), part))
                continue
            if speech is None:
                speech = Speech(session, response_id, len(output))
                await speech.begin()
            await speech.say(part)
        if speech is not None:
            output.append(await speech.end())
    except asyncio.CancelledError:
        status = "cancelled"
        if speech is not None:
            speech.cut()
        raise
    except Exception as exc:
        status = "failed"
        log.error("engine.response_failed", error=repr(exc))
    finally:
        done: Json = {
            "id": response_id,
            "object": "realtime.response",
            "status": status,
            "output": output,
        }
        if status == "cancelled":
            done["status_details"] = {"type": "cancelled", "reason": "turn_detected"}
        await asyncio.shield(session.send({"type": "response.done", "response": done}))


async def _function_call(
    session: EngineSession, response_id: str, index: int, call: BrainCall
) -> Json:
    item = {
        "id": new_id("item"),
        "object": "realtime.item",
        "type": "function_call",
        "call_id": new_id("call"),
        "name": call.name,
        "arguments": call.arguments,
        "status": "completed",
    }
    where = {"response_id": response_id, "output_index": index}
    await session.send({"type": "response.output_item.added", **where, "item": item})
    arguments_done: Json = {
        "type": "response.function_call_arguments.done",
        **where,
        "item_id": item["id"],
        "call_id": item["call_id"],
        "arguments": call.arguments,
    }
    if session.dialect.names_function_arguments:
        arguments_done["name"] = call.name
    await session.send(arguments_done)
    await session.send({"type": "response.output_item.done", **where, "item": item})
    session.conversation.append(
        Turn(str(item["id"]), "assistant", "", call_id=str(item["call_id"]), call=call)
    )
    return item


async def _scripted(parts: Sequence[str | BrainCall]) -> AsyncIterator[str | BrainCall]:
    for part in parts:
        yield part


def encode(pcm24k: NDArray[np.int16], fmt: AudioFormat) -> bytes:
    """Synthesised audio at 24 kHz in the session's output format (mu-law or PCM 24 kHz)."""
    if fmt == PCMU:
        resampler = Resampler(24000, 8000)
        pcm8k = np.concatenate((resampler.process(pcm24k), resampler.flush()))
        return g711.ulaw_encode(pcm8k).tobytes()
    return pcm24k.astype("<i2").tobytes()


class Speech:
    """One spoken output item of a response, streamed sentence by sentence."""

    def __init__(self, session: EngineSession, response_id: str, index: int) -> None:
        self.session = session
        self.item_id = new_id("item")
        self.where = {"response_id": response_id, "output_index": index}
        self.text = ""
        self.pending = ""
        self.spoken_ms = 0
        self.turn = Turn(self.item_id, "assistant", "")

    async def begin(self) -> None:
        session = self.session
        session.conversation.append(self.turn)
        item = {
            "id": self.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        await session.send({"type": "response.output_item.added", **self.where, "item": item})
        await session.send(
            {
                "type": "response.content_part.added",
                **self.where,
                "item_id": self.item_id,
                "content_index": 0,
                "part": {"type": "audio", "transcript": ""},
            }
        )

    async def say(self, text: str) -> None:
        """More reply text: every complete sentence is synthesised and sent at once."""
        self.pending += text
        *sentences, self.pending = SENTENCE.split(self.pending)
        for sentence in sentences:
            await self._speak(sentence)

    async def _speak(self, sentence: str) -> None:
        sentence = sentence.strip()
        if not sentence:
            return
        session = self.session
        started = time.monotonic()
        pcm = await session.tts.synthesize(sentence, 24000)
        session.first_audio(started)
        spoken = (" " if self.text else "") + sentence
        self.text += spoken
        self.turn.text = self.text
        data = encode(pcm, session.settings.output_format)
        step = len(data) * CHUNK_MS // max(1, len(pcm) // 24)
        step = max(1, step)
        ids = {**self.where, "item_id": self.item_id, "content_index": 0}
        await session.send(
            {"type": "response.output_audio_transcript.delta", **ids, "delta": spoken}
        )
        for offset in range(0, len(data), step):
            chunk = base64.b64encode(data[offset : offset + step]).decode()
            await session.send({"type": "response.output_audio.delta", **ids, "delta": chunk})
        self.spoken_ms += len(pcm) // 24
        self.turn.spoken_ms = self.spoken_ms

    def cut(self) -> None:
        self.turn.text = self.text

    async def end(self) -> Json:
        await self._speak(self.pending)
        self.pending = ""
        session = self.session
        ids = {**self.where, "item_id": self.item_id, "content_index": 0}
        await session.send({"type": "response.output_audio.done", **ids})
        await session.send(
            {"type": "response.output_audio_transcript.done", **ids, "transcript": self.text}
        )
        part = {"type": "audio", "transcript": self.text}
        await session.send({"type": "response.content_part.done", **ids, "part": part})
        item = {
            "id": self.item_id,
            "object": "realtime.item",
            "type": "message",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": session.dialect.content_type_audio, "transcript": self.text}],
        }
        await session.send({"type": "response.output_item.done", **self.where, "item": item})
        return item
