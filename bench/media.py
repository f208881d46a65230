"""Media core benchmark: per-frame cost and filter quality against audioop and soxr.

Prints one JSON object. The chain measured is what a call with a 24 kHz PCM model does every
20 ms: decode 160 mu-law bytes, resample 8k -> 24k (uplink), resample 24k -> 8k (downlink),
encode 160 mu-law bytes. The references run the same chain in the same process on the same
input: CPython's audioop for G.711 (the C code audioop-lts ports to Python >= 3.13) and soxr's
ResampleStream at HQ and VHQ quality. Ratios (ours / reference) carry across machines; the
absolute figures are for this one core. Stop-band and pass-band figures come from the same
sine sweep through each resampler's streaming interface.

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
from media.resample import Resampler, design  # noqa: E402

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

FRAMES = 3000  # 60 s of audio per timing run
RUNS = 7
BUDGET_US = 50.0


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


def _chains(ulaw_frames: list[bytes]) -> dict[str, dict[str, float]]:
    up, down = Resampler(8000, 24000), Resampler(24000, 8000)

    def ours(i: int) -> object:
        pcm = g711.ulaw_decode(ulaw_frames[i])
        return g711.ulaw_encode(down.process(up.process(pcm)))

    results = {"ours": _time_per_frame(ours)}
    for quality in ("HQ", "VHQ"):
        sup = soxr.ResampleStream(8000, 24000, 1, dtype="int16", quality=quality)
        sdown = soxr.ResampleStream(24000, 8000, 1, dtype="int16", quality=quality)

        def reference(
            i: int, sup: soxr.ResampleStream = sup, sdown: soxr.ResampleStream = sdown
        ) -> object:
            pcm = np.frombuffer(audioop.ulaw2lin(ulaw_frames[i], 2), dtype=np.int16)
            back = sdown.resample_chunk(sup.resample_chunk(pcm))
            return audioop.lin2ulaw(back.tobytes(), 2)

        results[f"audioop+soxr_{quality}"] = _time_per_frame(reference)
    return results


def _stages(ulaw_frames: list[bytes], pcm_frames: list[np.ndarray]) -> dict[str, dict[str, float]]:
    pcm_bytes = [p.tobytes() for p in pcm_frames]
    up = Resampler(8000, 24000)
    pcm24 = [up.process(p) for p in pcm_frames]
    stages: dict[str, dict[str, float]] = {
        "ulaw_decode_ours": _time_per_frame(lambda i: g711.ulaw_decode(ulaw_frames[i])),
        "ulaw_decode_audioop": _time_per_frame(lambda i: audioop.ulaw2lin(ulaw_frames[i], 2)),
        "ulaw_encode_ours": _time_per_frame(lambda i: g711.ulaw_encode(pcm_frames[i])),
        "ulaw_encode_audioop": _time_per_frame(lambda i: audioop.lin2ulaw(pcm_bytes[i], 2)),
    }
    r_up, r_down = Resampler(8000, 24000), Resampler(24000, 8000)
    stages["up_8k_24k_ours"] = _time_per_frame(lambda i: r_up.process(pcm_frames[i]))
    stages["down_24k_8k_ours"] = _time_per_frame(lambda i: r_down.process(pcm24[i]))
    for quality in ("HQ", "VHQ"):
        s_up = soxr.ResampleStream(8000, 24000, 1, dtype="int16", quality=quality)
        s_down = soxr.ResampleStream(24000, 8000, 1, dtype="int16", quality=quality)
        stages[f"up_8k_24k_soxr_{quality}"] = _time_per_frame(
            lambda i, s=s_up: s.resample_chunk(pcm_frames[i])
        )
        stages[f"down_24k_8k_soxr_{quality}"] = _time_per_frame(
            lambda i, s=s_down: s.resample_chunk(pcm24[i])
        )
    return stages


def _sweep(make: Callable[[], Callable[[np.ndarray], np.ndarray]]) -> dict[str, float]:
    """24k -> 8k: worst stop-band leakage (4-11.9 kHz) and pass-band deviation (to 3.6 kHz)."""
    rate_in, amplitude = 24000, 30000.0

    def level(freq: float) -> float:
        t = np.arange(rate_in) / rate_in
        x = np.rint(amplitude * np.sin(2 * np.pi * freq * t)).astype(np.int16)
        y = make()(x).astype(np.float64)[400:-400]
        rms = np.sqrt(np.mean(y**2))
        return 20 * float(np.log10(max(rms, 1e-9) / (amplitude / np.sqrt(2))))

    stop = max(level(f) for f in np.linspace(4000, 11900, 80))
    passband = [level(f) for f in np.linspace(100, 3600, 36)]
    return {
        "stopband_attenuation_db": round(-stop, 1),
        "passband_deviation_db": round(max(abs(v) for v in passband), 3),
    }


def main() -> int:
    pcm = _speech_like(FRAMES * 0.02)
    pcm_frames = [pcm[i * 160 : (i + 1) * 160] for i in range(FRAMES)]
    ulaw_frames = [g711.ulaw_encode(f).tobytes() for f in pcm_frames]

    chains = _chains(ulaw_frames)
    ours = chains["ours"]["median_us"]
    d_up, d_down = design(8000, 24000), design(24000, 8000)

    def ours_stream() -> Callable[[np.ndarray], np.ndarray]:
        return Resampler(24000, 8000).process

    def soxr_stream(quality: str) -> Callable[[], Callable[[np.ndarray], np.ndarray]]:
        def make() -> Callable[[np.ndarray], np.ndarray]:
            stream = soxr.ResampleStream(24000, 8000, 1, dtype="int16", quality=quality)
            return stream.resample_chunk  # type: ignore[no-any-return]

        return make

    report = {
        "benchmark": "media_core",
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count()},
        "frame": "20 ms, 8 kHz call side, 24 kHz model side",
        "chain_per_frame": chains,
        "chain_budget_us": BUDGET_US,
        "chain_within_budget": ours <= BUDGET_US,
        "chain_x_realtime": round(20000 / ours, 1),
        "ratios_ours_over_reference": {
            name: round(ours / timing["median_us"], 2)
            for name, timing in chains.items()
            if name != "ours"
        },
        "stages_per_frame": _stages(ulaw_frames, pcm_frames),
        "filters": {
            "ours_8k_24k": {
                "taps": d_up.length,
                "stopband_db_designed": round(d_up.stopband_db, 1),
                "delay_ms": round(Resampler(8000, 24000).delay_seconds * 1000, 2),
            },
            "ours_24k_8k": {
                "taps": d_down.length,
                "stopband_db_designed": round(d_down.stopband_db, 1),
                "delay_ms": round(Resampler(24000, 8000).delay_seconds * 1000, 2),
            },
        },
        "sweep_24k_8k": {
            "ours": _sweep(ours_stream),
            "soxr_HQ": _sweep(soxr_stream("HQ")),
            "soxr_VHQ": _sweep(soxr_stream("VHQ")),
        },
    }
    json.dump(report, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
