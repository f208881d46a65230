"""The asyncio side of the test phone: start the process, send commands, await events."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from tests.peers.kamailio import Kamailio, password
from tests.support.paths import phone_rtp_base


class TestPhone:
    __test__ = False  # not a test class

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self._process = process
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._consumed: set[int] = set()  # indices of events already returned by find
        self._changed = asyncio.Condition()
        self._seq = 0
        self._reader = asyncio.create_task(self._read(), name=f"phone-{name}")

    @classmethod
    async def start(
        cls,
        name: str = "phone",
        short_jitter_buffer: bool = False,
        sdp_port_offset: int = 0,
        vad: bool = True,
    ) -> TestPhone:
        """``sdp_port_offset``: offer an RTP port that much above the one it sends from;
        ``vad=False``: send every frame, silence included (no silence suppression)."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.peers.phone_process",
            "--rtp-port",
            str(phone_rtp_base()),
            *(["--short-jitter-buffer"] if short_jitter_buffer else []),
            *(["--sdp-port-offset", str(sdp_port_offset)] if sdp_port_offset else []),
            *([] if vad else ["--no-vad"]),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parents[2],
        )
        phone = cls(process, name)
        await phone.expect("ready", timeout=20)
        return phone

    async def _read(self) -> None:
        assert self._process.stdout is not None
        async for line in self._process.stdout:
            event = json.loads(line)
            event["at"] = time.monotonic()  # arrival here, comparable with worker events
            async with self._changed:
                self.events.append(event)
                self._changed.notify_all()

    async def command(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send a command and return its "ok" reply (raise on "error")."""
        self._seq += 1
        seq = self._seq
        assert self._process.stdin is not None
        self._process.stdin.write((json.dumps({"cmd": cmd, "seq": seq, **fields}) + "\n").encode())
        await self._process.stdin.drain()
        reply = await self.find(lambda e: e.get("seq") == seq, timeout=10, anywhere=True)
        if reply["event"] == "error":
            raise RuntimeError(f"{self.name}: {cmd} failed: {reply['error']}")
        return reply

    async def find(
        self, match: Any, timeout: float = 10.0, anywhere: bool = False
    ) -> dict[str, Any]:
        """The oldest event not yet returned for which ``match(event)`` is true.

        With ``anywhere`` the event is looked for among all of them and not marked as returned.
        """
        async with asyncio.timeout(timeout):
            async with self._changed:
                while True:
                    for index, event in enumerate(self.events):
                        if (anywhere or index not in self._consumed) and match(event):
                            if not anywhere:
                                self._consumed.add(index)
                            return event
                    await self._changed.wait()

    async def expect(self, event: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Wait for an event of kind ``event`` whose fields include ``fields``."""
        try:
            return await self.find(
                lambda e: e["event"] == event and all(e.get(k) == v for k, v in fields.items()),
                timeout,
            )
        except TimeoutError:
            raise AssertionError(
                f"{self.name}: no {event} {fields} within {timeout} s; events: {self.events}"
            ) from None

    async def register(self, kamailio: Kamailio, user: str) -> None:
        await self.command("register", user=user, password=password(user), registrar=kamailio.uri)
        await self.expect("reg", code=200)

    async def kill(self) -> None:
        """SIGKILL the phone, as a power cut would: it un-registers nothing."""
        self._process.kill()
        await self._process.wait()
        self._reader.cancel()

    async def close(self) -> None:
        if self._process.returncode is None:
            try:
                await self.command("quit")
                await asyncio.wait_for(self._process.wait(), 10)
            except (TimeoutError, RuntimeError, ConnectionError):
                self._process.kill()
                await self._process.wait()
        self._reader.cancel()
