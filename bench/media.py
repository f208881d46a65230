"""Media core benchmark: per-frame cost, filter quality, delay and held-back audio per rate pair.

Prints one JSON object. The chain measured is what a call with a 24 kHz PCM model does every
20 ms: decode 160 mu-law bytes, resample 8k -> 24k (uplink), resample 24k -> 8k (downlink),
encode 160 mu-law bytes. "ours" is media.g711 + media.resample (the polyphase FIR on numpy);
the reference runs the same chain with CPython's audioop for G.711 and soxr's int16 streams
(HQ). Per rate pair, ours is compared with soxr's HQ stream in float32 rounded once to int16
(soxr's int16 path dithers inside): cost per 20 ms frame, stop-band and pass-band deviation from
a sine sweep in 20 ms frames, group delay, and the output held back while fed 20 ms frames
(at most and on average); "latency" is the two added. Pairs with 22.05 kHz (speech synthesis
output, resampled whole) also time a whole 3 s buffer against soxr's one-shot resample (HQ, VHQ).
Ratios (ours / soxr) carry across machines; the absolute figures are for this one core.

Run: .venv/bin/python bench/media.py   (needs the bench extra: pip install -e '.[bench]')
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # one core, as in a worker
# Run as a script, this file's directory comes first on sys.path and "media" would be this
# file rather than the package.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import numpy as np  # noqa: E402
import soxr  # noqa: E402

from media import g711  # noqa: E402
from media.resample import PASSBAND_EDGE, Resampler, design, resample  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAMES = 3000  # 60 s of audio per timing run
RUNS = 7
BUDGET_US = 50.0
AMPLITUDE = 30000.0
PAIRS = (
    (8000, 24000),
    (24000, 8000),
    (16000, 24000),
    (24000, 16000),
    (8000, 16000),
    (16000, 8000),
    (22050, 8000),
    (22050, 16000),
    (22050, 24000),
)

Stream = Callable[[np.ndarray], np.ndarray]


def _speech_like(seconds: float, rate: int = 8000) -> np.ndarray:
    """Band-limited noise with a syllable-rate envelope: a stand-in for speech levels."""
    rng = np.random.default_rng(1)
    n = int(seconds * rate)
    noise = rng.standard_normal(n)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(freqs < 100) | (freqs > 0.85 * rate / 2)] = 0
    shaped = np.fft.irfft(spectrum, n)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * np.arange(n) / rate)
    shaped *= envelope / np.max(np.abs(shaped)) * 20000
    return np.rint(shaped).astype(np.int16)


def _time_per_frame(step: Callable[[int], object], frames: int = FRAMES) -> dict[str, float]:
    runs = []
    for _ in range(RUNS):
        started = time.perf_counter_ns()
        for i in range(frames):
            step(i)
        runs.append((time.perf_counter_ns() - started) / frames / 1000)
    return {"median_us": round(statistics.median(runs), 2), "min_us": round(min(runs), 2)}


def _ours(rate_in: int, rate_out: int) -> Stream:
    return Resampler(rate_in, rate_out).process


def _soxr_float(rate_in: int, rate_out: int) -> Stream:
    """soxr's HQ stream in float32, rounded once to int16 (block-size independent)."""
    stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="float32", quality="HQ")

    def process(pcm: np.ndarray) -> np.ndarray:
        out = np.rint(stream.resample_chunk(pcm.astype(np.float32)))
        return np.clip(out, -32768, 32767).astype(np.int16)

    return process


def _soxr_int16(rate_in: int, rate_out: int) -> Stream:
    stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="int16", quality="HQ")
    return stream.resample_chunk  # type: ignore[no-any-return]


def _chains(ulaw_frames: list[bytes]) -> dict[str, dict[str, float]]:
    up, down = _ours(8000, 24000), _ours(24000, 8000)

    def ours(i: int) -> object:
        return g711.ulaw_encode(down(up(g711.ulaw_decode(ulaw_frames[i]))))

    fup, fdown = _soxr_float(8000, 24000), _soxr_float(24000, 8000)

    def soxr_float(i: int) -> object:
        return g711.ulaw_encode(fdown(fup(g711.ulaw_decode(ulaw_frames[i]))))

    sup, sdown = _soxr_int16(8000, 24000), _soxr_int16(24000, 8000)

    def reference(i: int) -> object:
        pcm = np.frombuffer(audioop.ulaw2lin(ulaw_frames[i], 2), dtype=np.int16)
        return audioop.lin2ulaw(sdown(sup(pcm)).tobytes(), 2)

    return {
        "ours": _time_per_frame(ours),
        "g711+soxr_float32_HQ": _time_per_frame(soxr_float),
        "audioop+soxr_int16_HQ": _time_per_frame(reference),
    }


def _framed(make: Callable[[], Stream], signal: np.ndarray, frame: int) -> np.ndarray:
    stream = make()
    return np.concatenate([stream(signal[i : i + frame]) for i in range(0, len(signal), frame)])


def _sweep(make: Callable[[], Stream], rate_in: int, rate_out: int) -> dict[str, float]:
    """Tones in 20 ms frames. Stop-band: the strongest image (going up: tones below the lower
    Nyquist frequency, images above it) or alias (going down: tones above it), worst tone;
    pass-band: worst level deviation up to PASSBAND_EDGE of it. A tone whose leak rounds to
    silence counts as one LSB in one sample (the attenuation is then at least that:
    "stopband_tones_silent" says how many did)."""
    nyquist, frame, up = min(rate_in, rate_out) / 2, rate_in // 50, rate_out > rate_in
    t = np.arange(rate_in // 2) / rate_in
    silent = 0

    def run(freq: float) -> np.ndarray:
        x = np.rint(AMPLITUDE * np.sin(2 * np.pi * freq * t)).astype(np.int16)
        return _framed(make, x, frame)[rate_out // 50 : -(rate_out // 50)].astype(np.float64)

    def leak_db(freq: float) -> float:
        nonlocal silent
        y = run(freq)
        window = np.hanning(len(y))
        spectrum = np.abs(np.fft.rfft(y * window)) ** 2
        # Going down, an alias can land anywhere; going up, the images are above Nyquist.
        band = spectrum[np.fft.rfftfreq(len(y), 1 / rate_out) >= (nyquist if up else 0)]
        peak = int(np.argmax(band))  # the strongest leak, with the bins its window spreads to
        power = (
            2 * float(band[max(0, peak - 3) : peak + 4].sum()) / len(y) / float(np.sum(window**2))
        )
        if power == 0:
            silent += 1
            power = 1 / len(y)
        return 10 * float(np.log10(power / (AMPLITUDE**2 / 2)))

    def level_db(freq: float) -> float:
        y = run(freq)
        window = np.hanning(len(y))
        n = np.arange(len(y)) / rate_out
        projection = np.sum(y * window * np.exp(-2j * np.pi * freq * n)) * 2 / np.sum(window)
        return 20 * float(np.log10(abs(projection) / AMPLITUDE))

    if up:
        tones = np.linspace(100, nyquist - 100, 60)
    else:
        tones = np.linspace(nyquist, rate_in / 2 - 100, 60)
    stop = max(leak_db(f) for f in tones)
    passband = max(abs(level_db(f)) for f in np.linspace(100, PASSBAND_EDGE * nyquist, 24))
    return {
        "stopband_db": round(-stop, 1),
        "stopband_tones_silent": silent,
        "passband_deviation_db": round(passband, 4),
    }


def _held_back(make: Callable[[], Stream], rate_in: int, rate_out: int) -> dict[str, float]:
    """Output a stream owes while fed 20 ms frames for 10 s (after the first second), in ms."""
    stream = make()
    rng = np.random.default_rng(2)
    produced, held = 0, []
    for i in range(500):
        produced += len(stream(rng.integers(-9000, 9000, rate_in // 50, np.int16)))
        held.append(((i + 1) * rate_out / 50 - produced) * 1000 / rate_out)
    return {"max_ms": round(max(held[50:]), 2), "mean_ms": round(statistics.mean(held[50:]), 2)}


def _pair(rate_in: int, rate_out: int) -> dict[str, object]:
    frame = rate_in // 50
    pcm = _speech_like(FRAMES * 0.02, rate_in)
    frames = [pcm[i * frame : (i + 1) * frame] for i in range(FRAMES // 3)]
    d = design(rate_in, rate_out)
    result: dict[str, object] = {}
    cost: dict[str, float] = {}
    makers: dict[str, Callable[[], Stream]] = {
        "ours": lambda: _ours(rate_in, rate_out),
        "soxr_HQ": lambda: _soxr_float(rate_in, rate_out),
    }
    for name, make in makers.items():
        stream = make()
        held = _held_back(make, rate_in, rate_out)
        delay_ms = Resampler(rate_in, rate_out).delay_seconds * 1000 if name == "ours" else 0.0
        per_frame = _time_per_frame(lambda i, s=stream: s(frames[i]), len(frames))
        cost[name] = per_frame["median_us"]
        result[name] = {
            "per_frame": per_frame,
            **_sweep(make, rate_in, rate_out),
            "group_delay_ms": round(delay_ms, 3),
            "held_back_ms": held,
            "latency_ms": {
                "max": round(delay_ms + held["max_ms"], 2),
                "mean": round(delay_ms + held["mean_ms"], 2),
            },
        }
    result["ours_designed"] = {
        "taps": d.length,
        "taps_per_phase": d.taps_per_phase,
        "stopband_db": round(d.stopband_db, 1),
        "passband_ripple_db": round(d.passband_ripple_db, 4),
    }
    result["ratio_cost_ours_over_soxr"] = round(cost["ours"] / cost["soxr_HQ"], 2)
    if 22050 in (rate_in, rate_out):
        result["whole_3s_ms"] = _whole(pcm[: 3 * rate_in], rate_in, rate_out)
    return result


def _whole(pcm: np.ndarray, rate_in: int, rate_out: int) -> dict[str, float]:
    """A whole buffer at once (speech synthesis output), median ms of 7 runs."""
    floats = pcm.astype(np.float32)
    ways: dict[str, Callable[[], object]] = {
        "ours": lambda: resample(pcm, rate_in, rate_out),
        "soxr_HQ": lambda: soxr.resample(floats, rate_in, rate_out, quality="HQ"),
        "soxr_VHQ": lambda: soxr.resample(floats, rate_in, rate_out, quality="VHQ"),
    }
    timings = {}
    for name, way in ways.items():
        runs = []
        for _ in range(RUNS):
            started = time.perf_counter_ns()
            way()
            runs.append((time.perf_counter_ns() - started) / 1e6)
        timings[name] = round(statistics.median(runs), 2)
    return timings


def main() -> int:
    pcm = _speech_like(FRAMES * 0.02)
    pcm_frames = [pcm[i * 160 : (i + 1) * 160] for i in range(FRAMES)]
    ulaw_frames = [g711.ulaw_encode(f).tobytes() for f in pcm_frames]

    chains = _chains(ulaw_frames)
    ours = chains["ours"]["median_us"]
    report = {
        "benchmark": "media_core",
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
        "frame": "20 ms, 8 kHz call side, 24 kHz model side",
        "chain_per_frame": chains,
        "chain_budget_us": BUDGET_US,
        "chain_within_budget": ours <= BUDGET_US,
        "chain_x_realtime": round(20000 / ours, 1),
        "ratio_ours_over_audioop_soxr_int16": round(
            ours / chains["audioop+soxr_int16_HQ"]["median_us"], 2
        ),
        "ratio_ours_over_g711_soxr_float32": round(
            ours / chains["g711+soxr_float32_HQ"]["median_us"], 2
        ),
        "pairs": {f"{a / 1000:g}k_{b / 1000:g}k": _pair(a, b) for a, b in PAIRS},
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
