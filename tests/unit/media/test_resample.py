"""The streaming resampler: block independence, response, aliasing, delay."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal as scipy_signal

from media import _kernels
from media.resample import (
    PASSBAND_EDGE,
    PASSBAND_RIPPLE_DB,
    STOPBAND_DB,
    SUPPORTED_RATES,
    Resampler,
    design,
    resample,
)
from tests.audio import tone, tone_level_db

PAIRS = [(a, b) for a, b in itertools.permutations(SUPPORTED_RATES, 2)]


def _in_chunks(resampler: Resampler, signal: np.ndarray, sizes: list[int]) -> np.ndarray:
    out, i = [], 0
    for size in itertools.cycle(sizes):
        if i >= len(signal):
            break
        out.append(resampler.process(signal[i : i + size]))
        i += size
    out.append(resampler.flush())
    return np.concatenate(out)


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_frames_equal_one_block(rate_in: int, rate_out: int) -> None:
    """20 ms frames, odd chunks and one block give the same samples, bit for bit."""
    rng = np.random.default_rng(rate_in + rate_out)
    signal = np.rint(rng.standard_normal(rate_in // 2) * 9000).astype(np.int16)
    whole = _in_chunks(Resampler(rate_in, rate_out), signal, [len(signal)])
    frames = _in_chunks(Resampler(rate_in, rate_out), signal, [rate_in // 50])
    odd = _in_chunks(Resampler(rate_in, rate_out), signal, [1, 7, 331, 2, 960])
    assert np.array_equal(whole, frames)
    assert np.array_equal(whole, odd)
    assert abs(len(whole) - len(signal) * rate_out / rate_in) <= design(rate_in, rate_out).length


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_matches_scipy_upfirdn_exactly(rate_in: int, rate_out: int) -> None:
    """The compiled kernel's stream equals scipy's upfirdn with the same filter, bit for bit:
    the sums are exact, so any correct evaluation order gives the same rounded samples."""
    d = design(rate_in, rate_out)
    taps = d.phases[:, ::-1].T.ravel()[: d.length]  # undo the polyphase split
    rng = np.random.default_rng(rate_in * 3 + rate_out)
    # Full scale with clipping peaks, so rounding and saturation are both exercised.
    x = np.clip(rng.standard_normal(rate_in // 5) * 20000, -32768, 32767).astype(np.int16)
    x[100:140] = 32767
    got = Resampler(rate_in, rate_out).process(x)
    reference = scipy_signal.upfirdn(taps, x.astype(np.float64), d.up, d.down)[: len(got)]
    expected = np.rint(np.clip(reference, -32768, 32767)).astype(np.int16)
    assert len(got) == -(-len(x) * d.up // d.down)
    assert np.array_equal(got, expected)
    assert np.abs(got.astype(np.int32)).max() >= 32767  # a clip was reached


def test_kernel_rounds_halves_to_even_and_saturates() -> None:
    """Outputs round like numpy's rint (half to even) and clip to the int16 range."""
    x = np.array([1, 3, 5, -1, -3, -5, 7, 30000, -30000], dtype=np.float64)
    out = np.empty(len(x), dtype=np.int16)
    _kernels.fir(x, np.array([0.5]), 1, 1, 0, out)
    assert out.tolist() == [0, 2, 2, 0, -2, -2, 4, 15000, -15000]
    _kernels.fir(x, np.array([2.0]), 1, 1, 0, out)
    assert out.tolist() == [2, 6, 10, -2, -6, -10, 14, 32767, -32768]


def test_kernel_refuses_what_would_read_outside_its_buffers() -> None:
    """Wrong item types and windows outside the samples are errors, never stray reads."""
    d = design(8000, 24000)
    samples, out = np.zeros(400), np.zeros(10, dtype=np.int16)
    _kernels.fir(samples, d.phases, d.up, d.down, (d.taps_per_phase - 1) * d.up, out)
    with pytest.raises(ValueError, match="need samples -1"):
        _kernels.fir(samples, d.phases, d.up, d.down, (d.taps_per_phase - 2) * d.up, out)
    with pytest.raises(ValueError, match=r"buffer holds 0\.\.399"):
        _kernels.fir(samples, d.phases, d.up, d.down, 398 * d.up, out)
    with pytest.raises(TypeError, match="samples: expected items of type 'd'"):
        _kernels.fir(samples.astype(np.float32), d.phases, d.up, d.down, 300, out)
    with pytest.raises(TypeError, match="out: expected items of type 'h'"):
        _kernels.fir(samples, d.phases, d.up, d.down, 300, np.zeros(10, dtype=np.int32))
    with pytest.raises(ValueError, match="do not split into 2 phases"):
        _kernels.fir(samples, np.zeros(7), 2, 1, 300, out)
    with pytest.raises(ValueError, match="contiguous"):
        _kernels.fir(samples, d.phases, d.up, d.down, 300, np.zeros(20, dtype=np.int16)[::2])


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


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_designed_response(rate_in: int, rate_out: int) -> None:
    """Every design measures at least the specified stop-band and at most the ripple."""
    d = design(rate_in, rate_out)
    assert d.stopband_db >= STOPBAND_DB
    assert d.passband_ripple_db <= PASSBAND_RIPPLE_DB


@pytest.mark.parametrize(("rate_in", "rate_out"), [(24000, 8000), (48000, 8000), (16000, 8000)])
def test_sine_sweep_passband_and_stopband(rate_in: int, rate_out: int) -> None:
    """Tones through the real stream: flat to 0.5 dB below 0.9 Nyquist, >= 60 dB above it."""
    nyquist = min(rate_in, rate_out) / 2
    for freq in np.linspace(100, PASSBAND_EDGE * nyquist, 12):
        out = Resampler(rate_in, rate_out).process(tone(freq, rate_in, 0.5))[200:]
        assert abs(tone_level_db(out, freq, rate_out) - 20 * np.log10(10000)) < 0.5, freq
    for freq in np.linspace(nyquist, rate_in / 2 - 100, 25):
        out = Resampler(rate_in, rate_out).process(tone(freq, rate_in, 0.5, 30000))[200:]
        rms = np.sqrt(np.mean(out.astype(np.float64) ** 2))
        assert 20 * np.log10(max(rms, 1e-9) / (30000 / np.sqrt(2))) < -60, freq


def test_no_aliasing_into_3500_hz_at_24k_to_8k() -> None:
    """A 4.5 kHz tone, which would fold onto 3.5 kHz, leaves < -60 dB there; 3.5 kHz passes."""
    folded = Resampler(24000, 8000).process(tone(4500, 24000, 1.0, 30000))[200:]
    assert tone_level_db(folded, 3500, 8000) - 20 * np.log10(30000) < -60
    passed = Resampler(24000, 8000).process(tone(3500, 24000, 1.0, 30000))[200:]
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
    snr = 10 * np.log10(np.sum(signal[core].astype(np.float64) ** 2) / np.sum(noise**2))
    assert snr >= 40


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_impulse_comes_out_after_the_documented_delay(rate_in: int, rate_out: int) -> None:
    """An impulse peaks at delay_samples (rounded), the same delay whatever the signal."""
    impulse = np.zeros(rate_in // 10, dtype=np.int16)
    impulse[0] = 30000
    resampler = Resampler(rate_in, rate_out)
    out = np.concatenate((resampler.process(impulse), resampler.flush()))
    assert int(np.argmax(np.abs(out))) == round(resampler.delay_samples)
    assert resampler.delay_seconds == pytest.approx(resampler.delay_samples / rate_out)
    if 22050 not in (rate_in, rate_out):
        assert resampler.delay_samples == int(resampler.delay_samples)
        assert resampler.delay_seconds < 0.008  # the call path's filters stay short


def test_silence_does_not_reset_state() -> None:
    """A word, 300 ms of silence, a word: same output as feeding it all in one block."""
    word = tone(700, 8000, 0.2)
    signal = np.concatenate((word, np.zeros(2400, dtype=np.int16), word))
    whole = Resampler(8000, 24000).process(signal)
    framed = _in_chunks(Resampler(8000, 24000), signal, [160])
    assert np.array_equal(whole, framed[: len(whole)])


def test_rejects_bad_input() -> None:
    """Unsupported rates and non-int16 input are refused with a clear message."""
    with pytest.raises(ValueError, match="unsupported sample rate 11025"):
        Resampler(11025, 8000)
    with pytest.raises(TypeError, match="int16"):
        Resampler(8000, 24000).process(np.zeros(160, dtype=np.float32))  # type: ignore[arg-type]
