"""The real supervisor with one extra component whose drain never finishes.

Run as a script by the lifecycle tests to exercise the drain bound and the second signal.
"""

from __future__ import annotations

import asyncio
import sys

from config import load_settings
from daemon.logs import configure_logging
from daemon.supervisor import Component, Supervisor


async def _never_drains() -> None:
    await asyncio.Event().wait()


async def _probe() -> None:
    return None


def main() -> int:
    loaded = load_settings(None)
    configure_logging(loaded.settings.log.level, loaded.settings.log.format)
    supervisor = Supervisor(loaded)
    supervisor.add_component(Component("stuck", drain=_never_drains, probe=_probe))
    return asyncio.run(supervisor.run())


if __name__ == "__main__":
    sys.exit(main())
