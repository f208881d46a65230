"""The store and the webhook deliverer alone, in their own process, until killed.

Used by the durability test: ``python -m tests.integration.deliverer_process DB SECRET``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from api.webhooks import Deliverer
from daemon.store import Store


async def main(path: str, secret: str) -> None:
    store = Store(Path(path))
    await store.open()
    deliverer = Deliverer(store, secret, timeout=2.0, waits=(0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3))
    deliverer.start()
    print("running", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
