"""Media core benchmark: per-frame cost, filter quality and held-back audio of the chain.

Prints one JSON object. The chain measured is what a call with a 24 kHz PCM model does every
20 ms: decode 160 mu-law bytes, resample 8k -> 24k (uplink), resample 24k -> 8k (downlink),
encode 160 mu-law bytes. "ours" is media.g711 + media.resample (soxr in float32, rounded once
to int16) at the quality the product uses and at the other one soxr offers for this (HQ, VHQ);
the reference runs the same chain with CPython's audioop for G.711 and soxr's own int16
streams (which dither inside and are not block-size independent). Ratios (ours / reference)
carry across machines; the absolute figures are for this one core. Stop-band and pass-band
figures come from one sine sweep through each resampler's streaming interface in 20 ms frames;
"held back" is how much output a stream owes, at most and on average, while fed 20 ms frames.

Run: .venv/bin/python bench/media.py
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
from media.resample import QUALITY, Resampler  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAMES = 3000  # 60 s of audio per timing run
RUNS = 7
BUDGET_US = 50.0
QUALITIES = ("HQ", "VHQ")

Stream = Callable[[np.ndarray], np.ndarray]


def _speech_like(seconds: float, rate: int = 8000) -> np.ndarray:
    """Band-limited noise with a syllable-rate envelope: a stand-in for speech levels."""
    rng = np.random.default_rng(1)
    n = int(seconds * rate)
    noise = rng.standard_normal(n)
    spectrum = np.fft.rfft(noise)
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(freqs < 100) | (freqs > 3400)] = 0
    shaped = np.fft.irfft(spectrum, n)
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * np.arange(n) / rate)
    shaped *= envelope / np.max(np.abs(shaped)) * 20000
    return np.rint(shaped).astype(np.int16)


def _time_per_frame(step: Callable[[int], object]) -> dict[str, float]:
    runs = []
    for _ in range(RUNS):
        started = time.perf_counter_ns()
        for i in range(FRAMES):
            step(i)
        runs.append((time.perf_counter_ns() - started) / FRAMES / 1000)
    return {"median_us": round(statistics.median(runs), 2), "min_us": round(min(runs), 2)}


def _ours(rate_in: int, rate_out: int, quality: str) -> Stream:
    return Resampler(rate_in, rate_out, quality=quality).process


def _soxr_int16(rate_in: int, rate_out: int, quality: str) -> Stream:
    stream = soxr.ResampleStream(rate_in, rate_out, 1, dtype="int16", quality=quality)
    return stream.resample_chunk  # type: ignore[no-any-return]


def _chains(ulaw_frames: list[bytes]) -> dict[str, dict[str, float]]:
    results = {}
    for quality in QUALITIES:
        up, down = _ours(8000, 24000, quality), _ours(24000, 8000, quality)

        def ours(i: int, up: Stream = up, down: Stream = down) -> object:
            return g711.ulaw_encode(down(up(g711.ulaw_decode(ulaw_frames[i]))))

        results[f"ours_{quality}"] = _time_per_frame(ours)
    for quality in QUALITIES:
        sup, sdown = _soxr_int16(8000, 24000, quality), _soxr_int16(24000, 8000, quality)

        def reference(i: int, sup: Stream = sup, sdown: Stream = sdown) -> object:
            pcm = np.frombuffer(audioop.ulaw2lin(ulaw_frames[i], 2), dtype=np.int16)
            return audioop.lin2ulaw(sdown(sup(pcm)).tobytes(), 2)

        results[f"audioop+soxr_int16_{quality}"] = _time_per_frame(reference)
    return results


def _stages(ulaw_frames: list[bytes], pcm_frames: list[np.ndarray]) -> dict[str, dict[str, float]]:
    pcm_bytes = [p.tobytes() for p in pcm_frames]
    up = _ours(8000, 24000, QUALITY)
    pcm24 = [up(p) for p in pcm_frames]
    stages: dict[str, dict[str, float]] = {
        "ulaw_decode_ours": _time_per_frame(lambda i: g711.ulaw_decode(ulaw_frames[i])),
        "ulaw_decode_audioop": _time_per_frame(lambda i: audioop.ulaw2lin(ulaw_frames[i], 2)),
        "ulaw_encode_ours": _time_per_frame(lambda i: g711.ulaw_encode(pcm_frames[i])),
        "ulaw_encode_audioop": _time_per_frame(lambda i: audioop.lin2ulaw(pcm_bytes[i], 2)),
    }
    for quality in QUALITIES:
        r_up, r_down = _ours(8000, 24000, quality), _ours(24000, 8000, quality)
        stages[f"up_8k_24k_ours_{quality}"] = _time_per_frame(lambda i, s=r_up: s(pcm_frames[i]))
        stages[f"down_24k_8k_ours_{quality}"] = _time_per_frame(lambda i, s=r_down: s(pcm24[i]))
    return stages


def _sweep(make: Callable[[], Stream]) -> dict[str, float]:
    """24k -> 8k in 20 ms frames: worst stop-band leakage (4-11.9 kHz) and pass-band deviation
    (to 3.6 kHz). A tone whose output rounds to silence counts as one LSB in one sample (the
    attenuation is then at least that: "stopband_tones_silent" says how many did)."""
    rate_in, amplitude = 24000, 30000.0
    silent = 0

    def level(freq: float) -> float:
        nonlocal silent
        t = np.arange(rate_in) / rate_in
        x = np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)
        stream = make()
        y = np.concatenate([stream(x[i : i + 480]) for i in range(0, len(x), 480)])[400:-400]
        rms = np.sqrt(np.mean(y.astype(np.float64) ** 2))
        if rms == 0:
            silent += 1
            rms = np.sqrt(1 / len(y))
        return 20 * float(np.log10(rms / (amplitude / np.sqrt(2))))

    stop = max(level(f) for f in np.linspace(4000, 11900, 80))
    stop_silent, silent = silent, 0
    passband = [level(f) for f in np.linspace(100, 3600, 36)]
    return {
        "stopband_attenuation_db": round(-stop, 1),
        "stopband_tones_silent": stop_silent,
        "passband_deviation_db": round(max(abs(v) for v in passband), 3),
    }


def _held_back(rate_in: int, rate_out: int, quality: str) -> dict[str, float]:
    """Output a stream owes while fed 20 ms frames for 10 s (after the first second), in ms."""
    resampler = Resampler(rate_in, rate_out, quality=quality)
    rng = np.random.default_rng(2)
    produced, held = 0, []
    for i in range(500):
        produced += len(resampler.process(rng.integers(-9000, 9000, rate_in // 50, np.int16)))
        held.append(((i + 1) * rate_out // 50 - produced) * 1000 / rate_out)
    return {"max_ms": round(max(held[50:]), 1), "mean_ms": round(statistics.mean(held[50:]), 1)}


def main() -> int:
    pcm = _speech_like(FRAMES * 0.02)
    pcm_frames = [pcm[i * 160 : (i + 1) * 160] for i in range(FRAMES)]
    ulaw_frames = [g711.ulaw_encode(f).tobytes() for f in pcm_frames]

    chains = _chains(ulaw_frames)
    ours = chains[f"ours_{QUALITY}"]["median_us"]
    reference = chains[f"audioop+soxr_int16_{QUALITY}"]["median_us"]
    sweeps = {f"ours_{q}": _sweep(lambda q=q: _ours(24000, 8000, q)) for q in QUALITIES}
    for quality in QUALITIES:
        sweeps[f"soxr_int16_{quality}"] = _sweep(lambda q=quality: _soxr_int16(24000, 8000, q))
    report = {
        "benchmark": "media_core",
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
        "frame": "20 ms, 8 kHz call side, 24 kHz model side",
        "quality": QUALITY,
        "chain_per_frame": chains,
        "chain_budget_us": BUDGET_US,
        "chain_within_budget": ours <= BUDGET_US,
        "chain_x_realtime": round(20000 / ours, 1),
        "ratio_ours_over_audioop_soxr": round(ours / reference, 2),
        "stages_per_frame": _stages(ulaw_frames, pcm_frames),
        "sweep_24k_8k": sweeps,
        "held_back": {
            f"{a // 1000}k_{b // 1000}k_{q}": _held_back(a, b, q)
            for q in QUALITIES
            for a, b in ((8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000))
        },
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
