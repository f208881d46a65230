"""The ``/v1/realtime`` WebSocket endpoint on the daemon's API (Starlette).

The API's route checks the bearer token before a connection reaches :meth:`Engine.serve`.
The GA protocol by default; beta when the client sends ``OpenAI-Beta: realtime=v1``. Each connection
gets its own session and brain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from daemon.engine.brains import Brain
from daemon.engine.session import EngineSession
from daemon.engine.turns import TurnPolicy
from daemon.logs import get_logger
from daemon.realtime.dialect import DIALECTS
from daemon.speech import SpeechToText, TextToSpeech

log = get_logger(__name__)

# For one connection: its brain, given who asked (the X-Sipai-Call header, if any).
BrainFactory = Callable[[str], Brain]


@dataclass
class Engine:
    tts: TextToSpeech
    stt: SpeechToText
    brain: BrainFactory
    # The latest caller turns' timings (turn end -> first audio, Whisper, first sentence).
    turns: deque[dict[str, float]] = field(default_factory=lambda: deque(maxlen=1000))
    # A session's failure for the call's record: (who asked: X-Sipai-Call, the error).
    on_error: Callable[[str, str], None] | None = None
    # How a caller's turn ends (``[engine] end_of_turn``): the silence window by default.
    turn_policy: TurnPolicy = field(default_factory=TurnPolicy)

    async def serve(self, websocket: WebSocket) -> None:
        beta = "realtime=v1" in websocket.headers.get("openai-beta", "")
        dialect = DIALECTS["beta" if beta else "ga"]
        await websocket.accept()
        caller = websocket.headers.get("x-sipai-call", "")

        gone = False  # the client went away: what is still sent goes nowhere

        async def send(event: dict[str, Any]) -> None:
            nonlocal gone
            if gone:
                return
            try:
                await websocket.send_text(json.dumps(event, separators=(",", ":")))
            except WebSocketDisconnect:
                gone = True  # the receive loop gets the disconnect too and ends the session
                return
            # Let a lost connection be noticed before the next write: without this pause a
            # response streams on into the dead socket and asyncio warns of every write.
            await asyncio.sleep(0)

        session = EngineSession(
            send, self.tts, self.stt, self.brain(caller), dialect, turns=self.turn_policy
        )
        session.on_turn = self.turns.append
        on_error = self.on_error
        if on_error is not None:
            session.on_error = lambda error: on_error(caller, error)
        log.info(
            "engine.session_open", session=session.id, dialect=dialect.name, call=caller or None
        )
        try:
            await session.start()
            while True:
                await session.handle(await websocket.receive_text())
        except WebSocketDisconnect as exc:  # the client went away: an event, not an error
            log.info("engine.client_disconnected", session=session.id, code=exc.code)
        except RuntimeError:
            pass  # a receive after the close
        finally:
            await session.close()
            if websocket.client_state is WebSocketState.CONNECTED:
                # The client may vanish during the close too: that is the same disconnect.
                with contextlib.suppress(RuntimeError, WebSocketDisconnect):
                    await websocket.close()
            log.info("engine.session_closed", session=session.id)


EngineHandler = Callable[[WebSocket], Awaitable[None]]
