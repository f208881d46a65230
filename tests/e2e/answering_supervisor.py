"""The real supervisor, with an inbound policy that answers every call and plays silence.

Run as a script by the e2e tests that need calls up inside the daemon process without a
realtime model behind them.
"""

from __future__ import annotations

import asyncio
import sys

from config import load_settings
from daemon.legs.leg import CallLeg
from daemon.logs import configure_logging, get_logger
from daemon.supervisor import Supervisor

log = get_logger("answering")


async def answer(leg: CallLeg) -> None:
    await leg.answer()
    log.info("test.answered", call_id=leg.info.key)


def main() -> int:
    loaded = load_settings(None)
    configure_logging(loaded.settings.log.level, loaded.settings.log.format)
    policy = "tests.e2e.answering_supervisor:answer"
    return asyncio.run(Supervisor(loaded, inbound_policy=policy).run())


if __name__ == "__main__":
    sys.exit(main())
