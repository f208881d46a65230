"""The streaming resampler: block independence, response, aliasing, alignment."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media.resample import SUPPORTED_RATES, Resampler, design, resample
from tests.audio import tone, tone_level_db

PAIRS = [(a, b) for a, b in itertools.permutations(SUPPORTED_RATES, 2)]
STOPBAND_DB = 80.0  # the call path's requirement, after the rounding to int16
PASSBAND_EDGE = 0.9  # fraction of the lower Nyquist frequency kept flat
# The call path's pairs (8 or 16 kHz bridge, 24 kHz model): at most this much output held back.
HELD_MS = {(8000, 24000): 80.0, (24000, 8000): 80.0, (16000, 24000): 40.0, (24000, 16000): 40.0}


def _in_chunks(resampler: Resampler, signal: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, i = [], 0
    for size in itertools.cycle(sizes):
        if i >= len(signal):
            break
        out.append(resampler.process(signal[i : i + size]))
        i += size
    out.append(resampler.flush())
    return np.concatenate(out)


def _level_db(out: np.ndarray, amplitude: float) -> float:
    rms = np.sqrt(np.mean(out.astype(np.float64) ** 2))
    return 20 * float(np.log10(max(rms, 1e-9) / (amplitude / np.sqrt(2))))


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_frames_equal_one_block(rate_in: int, rate_out: int) -> None:
    """20 ms frames, odd chunks and one block give the same samples, bit for bit."""
    rng = np.random.default_rng(rate_in + rate_out)
    signal = np.clip(rng.standard_normal(rate_in // 2) * 12000, -32768, 32767).astype(np.int16)
    signal[100:140] = 32767  # full-scale peaks: the rounding saturates the same way too
    whole = _in_chunks(Resampler(rate_in, rate_out), signal, [len(signal)])
    frames = _in_chunks(Resampler(rate_in, rate_out), signal, [rate_in // 50])
    odd = _in_chunks(Resampler(rate_in, rate_out), signal, [1, 7, 331, 0, 2, 960])
    assert np.array_equal(whole, frames)
    assert np.array_equal(whole, odd)
    assert abs(len(whole) - len(signal) * rate_out / rate_in) <= 1


@settings(max_examples=40, deadline=None)
@given(
    pair=st.sampled_from([(8000, 24000), (24000, 8000), (16000, 24000), (22050, 8000)]),
    cuts=st.lists(st.integers(min_value=0, max_value=3000), max_size=12),
)
def test_any_cut_points_give_the_same_stream(pair: tuple[int, int], cuts: list[int]) -> None:
    """Wherever the input is cut, including empty blocks, the output stream is identical."""
    rng = np.random.default_rng(7)
    signal = np.rint(rng.standard_normal(3000) * 12000).astype(np.int16)
    reference = Resampler(*pair)
    expected = np.concatenate((reference.process(signal), reference.flush()))
    resampler = Resampler(*pair)
    points = [0, *sorted(cuts), len(signal)]
    pieces = [resampler.process(signal[a:b]) for a, b in itertools.pairwise(points)]
    assert np.array_equal(np.concatenate([*pieces, resampler.flush()]), expected)


def _framed(rate_in: int, rate_out: int, signal: np.ndarray) -> np.ndarray:
    return _in_chunks(Resampler(rate_in, rate_out), signal, [rate_in // 50])


@pytest.mark.parametrize(
    ("rate_in", "rate_out"), [(24000, 8000), (48000, 8000), (16000, 8000), (24000, 16000)]
)
def test_sine_sweep_stopband_and_passband(rate_in: int, rate_out: int) -> None:
    """Tones in 20 ms frames: >= 80 dB down from the lower Nyquist frequency up, flat to 0.5 dB
    below 0.9 of it."""
    nyquist, amplitude = min(rate_in, rate_out) / 2, 30000.0
    stop = max(
        _level_db(_framed(rate_in, rate_out, tone(f, rate_in, 0.5, amplitude))[400:-400], amplitude)
        for f in np.linspace(nyquist, rate_in / 2 - 100, 40)
    )
    passband = [
        _level_db(_framed(rate_in, rate_out, tone(f, rate_in, 0.5, amplitude))[400:-400], amplitude)
        for f in np.linspace(100, PASSBAND_EDGE * nyquist, 12)
    ]
    print(f"{rate_in}->{rate_out}: stop-band {-stop:.1f} dB, pass-band {max(map(abs, passband))}")
    assert -stop >= STOPBAND_DB, f"{rate_in}->{rate_out}: stop-band {-stop:.1f} dB"
    assert max(abs(v) for v in passband) < 0.5, passband


def test_no_aliasing_into_3500_hz_at_24k_to_8k() -> None:
    """A 4.5 kHz tone, which would fold onto 3.5 kHz, leaves < -80 dB there; 3.5 kHz passes."""
    folded = _framed(24000, 8000, tone(4500, 24000, 1.0, 30000))[400:-400]
    assert tone_level_db(folded, 3500, 8000) - 20 * np.log10(30000) < -STOPBAND_DB
    passed = _framed(24000, 8000, tone(3500, 24000, 1.0, 30000))[400:-400]
    assert abs(tone_level_db(passed, 3500, 8000) - 20 * np.log10(30000)) < 0.5


def test_round_trip_keeps_frequency_and_snr() -> None:
    """A 1 kHz tone through 8k -> 24k -> 8k keeps its frequency with SNR >= 40 dB."""
    signal = tone(1000, 8000, 1.0)
    back = resample(resample(signal, 8000, 24000), 24000, 8000)
    assert len(back) == len(signal)
    core = slice(400, -400)
    spectrum = np.abs(np.fft.rfft(back[core] * np.hanning(len(back[core]))))
    assert np.fft.rfftfreq(len(back[core]), 1 / 8000)[np.argmax(spectrum)] == pytest.approx(
        1000, abs=5
    )
    noise = back[core].astype(np.float64) - signal[core]
    noise_energy = max(float(np.sum(noise**2)), 1e-9)  # 0 when the round trip is exact
    snr = 10 * np.log10(np.sum(signal[core].astype(np.float64) ** 2) / noise_energy)
    assert snr >= 40


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_output_is_aligned_with_the_input(rate_in: int, rate_out: int) -> None:
    """An impulse at input time t peaks at output time t: the filter's delay is compensated."""
    impulse = np.zeros(rate_in // 10, dtype=np.int16)
    at = rate_in // 50
    impulse[at] = 30000
    resampler = Resampler(rate_in, rate_out)
    out = np.concatenate((resampler.process(impulse), resampler.flush()))
    assert abs(int(np.argmax(np.abs(out))) - at * rate_out / rate_in) <= 1
    assert resampler.delay_seconds == 0.0


@pytest.mark.parametrize(("rate_in", "rate_out"), sorted(HELD_MS))
def test_output_held_back_is_bounded(rate_in: int, rate_out: int) -> None:
    """Fed 20 ms frames for 4 s, the stream never holds back more than the pair's bound."""
    rng = np.random.default_rng(3)
    resampler = Resampler(rate_in, rate_out)
    frame, produced, worst = rate_in // 50, 0, 0.0
    for i in range(200):
        produced += len(resampler.process(rng.integers(-9000, 9000, frame, dtype=np.int16)))
        held = ((i + 1) * rate_out // 50 - produced) * 1000 / rate_out
        worst = max(worst, held)
        assert held == pytest.approx(resampler.held_seconds * 1000, abs=1000 / rate_out)
    print(f"{rate_in}->{rate_out}: at most {worst:.1f} ms held back")
    assert worst <= HELD_MS[rate_in, rate_out], f"{rate_in}->{rate_out}: {worst:.1f} ms held"


def test_silence_does_not_reset_state() -> None:
    """A word, 300 ms of silence, a word: same output as feeding it all in one block."""
    word = tone(700, 8000, 0.2)
    signal = np.concatenate((word, np.zeros(2400, dtype=np.int16), word))
    whole = Resampler(8000, 24000).process(signal)
    framed = _in_chunks(Resampler(8000, 24000), signal, [160])
    assert np.array_equal(whole, framed[: len(whole)])


def test_flush_starts_a_new_stream() -> None:
    """After flush the resampler gives what a new one gives, bit for bit."""
    signal = tone(900, 8000, 0.3)
    resampler = Resampler(8000, 24000)
    first = _in_chunks(resampler, signal, [160])
    assert np.array_equal(_in_chunks(resampler, signal, [160]), first)
    assert np.array_equal(_in_chunks(Resampler(8000, 24000), signal, [160]), first)


def test_design_checks_the_pair_once() -> None:
    """design() (the worker's warm-up) names the pair's configuration and is cached."""
    assert design(8000, 24000) is design(8000, 24000)
    assert (design(24000, 8000).rate_in, design(24000, 8000).quality) == (24000, "HQ")


def test_rejects_bad_input() -> None:
    """Unsupported rates and non-int16 input are refused with a clear message."""
    with pytest.raises(ValueError, match="unsupported sample rate 11025"):
        Resampler(11025, 8000)
    with pytest.raises(TypeError, match="int16"):
        Resampler(8000, 24000).process(np.zeros(160, dtype=np.float32))  # type: ignore[arg-type]
