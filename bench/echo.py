"""Echo guard benchmark: what one barge-in decision costs, and its verdicts on a set of lines.

Prints one JSON object. The set: Piper speech played through a real PlayoutBuffer on a 20 ms
clock, and what came back through mu-law both ways (tests/support/echo_line.py): echo alone
at 20-400 ms and -6..-30 dB (it should be echo wherever the agent's speech sounds in it), and
the same with another sentence spoken at normal level over it (it should be the caller
wherever that voice is at least as loud as the echo). Windows of 300 ms every 100 ms, as the
first judgement of a barge-in sees them. "line_noise": echo at -10 dB after 100 ms with white
noise on the line, judged every 40 ms (how many windows are taken for the caller: should be
none), and a voice over it (judged the caller). "cost" times :meth:`EchoDetector.judge` per
call over 160 (each uplink batch's, and each re-check), 300 (the first judgement at the
default guard) and 1000 ms windows (the longest), on this machine's one core.

Run: .venv/bin/python -m bench.echo
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, as in a worker

import numpy as np
from numpy.typing import NDArray

from media.echo import EchoDetector, EchoVerdict
from media.playout import PlayoutBuffer
from tests.support.echo_line import (
    AGENT_LINES,
    CALLER_LINES,
    RATE,
    echo,
    sentence,
    through_line,
)

FRAME = RATE // 50
DELAYS_MS = (20, 50, 100, 200, 300, 400)
GAINS_DB = (-6, -10, -20, -30)
WINDOW_MS = 300
NOISES_DBFS = (-60, -50, -45)
COST_WINDOWS_MS = (160, 300, 1000)


def _run(
    agent: NDArray[np.int16], uplink: NDArray[np.int16], judge_every: int
) -> tuple[list[EchoVerdict], EchoDetector, PlayoutBuffer]:
    now = [0.0]
    playout = PlayoutBuffer(rate=RATE, clock=lambda: now[0])
    playout.push("agent", agent)
    playout.end_item("agent")
    detector = EchoDetector(RATE)
    verdicts = []
    for index in range(len(uplink) // FRAME):
        now[0] += 0.02
        playout.pull()
        detector.heard(now[0], uplink[index * FRAME : (index + 1) * FRAME].tobytes())
        first = WINDOW_MS // 20
        if index + 1 >= first and (index + 1 - first) % judge_every == 0:
            verdicts.append(detector.judge(playout, WINDOW_MS))
    return verdicts, detector, playout


def _rms(signal: NDArray[np.float64], count: int) -> list[float]:
    window, step = WINDOW_MS * RATE // 1000, 100 * RATE // 1000
    parts = [signal[i * step : i * step + window] for i in range(count)]
    return [float(np.sqrt(np.mean(p * p))) for p in parts]


def main() -> None:
    agent = np.concatenate([sentence(line) for line in AGENT_LINES[:2]])
    frames = len(agent) // FRAME + 25
    played = np.concatenate((agent, np.zeros(frames * FRAME - len(agent), dtype=np.int16)))
    voice = np.zeros(len(played))
    other = np.concatenate([sentence(line) for line in CALLER_LINES]).astype(np.float64)
    part = other[: len(played) - RATE // 2]
    voice[RATE // 2 : RATE // 2 + len(part)] = part
    echo_windows = echo_hits = speech_windows = speech_hits = 0
    noisy: dict[str, dict[str, int]] = {}
    for noise_dbfs in NOISES_DBFS:
        noise = np.random.default_rng(1).standard_normal(len(played)) * 32768
        noise *= 10 ** (noise_dbfs / 20)
        back = echo(played, 100, -10) + noise
        verdicts, _, _ = _run(agent, through_line(back), 2)  # every 40 ms, as re-checked
        caller = sum(not v.echo and v.reason != "silent" for v in verdicts)
        noisy[f"echo_alone_{noise_dbfs}dBFS"] = {"windows": len(verdicts), "judged_caller": caller}
        verdicts, _, _ = _run(agent, through_line(back + voice), 5)
        count = len(verdicts)
        windows = hits = 0
        for verdict, v_rms, e_rms in zip(
            verdicts, _rms(voice, count), _rms(back - noise, count), strict=True
        ):
            if v_rms > 600 and v_rms >= e_rms:
                windows += 1
                hits += not verdict.echo
        noisy[f"voice_over_echo_{noise_dbfs}dBFS"] = {"windows": windows, "judged_caller": hits}
    for delay in DELAYS_MS:
        for gain in GAINS_DB:
            back = echo(played, delay, gain)
            verdicts, _, _ = _run(agent, through_line(back), 5)
            for verdict, rms in zip(verdicts, _rms(back, len(verdicts)), strict=True):
                if rms > max(300 * 10 ** (gain / 20), 20):
                    echo_windows += 1
                    echo_hits += verdict.echo
            verdicts, _, _ = _run(agent, through_line(back + voice), 5)
            count = len(verdicts)
            for verdict, v_rms, e_rms in zip(
                verdicts, _rms(voice, count), _rms(back, count), strict=True
            ):
                if v_rms > 600 and v_rms >= e_rms:
                    speech_windows += 1
                    speech_hits += not verdict.echo
    mid_speech = through_line(echo(played, 100, -10))[: 3 * RATE]  # 3 s in, the agent talks
    _, detector, playout = _run(agent, mid_speech, 10**9)
    assert detector.judge(playout, 1000).reason == "echo"
    cost: dict[str, Any] = {}
    timings: dict[int, list[float]] = {window: [] for window in COST_WINDOWS_MS}
    for _ in range(200):
        for window in COST_WINDOWS_MS:  # in turn: the same window asked again is not judged
            started = time.perf_counter()
            detector.judge(playout, window)
            timings[window].append((time.perf_counter() - started) * 1000)
    for window, times in timings.items():
        times.sort()
        cost[f"{window}ms"] = {
            "median_ms": round(statistics.median(times), 3),
            "p95_ms": round(times[int(0.95 * len(times))], 3),
        }
    print(
        json.dumps(
            {
                "judge_cost": cost,
                "echo_alone": {
                    "windows": echo_windows,
                    "judged_echo": echo_hits,
                    "share": round(echo_hits / echo_windows, 4),
                },
                "voice_over_echo": {
                    "windows": speech_windows,
                    "judged_caller": speech_hits,
                    "share": round(speech_hits / speech_windows, 4),
                },
                "line_noise": noisy,
                "lines": {"delays_ms": DELAYS_MS, "gains_db": GAINS_DB, "window_ms": WINDOW_MS},
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
