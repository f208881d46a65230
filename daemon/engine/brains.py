"""What the embedded engine says: a brain turns the conversation into reply text and calls.

:class:`Receptionist` needs no model: it greets, takes a message, reads it back, asks for
confirmation, says goodbye and calls ``end_call``. The confirmed message is handed to
``on_message``. :class:`ChatBrain` asks any OpenAI-compatible Chat Completions server
(streaming), passing the session's tools through as function tools.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from daemon.calls.choice import ChoiceMatcher, Option


@dataclass
class BrainCall:
    """A function call the brain makes (``arguments`` is JSON text)."""

    name: str
    arguments: str = "{}"


@dataclass
class Turn:
    """One item of the conversation as the engine keeps it."""

    item_id: str
    role: str  # user | assistant | tool
    text: str
    call_id: str = ""
    call: BrainCall | None = None
    spoken_ms: int = 0


class Brain(Protocol):
    def reply(
        self,
        conversation: list[Turn],
        instructions: str,
        response_instructions: str,
        tools: list[dict[str, Any]],
    ) -> AsyncIterator[str | BrainCall]: ...


GREETING = (
    "Hello, thank you for calling. Nobody can take your call right now. "
    "Please leave your message after this, and I will pass it on."
)
YES_NO = ChoiceMatcher(
    [
        Option("yes", ("yeah", "yep", "correct", "right", "that's right", "sure", "okay")),
        Option("no", ("nope", "wrong", "not right", "incorrect")),
    ]
)


class Receptionist:
    """Greets, takes a message, reads it back, confirms, says goodbye and ends the call."""

    def __init__(
        self,
        greeting: str = GREETING,
        on_message: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.greeting = greeting
        self.on_message = on_message
        self.state = "greet"
        self.message = ""
        self.unclear = 0

    async def reply(
        self,
        conversation: list[Turn],
        instructions: str,
        response_instructions: str,
        tools: list[dict[str, Any]],
    ) -> AsyncIterator[str | BrainCall]:
        heard = next((t.text for t in reversed(conversation) if t.role == "user"), "")
        if self.state == "greet":
            self.state = "message"
            yield self.greeting
            return
        if self.state == "message":
            if not heard.strip():
                yield "Sorry, I did not catch that. Please say your message."
                return
            self.message = heard.strip()
            self.state = "confirm"
            # A short first sentence: it is synthesised and on its way while the rest is made.
            yield f"Thank you. I have noted: {self.message} Is that right?"
            return
        if self.state == "confirm":
            match = YES_NO.match(heard)
            if match is not None and match.value == "no":
                self.state = "message"
                yield "Sorry. Please say your message again."
                return
            if match is None and self.unclear < 1:
                self.unclear += 1
                yield "Please say yes or no. Is the message right?"
                return
            self.state = "done"
            if self.on_message is not None:
                await self.on_message(self.message)
            yield "Thank you, I will pass on your message. Goodbye."
            yield BrainCall("end_call", json.dumps({}))
            return
        yield "Goodbye."
        yield BrainCall("end_call")


class BrainError(Exception):
    """The chat server could not give a reply."""


class ChatBrain:
    """Replies from an OpenAI-compatible ``/chat/completions`` endpoint, streamed."""

    def __init__(self, url: str, model: str, api_key: str = "", timeout: float = 30.0) -> None:
        self.url = f"{url}/chat/completions"
        self.model = model
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout

    def messages(
        self, conversation: list[Turn], instructions: str, response_instructions: str
    ) -> list[dict[str, Any]]:
        system = "\n\n".join(p for p in (instructions, response_instructions) if p)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        for turn in conversation:
            if turn.role == "tool":
                messages.append(
                    {"role": "tool", "tool_call_id": turn.call_id, "content": turn.text}
                )
            elif turn.call is not None:
                function = {"name": turn.call.name, "arguments": turn.call.arguments}
                messages.append(
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {"id": turn.call_id, "type": "function", "function": function}
                        ],
                    }
                )
            elif turn.text:
                role = "assistant" if turn.role == "assistant" else "user"
                messages.append({"role": role, "content": turn.text})
        return messages

    async def reply(
        self,
        conversation: list[Turn],
        instructions: str,
        response_instructions: str,
        tools: list[dict[str, Any]],
    ) -> AsyncIterator[str | BrainCall]:
        body: dict[str, Any] = {
            "model": self.model,
            "stream": True,
            "messages": self.messages(conversation, instructions, response_instructions),
        }
        functions = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": t.get("parameters") or {"type": "object", "properties": {}},
                },
            }
            for t in tools
            if t.get("type", "function") == "function" and t.get("name")
        ]
        if functions:
            body["tools"] = functions
        calls: dict[int, dict[str, str]] = {}
        async with (
            httpx.AsyncClient(timeout=self.timeout) as client,
            client.stream("POST", self.url, json=body, headers=self.headers) as response,
        ):
            if not response.is_success:
                detail = (await response.aread()).decode(errors="replace")[:300]
                raise BrainError(f"{self.url}: HTTP {response.status_code}: {detail}")
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or {}
                    if delta.get("content"):
                        yield str(delta["content"])
                    for call in delta.get("tool_calls") or []:
                        slot = calls.setdefault(int(call.get("index", 0)), {"name": "", "args": ""})
                        function = call.get("function") or {}
                        slot["name"] += function.get("name") or ""
                        slot["args"] += function.get("arguments") or ""
        for slot in calls.values():
            yield BrainCall(slot["name"], slot["args"] or "{}")
