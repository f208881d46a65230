"""The longest outbound message whose audio crosses a SIP worker's IPC socket intact.

Synthesises messages with the daemon's own Piper voice at the call rate, sends each as the
supervisor's ``outbound`` request does (message audio as a ``Pcm16`` field of the request)
over a real Unix socket between two :class:`daemon.ipc.connection.Connection` ends, and checks
on the far end that the samples and their SHA-256 match. Bisects on the message length, from
100 characters up to the API's limit of 5,000, and prints JSON: the longest length that
crossed and the shortest that did not (null when 5,000 crossed).

Run: .venv/bin/python -m bench.message_length [--rate 8000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import socket
import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.report import emit
from daemon.ipc.connection import Connection, IpcError
from daemon.ipc.messages import Outbound, OutboundReply
from daemon.speech import TextToSpeech
from daemon.speech.local import PiperSynthesizer

API_LIMIT = 5000
SENTENCES = (
    "Hello, this is the clinic calling with the details of your visit next week.",
    "Please arrive fifteen minutes early and bring your insurance card and a photo ID.",
    "The parking garage on Maple Street is free for patients for the first two hours.",
    "If you take any medicine every day, bring the list of names and doses with you.",
)


def message(characters: int) -> str:
    text = ""
    for sentence in itertools.cycle(SENTENCES):
        if len(text) >= characters:
            return (text[: characters - 1].rstrip() + ".").ljust(characters)
        text += sentence + " "
    raise AssertionError("unreachable")


def digest(samples: NDArray[np.int16]) -> str:
    return hashlib.sha256(samples.astype("<i2").tobytes()).hexdigest()


async def crosses(supervisor: Connection, samples: NDArray[np.int16], characters: int) -> bool:
    request = Outbound(
        call_id="bench",
        request={"message": message(characters), "extension": "1001", "ring_timeout": 30},
        audio={"message": samples},
    )
    try:
        reply = await supervisor.request(request, within=60)
    except (ValueError, IpcError, TimeoutError) as exc:  # a refused frame is a ValueError
        print(f"{characters} characters: {exc}", file=sys.stderr)
        return False
    return reply.result == {"samples": len(samples), "sha256": digest(samples)}


async def run(rate: int) -> dict[str, Any]:
    piper = await asyncio.to_thread(PiperSynthesizer)
    tts = TextToSpeech(piper, piper.name)

    async def worker_side(request: Outbound) -> OutboundReply:
        pcm = request.audio["message"]
        return OutboundReply(result={"samples": len(pcm), "sha256": digest(pcm)})

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    supervisor = Connection(*await asyncio.open_unix_connection(sock=left), "worker-0")
    worker = Connection(
        *await asyncio.open_unix_connection(sock=right), "supervisor", {Outbound: worker_side}
    )
    readers = [asyncio.ensure_future(c.run()) for c in (supervisor, worker)]
    try:

        async def ok(characters: int) -> bool:
            samples = await tts.synthesize(message(characters), rate)
            return await crosses(supervisor, samples, characters)

        if await ok(API_LIMIT):
            return _report(rate, API_LIMIT, None)
        low, high = 100, API_LIMIT
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if await ok(middle) else (low, middle)
        return _report(rate, low, high)
    finally:
        await supervisor.aclose()
        await worker.aclose()
        for reader in readers:
            reader.cancel()


def _report(rate: int, longest: int, first_failing: int | None) -> dict[str, Any]:
    return {
        "benchmark": "message_length",
        "rate": rate,
        "longest_ok_chars": longest,
        "first_failing_chars": first_failing,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=int, default=8000, choices=(8000, 16000))
    args = parser.parse_args()
    return emit(lambda: asyncio.run(run(args.rate)))


if __name__ == "__main__":
    sys.exit(main())
