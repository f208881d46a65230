"""Web workers: processes holding browser calls over WebRTC, apart from the SIP workers.

A web worker is numbered ``WEB_WORKER_BASE + i`` in call records and logs, so its calls never
share a worker number with a SIP worker's.
"""

from __future__ import annotations

WEB_WORKER_BASE = 1000
