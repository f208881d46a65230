"""The embedded engine's end of turn over its real WebSocket: Smart Turn, and the silence.

Real Piper speech through the telephone band (8 kHz mu-law) is sent at real time in 20 ms
chunks, as a call's uplink, to the engine behind the API app; Whisper, the VAD and the Smart
Turn model are the daemon's own. Times are measured from the last voiced sample of the
caller's audio (by its energy), not from the end of Piper's buffer (which ends in silence).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import websockets
from numpy.typing import NDArray

from config.schema import EngineSettings
from daemon.engine.brains import Receptionist
from daemon.engine.session import EngineSession
from daemon.engine.turns import TurnPolicy
from daemon.speech import SpeechToText
from daemon.speech.backends import load_turn_model
from daemon.speech.local import PiperSynthesizer, WhisperTranscriber
from daemon.speech.turn import SmartTurn
from media import g711
from media.resample import resample
from tests.integration.test_engine import TOKEN, EngineServer

CHUNK = 160  # 20 ms at 8 kHz
WINDOW_MS = 3000  # the sessions' silence window: what Smart Turn must beat
EARLY_MS = 2000  # a reply this soon after the last voiced sample came before the window
# (wide: under load a pass and a reply take longer; the silence mode needs > 2900 ms)
VOICED_DBFS = -45.0  # a 10 ms block louder than this is voice
GAP_DBFS = -40.0  # quieter than this inside an utterance: a gap between words

# Sentences with hesitations where no sentence ends, and the pauses spliced into each
# synthesis at its longest gaps (the commas): 300-800 ms of silence each. The first ones
# pause around a filler or after a word no turn ends on; the last ones after content words.
PAUSE_SET: list[tuple[str, tuple[int, ...]]] = [
    ("I would like to, um, move my appointment to Friday.", (400, 700)),
    ("My name is, uh, John Smith and I need a plumber.", (600,)),
    ("We need, um, two more chairs in the conference room.", (300, 800)),
    ("I think the, er, printer on the second floor is broken.", (500, 500)),
    ("Can you tell, um, the manager that I called?", (700,)),
    ("The problem is, uh, the heating in room twelve.", (800, 400)),
    ("I am calling because, um, my order has not arrived.", (350, 650)),
    ("Could somebody, uh, check the lights in the garage?", (450,)),
    ("I wanted to ask, um, whether the office is open on Sunday.", (750, 300)),
    ("Please send the, uh, invoice to my new address.", (550, 600)),
    ("So I was wondering if, um, you could call me back.", (650,)),
    ("The meeting with, er, Peter has moved to Thursday.", (300, 500)),
    # pauses after content words, where no word list can tell: the model's own judgement
    ("I would like to book a table, for four people, on Saturday.", (500, 400)),
    ("We need two more chairs, in the conference room.", (600,)),
    ("My name is John Smith, and my number has changed.", (600,)),
    ("The printer, on the second floor, is broken again.", (400, 500)),
    ("Please call my wife, at home, after six.", (450, 350)),
    ("I booked a room, for three nights, in March.", (500, 600)),
    ("The parcel arrived, but the box was damaged.", (700,)),
    ("Could you check the invoice, from last month, for me?", (400, 500)),
    ("My flight lands, at ten, on Monday morning.", (300, 600)),
    ("I need the report, with the figures, by Friday.", (500, 400)),
]


def telephone(piper: PiperSynthesizer, text: str) -> NDArray[np.int16]:
    """Piper's ``text`` at 8 kHz, as a phone line carries it."""
    return resample(piper.synthesize(text), piper.rate, 8000)


def _block_dbfs(pcm: NDArray[np.int16], block: int = 80) -> NDArray[np.float64]:
    """The level of each 10 ms block of 8 kHz audio."""
    n = len(pcm) // block
    blocks = pcm[: n * block].astype(np.float64).reshape(n, block)
    rms = np.sqrt(np.mean(blocks**2, axis=1))
    return np.asarray(20 * np.log10(np.maximum(rms, 1.0) / 32768), dtype=np.float64)


def last_voiced_sample(pcm: NDArray[np.int16]) -> int:
    """The end of the last voiced 10 ms block of 8 kHz audio (its sample index)."""
    voiced = np.flatnonzero(_block_dbfs(pcm) > VOICED_DBFS)
    return int(voiced[-1] + 1) * 80 if len(voiced) else 0


def with_pauses(pcm: NDArray[np.int16], pauses_ms: tuple[int, ...]) -> NDArray[np.int16]:
    """``pcm`` with its ``len(pauses_ms)`` longest gaps between words stretched to those
    lengths of silence, in order."""
    level = _block_dbfs(pcm)
    voiced = np.flatnonzero(level > VOICED_DBFS)
    gaps: list[tuple[int, int]] = []  # (first block, blocks) of the quiet runs inside
    start = None
    for i in range(int(voiced[0]), int(voiced[-1]) + 1):
        if level[i] < GAP_DBFS:
            start = i if start is None else start
        elif start is not None:
            gaps.append((start, i - start))
            start = None
    chosen = sorted(sorted(gaps, key=lambda g: -g[1])[: len(pauses_ms)])
    assert len(chosen) == len(pauses_ms), "not enough gaps between words"
    parts, done = [], 0
    for (first, blocks), pause_ms in zip(chosen, pauses_ms, strict=True):
        middle = (first + blocks // 2) * 80
        parts += [pcm[done:middle], np.zeros(max(0, pause_ms - blocks * 10) * 8, np.int16)]
        done = middle
    return np.concatenate([*parts, pcm[done:]])


@dataclass
class Exchange:
    """One caller utterance and the engine's answer, on the client's monotonic clock."""

    voiced_end: float = 0.0  # the chunk holding the last voiced sample was sent
    buffer_end: float = 0.0  # the last chunk of the synthesis was sent (ends in silence)
    first_audio: float | None = None  # the first reply's first audio delta arrived
    premature: bool = False  # it arrived before the caller's last word was sent
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def reply_ms(self) -> float:
        assert self.first_audio is not None, "no reply"
        return (self.first_audio - self.voiced_end) * 1000

    @property
    def buffer_reply_ms(self) -> float:
        assert self.first_audio is not None, "no reply"
        return (self.first_audio - self.buffer_end) * 1000

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


async def converse(
    server: EngineServer,
    pcm8k: NDArray[np.int16],
    silence_ms: int,
    *,
    greet: bool = True,
    after_s: float = 3.0,
    whole: bool = False,
    after_voice: dict[int, dict[str, Any]] | None = None,
) -> Exchange:
    """A session: a greeting (if ``greet``), then ``pcm8k`` and ``after_s`` of silence at
    real time with turn detection ``silence_duration_ms``; until the first reply's first
    audio delta, or (``whole``, or no reply) the end of the silence. ``after_voice``: events
    to send that many chunks after the one holding the last voiced sample."""
    url = f"ws://127.0.0.1:{server.port}/v1/realtime"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    exchange = Exchange()
    # the reply is left unread: the close need not wait for its frames
    connect = websockets.connect(url, additional_headers=headers, max_size=None, close_timeout=1)
    async with connect as ws:

        async def until(kind: str) -> dict[str, Any]:
            while True:
                event: dict[str, Any] = json.loads(await ws.recv())
                if event["type"] == kind:
                    return event

        await until("session.created")
        detection = {"type": "server_vad", "silence_duration_ms": silence_ms}
        session = {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
        await ws.send(json.dumps({"type": "session.update", "session": session}))
        await until("session.updated")
        if greet:
            await ws.send(json.dumps({"type": "response.create"}))
            await until("response.done")
        voiced_chunk = (last_voiced_sample(pcm8k) - 1) // CHUNK
        audio = g711.ulaw_encode(
            np.concatenate((pcm8k, np.zeros(int(8000 * after_s), np.int16)))
        ).tobytes()
        chunks = [audio[i : i + CHUNK] for i in range(0, len(audio), CHUNK)]
        last_speech_chunk = (len(pcm8k) - 1) // CHUNK
        started = time.monotonic()

        async def sender() -> None:
            for n, chunk in enumerate(chunks):
                await asyncio.sleep(max(0.0, started + n * 0.02 - time.monotonic()))
                payload = base64.b64encode(chunk).decode()
                await ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": payload}))
                if n == voiced_chunk:
                    exchange.voiced_end = time.monotonic()
                if after_voice and (extra := after_voice.get(n - voiced_chunk)) is not None:
                    await ws.send(json.dumps(extra))
                if n == last_speech_chunk:
                    exchange.buffer_end = time.monotonic()

        sending = asyncio.create_task(sender())
        deadline = started + len(chunks) * 0.02 + 0.5
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    event = json.loads(await asyncio.wait_for(ws.recv(), timeout=left))
                except TimeoutError:
                    break
                exchange.events.append(event)
                if event["type"] == "response.output_audio.delta" and not exchange.first_audio:
                    exchange.first_audio = time.monotonic()
                    exchange.premature = not exchange.voiced_end
                    if not whole:
                        break
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
    return exchange


class Counted:
    """The real Whisper transcriber, counting the passes that run at once."""

    def __init__(self, model: WhisperTranscriber) -> None:
        self._model = model
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def transcribe(self, pcm16k: NDArray[np.int16], hint: str = "") -> str:
        with self._lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return self._model.transcribe(pcm16k, hint)
        finally:
            with self._lock:
                self.running -= 1


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineServer]:
    server = EngineServer()
    server.engine.stt = SpeechToText(Counted(WhisperTranscriber()))
    # the models' first runs are slow: not what a test should time
    asyncio.run(server.engine.stt.transcribe(telephone(server.piper, "Hello."), 8000))
    yield server
    server.close()


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    model = load_turn_model(EngineSettings())  # the default end_of_turn: smart_turn
    assert model is not None
    return model


async def test_a_complete_sentence_is_answered_before_the_silence_window(
    engine: EngineServer, smart_turn: SmartTurn
) -> None:
    """With a 2000 ms silence window, Smart Turn ends a complete sentence: the reply's first
    audio comes less than 1200 ms after the caller's last voiced sample."""
    engine.engine.turn_policy = TurnPolicy(smart_turn)
    pcm = telephone(engine.piper, "I would like to move my appointment to Friday.")
    exchange = await converse(engine, pcm, silence_ms=WINDOW_MS, greet=False)
    assert not exchange.premature
    assert exchange.reply_ms < EARLY_MS, exchange.reply_ms
    (stopped,) = exchange.of_type("input_audio_buffer.speech_stopped")
    (started,) = exchange.of_type("input_audio_buffer.speech_started")
    # the real end of the speech, not the end of a silence window
    spoken_ms = last_voiced_sample(pcm) / 8
    assert abs(stopped["audio_end_ms"] - spoken_ms) < 250, (stopped, spoken_ms)
    assert stopped["audio_end_ms"] > started["audio_start_ms"]
    (done,) = exchange.of_type("conversation.item.input_audio_transcription.completed")
    assert "friday" in done["transcript"].lower()
    assert len(exchange.of_type("input_audio_buffer.committed")) == 1


async def test_a_pause_inside_a_sentence_is_not_answered(
    engine: EngineServer, smart_turn: SmartTurn
) -> None:
    """Pauses of 400 and 700 ms around "um" get no reply: one turn, answered after the last
    word, transcribed whole."""
    engine.engine.turn_policy = TurnPolicy(smart_turn)
    text, pauses = PAUSE_SET[0]
    pcm = with_pauses(telephone(engine.piper, text), pauses)
    exchange = await converse(engine, pcm, silence_ms=WINDOW_MS, greet=False)
    assert exchange.first_audio is not None
    assert not exchange.premature, exchange.reply_ms
    assert len(exchange.of_type("input_audio_buffer.committed")) == 1
    (done,) = exchange.of_type("conversation.item.input_audio_transcription.completed")
    assert "friday" in done["transcript"].lower()
    assert exchange.reply_ms < EARLY_MS, exchange.reply_ms  # and the end is still found early


async def test_the_silence_mode_waits_for_the_silence_window(engine: EngineServer) -> None:
    """``end_of_turn = "silence"``: the same complete sentence is answered only after the
    2000 ms silence window."""
    engine.engine.turn_policy = TurnPolicy()
    pcm = telephone(engine.piper, "I would like to move my appointment to Friday.")
    exchange = await converse(engine, pcm, silence_ms=WINDOW_MS, greet=False)
    assert exchange.reply_ms > WINDOW_MS - 100, exchange.reply_ms
    assert len(exchange.of_type("input_audio_buffer.committed")) == 1


async def test_speech_after_an_early_end_is_a_new_turn(
    engine: EngineServer, smart_turn: SmartTurn
) -> None:
    """A caller who goes on after Smart Turn ended the turn starts a new turn (speech_started,
    the reply interrupted), and that turn is committed and transcribed too."""
    engine.engine.turn_policy = TurnPolicy(smart_turn)
    first = telephone(engine.piper, "Tell Peter the meeting is at three.")
    second = telephone(engine.piper, "And bring the report.")
    pcm = np.concatenate((first, np.zeros(8000 * 2, np.int16), second))  # < the window
    exchange = await converse(
        engine, pcm, silence_ms=WINDOW_MS, greet=False, whole=True, after_s=4.0
    )
    assert len(exchange.of_type("input_audio_buffer.speech_started")) == 2
    assert len(exchange.of_type("input_audio_buffer.committed")) == 2
    texts = [
        e["transcript"].lower()
        for e in exchange.of_type("conversation.item.input_audio_transcription.completed")
    ]
    assert "three" in texts[0] or "3" in texts[0], texts  # Whisper writes "at 3."
    assert "report" in texts[1], texts


async def test_the_transcript_comes_from_the_pass_started_at_the_pause(
    engine: EngineServer, smart_turn: SmartTurn
) -> None:
    """Recognition at the pause: the complete sentence's transcript is the pass started before
    Smart Turn's verdict, and no more than one pause pass and the final pass ran at once."""
    engine.engine.turn_policy = TurnPolicy(smart_turn)
    counted = engine.engine.stt._model
    assert isinstance(counted, Counted)
    counted.most = 0
    before = len(engine.engine.turns)
    pcm = telephone(engine.piper, "Please call me back tomorrow morning.")
    exchange = await converse(engine, pcm, silence_ms=WINDOW_MS, greet=False)
    assert exchange.reply_ms < EARLY_MS, exchange.reply_ms
    (turn,) = list(engine.engine.turns)[before:]
    assert turn["smart_turn_end"] == 1.0, turn
    assert turn["stt_from_pause_pass"] == 1.0, turn
    assert turn["stt_pass_lead_ms"] > 0, turn
    assert 1 <= counted.most <= 2, counted.most


async def test_a_clear_at_the_pause_voids_the_pass_of_the_cleared_audio(
    engine: EngineServer, smart_turn: SmartTurn
) -> None:
    """The client clears the buffer 160 ms after the caller's last word (a pass of it is
    running already): the cleared words are never committed as a transcript."""
    engine.engine.turn_policy = TurnPolicy(smart_turn)
    pcm = telephone(engine.piper, "I would like to move my appointment to Friday.")
    exchange = await converse(
        engine,
        pcm,
        silence_ms=1000,
        greet=False,
        whole=True,
        after_s=2.5,
        after_voice={8: {"type": "input_audio_buffer.clear"}},
    )
    assert exchange.of_type("input_audio_buffer.cleared")
    texts = [
        e["transcript"].lower()
        for e in exchange.of_type("conversation.item.input_audio_transcription.completed")
    ]
    assert not any("friday" in t or "appointment" in t for t in texts), texts
    assert not exchange.of_type("conversation.item.input_audio_transcription.failed")


async def test_a_clear_sent_as_the_turn_ends_does_not_empty_the_ended_turn(
    engine: EngineServer,
) -> None:
    """The turn's audio is taken as it ends: a clear the client sends while the engine is
    still announcing ``speech_stopped`` empties the next item's buffer, not the ended one."""
    events: list[dict[str, Any]] = []

    async def send(event: dict[str, Any]) -> None:
        events.append(event)
        if event["type"] == "input_audio_buffer.speech_stopped":
            await session.handle(json.dumps({"type": "input_audio_buffer.clear"}))

    session = EngineSession(send, engine.engine.tts, engine.engine.stt, Receptionist())
    detection = {"type": "server_vad", "silence_duration_ms": 500, "create_response": False}
    update = {"type": "realtime", "audio": {"input": {"turn_detection": detection}}}
    await session.handle(json.dumps({"type": "session.update", "session": update}))
    pcm = telephone(engine.piper, "Please call me back tomorrow morning.")
    audio = g711.ulaw_encode(np.concatenate((pcm, np.zeros(8000, np.int16)))).tobytes()
    for i in range(0, len(audio), CHUNK):
        chunk = base64.b64encode(audio[i : i + CHUNK]).decode()
        await session.handle(json.dumps({"type": "input_audio_buffer.append", "audio": chunk}))
    deadline = time.monotonic() + 30
    kind = "conversation.item.input_audio_transcription.completed"
    while not any(e["type"] == kind for e in events):
        assert time.monotonic() < deadline, [e["type"] for e in events]
        await asyncio.sleep(0.05)
    await session.close()
    (done,) = [e for e in events if e["type"] == kind]
    assert "tomorrow" in done["transcript"].lower(), done
    assert done["usage"]["seconds"] > 1.5, done
