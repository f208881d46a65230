"""What the embedded engine says: a brain turns the conversation into reply text and calls.

:class:`Receptionist` needs no model: it greets, takes a message, reads it back, asks for
confirmation, says goodbye and calls ``end_call``. The confirmed message is handed to
``on_message``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

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
        self, conversation: list[Turn], instructions: str, response_instructions: str
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
        self, conversation: list[Turn], instructions: str, response_instructions: str
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
            yield f"I have noted: {self.message} Is that right?"
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
