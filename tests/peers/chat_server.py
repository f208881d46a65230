"""A real HTTP server on loopback with an OpenAI-compatible streaming ``/v1/chat/completions``.

Every request gets ``reply`` back as server-sent events, a few words per chunk, in the
Chat Completions streaming shape; requests are kept for the test to inspect.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route


class ChatServer:
    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.requests: list[dict[str, Any]] = []
        app = Starlette(routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the chat server did not start"
            time.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def _complete(self, request: Request) -> StreamingResponse:
        body = await request.json()
        self.requests.append(body)
        words = self.reply.split(" ")

        async def events() -> AsyncIterator[str]:
            for start in range(0, len(words), 3):
                piece = " ".join(words[start : start + 3]) + " "
                chunk = {
                    "id": "chatcmpl-1",
                    "object": "chat.completion.chunk",
                    "model": body.get("model"),
                    "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
                }
                yield f"data: {json.dumps(chunk)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
