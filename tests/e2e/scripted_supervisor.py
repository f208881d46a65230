"""The real supervisor with a scripted outbound runner (no SIP, no speech).

``SIPAI_TEST_RUNNER=instant`` finishes every call at once as completed; ``hold`` keeps each
call answered until the process dies. Each started call id is appended to
``$SIPAI_TEST_STARTED`` so tests can see what was dialled.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from config import load_settings
from daemon.logs import configure_logging
from daemon.outbound import CallResult, Report
from daemon.supervisor import Supervisor


class Runner:
    def __init__(self, mode: str, started: Path) -> None:
        self.mode = mode
        self.started = started

    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        with self.started.open("a") as out:
            out.write(call_id + "\n")
        await report("ringing")
        await report("answered")
        if self.mode == "hold":
            await asyncio.Event().wait()
        return CallResult("completed", duration_seconds=1.0, message_played=True)


def main() -> int:
    loaded = load_settings(None)
    configure_logging(loaded.settings.log.level, loaded.settings.log.format)
    runner = Runner(os.environ["SIPAI_TEST_RUNNER"], Path(os.environ["SIPAI_TEST_STARTED"]))
    return asyncio.run(Supervisor(loaded, runner=runner).run())


if __name__ == "__main__":
    sys.exit(main())
