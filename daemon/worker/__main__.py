"""``python -m daemon.worker --socket PATH --index N``: one SIP worker process."""

from __future__ import annotations

import sys

from daemon.process_main import main
from daemon.worker.process import WorkerProcess

if __name__ == "__main__":
    sys.exit(main("sipai-worker", WorkerProcess))
