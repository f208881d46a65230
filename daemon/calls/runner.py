"""The supervisor's side of an outbound call: speech prepared here, the call run in a worker.

:class:`PoolRunner` is the ``CallRunner`` behind ``POST /call``. It synthesises the message,
the prompt and the closing line before dialling (cached, so repeated messages cost nothing and
the callee hears the message as soon as the call is answered), waits for a free call slot,
and asks the least loaded SIP worker to carry out the call (``outbound`` request). The worker
transcribes through the supervisor's speech models (``transcribe`` requests), reports
``ringing``/``answered`` as events, and answers with the result.
"""

from __future__ import annotations

import asyncio
from typing import Any

from daemon.ipc.connection import IpcClosed, IpcError
from daemon.ipc.messages import Outbound
from daemon.logs import get_logger
from daemon.outbound import CallResult, Report
from daemon.speech import TextToSpeech
from daemon.workers import WorkerPool

log = get_logger(__name__)

CLOSING = "Thank you. Goodbye."
MARGIN_SECONDS = 60.0


class PoolRunner:
    def __init__(self, pool: WorkerPool, tts: TextToSpeech) -> None:
        self._pool = pool
        self._tts = tts
        self._reports: dict[str, Report] = {}
        self._tasks: set[asyncio.Future[None]] = set()
        pool.status_listeners.append(self._status)

    def _status(self, call_id: str, status: str) -> None:
        report = self._reports.get(call_id)
        if report is not None:
            task = asyncio.ensure_future(report(status))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        rate = self._pool.settings.sip.clock_rate
        sounds = {"message": await self._tts.synthesize(request["message"], rate)}
        choice = request.get("choice")
        if choice:
            sounds["prompt"] = await self._tts.synthesize(choice["prompt"], rate)
            sounds["closing"] = await self._tts.synthesize(CLOSING, rate)
        index = await self._pool.reserve_slot()
        budget = float(request["ring_timeout"]) + sum(len(s) for s in sounds.values()) / rate
        if choice:
            rounds = int(choice["repeat_count"])
            budget += rounds * (float(choice["timeout_seconds"]) + 25.0)
        amd = self._pool.settings.amd
        if request.get("machine_detection"):
            budget += (amd.total_analysis_ms + amd.voicemail_wait_ms) / 1000
        self._reports[call_id] = report
        try:
            reply = await self._pool.request(
                index,
                Outbound(call_id=call_id, request=request, audio=sounds, amd=amd.model_dump()),
                within=budget + MARGIN_SECONDS,
            )
        except IpcClosed:
            return CallResult("failed", error=f"SIP worker {index} died during the call")
        except (IpcError, TimeoutError) as exc:
            return CallResult("failed", error=f"SIP worker {index}: {exc}")
        finally:
            self._reports.pop(call_id, None)
            self._pool.release_slot(index)
        return CallResult(**reply.result)
