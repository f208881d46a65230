"""The supervisor's side of an outbound call: speech prepared here, the call run in a worker.

:class:`PoolRunner` is the ``CallRunner`` behind ``POST /call``. It synthesises the message,
the prompt and the closing line before dialling (cached, so repeated messages cost nothing and
the callee hears the message as soon as the call is answered), waits for a free call slot,
and asks the least loaded SIP worker to carry out the call (``outbound`` request). The worker
transcribes through the supervisor's speech models (``transcribe`` requests), reports
``ringing``/``answered`` as events, and answers with the result. When the outcome is known
before the call ends (an answer matched, a key pressed, the last round unmatched), the worker
sends it at once (``outbound_decided``) and it goes on as ``report("decided", result=...)``:
the result and its webhook are out while the callee still hears the closing words. The
closing line is synthesised without its trailing silence, so the call hangs up as its last
word ends.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from numpy.typing import NDArray

from daemon.ipc.connection import IpcClosed, IpcError
from daemon.ipc.messages import Outbound
from daemon.logs import get_logger
from daemon.outbound import DECIDED, CallResult, Report
from daemon.speech import TextToSpeech
from daemon.workers import WorkerPool

log = get_logger(__name__)

CLOSING = "Thank you. Goodbye."
MARGIN_SECONDS = 60.0
# The closing's tail: samples after the last one above -50 dBFS go, but for 60 ms (the decay
# of the last sound).
TAIL_LEVEL = 32767 * 10 ** (-50 / 20)
TAIL_KEEP_SECONDS = 0.060


def trim_tail(pcm: NDArray[np.int16], rate: int) -> NDArray[np.int16]:
    """``pcm`` without its trailing silence (kept whole if it is all silence)."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > TAIL_LEVEL)
    if loud.size == 0:
        return pcm
    return pcm[: min(len(pcm), int(loud[-1]) + 1 + round(TAIL_KEEP_SECONDS * rate))]


class PoolRunner:
    def __init__(self, pool: WorkerPool, tts: TextToSpeech) -> None:
        self._pool = pool
        self._tts = tts
        self._reports: dict[str, Report] = {}
        # Each call's reports in progress: the call's result waits for them (so a result
        # decided early is stored before the call's end is).
        self._tasks: dict[str, set[asyncio.Future[None]]] = {}
        pool.status_listeners.append(self._status)
        pool.decided_listeners.append(self._decided)

    def _status(self, call_id: str, status: str) -> None:
        self._forward(call_id, status)

    def _decided(self, call_id: str, result: dict[str, Any]) -> None:
        self._forward(call_id, DECIDED, result=result)

    def _forward(self, call_id: str, status: str, **columns: Any) -> None:
        report = self._reports.get(call_id)
        if report is not None:
            task = asyncio.ensure_future(report(status, **columns))
            tasks = self._tasks.setdefault(call_id, set())
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    async def run(self, call_id: str, request: dict[str, Any], report: Report) -> CallResult:
        rate = self._pool.settings.sip.clock_rate
        sounds = {"message": await self._tts.synthesize(request["message"], rate)}
        choice = request.get("choice")
        if choice:
            sounds["prompt"] = await self._tts.synthesize(choice["prompt"], rate)
            sounds["closing"] = trim_tail(await self._tts.synthesize(CLOSING, rate), rate)
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
            result = CallResult(**reply.result)
        except IpcClosed:
            result = CallResult("failed", error=f"SIP worker {index} died during the call")
        except (IpcError, TimeoutError) as exc:
            result = CallResult("failed", error=f"SIP worker {index}: {exc}")
        except Exception as exc:  # a malformed reply: failed, after the call's last reports
            log.error("call.reply_invalid", call_id=call_id, error=repr(exc))
            result = CallResult("failed", error=f"SIP worker {index}: invalid result: {exc}")
        finally:
            self._reports.pop(call_id, None)
            self._pool.release_slot(index)
            reports = self._tasks.pop(call_id, set())
        if reports:  # the call's last reports (its result decided early) are stored first
            await asyncio.wait(reports)
        return result
