"""``python -m daemon.web --socket PATH --index N``: one web worker process."""

from __future__ import annotations

import sys

from daemon.process_main import main
from daemon.web.process import WebWorkerProcess

if __name__ == "__main__":
    sys.exit(main("sipai-web", WebWorkerProcess))
