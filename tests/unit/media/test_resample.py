"""The streaming resampler: block independence, response, aliasing, delay, latency."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal as scipy_signal

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
# The call path's pairs: 8 or 16 kHz bridge, 24 kHz model, 16 kHz speech recognition.
CALL_PAIRS = [(8000, 24000), (24000, 8000), (16000, 24000), (24000, 16000), (8000, 16000)]
# Through the int16 stream the roundings (of the input tone and of the output) add their own
# floor: a leak of 1 LSB or less can round up. The filters themselves measure >= STOPBAND_DB.
SWEEP_STOPBAND_DB = 85.0
CALL_PATH_DELAY_S = 0.006


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
    """20 ms frames, 10 ms frames, odd chunks and one block give the same samples, bit for bit."""
    rng = np.random.default_rng(rate_in + rate_out)
    signal = np.rint(rng.standard_normal(rate_in // 2) * 9000).astype(np.int16)
    whole = _in_chunks(Resampler(rate_in, rate_out), signal, [len(signal)])
    frames = _in_chunks(Resampler(rate_in, rate_out), signal, [rate_in // 50])
    half_frames = _in_chunks(Resampler(rate_in, rate_out), signal, [rate_in // 100])
    odd = _in_chunks(Resampler(rate_in, rate_out), signal, [1, 7, 331, 2, 960])
    assert np.array_equal(whole, frames)
    assert np.array_equal(whole, half_frames)
    assert np.array_equal(whole, odd)
    assert abs(len(whole) - len(signal) * rate_out / rate_in) <= design(rate_in, rate_out).length


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
def test_matches_scipy_upfirdn_exactly(rate_in: int, rate_out: int) -> None:
    """The stream equals scipy's upfirdn with the same filter, rounded half to even and
    saturated, bit for bit: the sums are exact, so any evaluation order gives these samples."""
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


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_designed_response(rate_in: int, rate_out: int) -> None:
    """Every design measures at least the specified stop-band and at most the ripple."""
    d = design(rate_in, rate_out)
    figures = f"{rate_in}->{rate_out}: stop-band {d.stopband_db:.1f} dB, ripple "
    figures += f"{d.passband_ripple_db:.4f} dB"
    print(figures)
    assert d.stopband_db >= STOPBAND_DB, figures
    assert d.passband_ripple_db <= PASSBAND_RIPPLE_DB, figures


def _framed(rate_in: int, rate_out: int, signal: np.ndarray) -> np.ndarray:
    return _in_chunks(Resampler(rate_in, rate_out), signal, [rate_in // 50])


@pytest.mark.parametrize(
    ("rate_in", "rate_out"), [(24000, 8000), (48000, 8000), (16000, 8000), (24000, 16000)]
)
def test_sine_sweep_stopband_and_passband(rate_in: int, rate_out: int) -> None:
    """Tones in 20 ms frames through the int16 stream: >= 85 dB down from the lower Nyquist
    frequency up, flat to 0.05 dB below 0.9 of it."""
    nyquist, amplitude = min(rate_in, rate_out) / 2, 30000.0
    stop = max(
        _level_db(_framed(rate_in, rate_out, tone(f, rate_in, 0.5, amplitude))[400:-400], amplitude)
        for f in np.linspace(nyquist, rate_in / 2 - 100, 40)
    )
    passband = max(
        abs(
            _level_db(
                _framed(rate_in, rate_out, tone(f, rate_in, 0.5, amplitude))[400:-400], amplitude
            )
        )
        for f in np.linspace(100, PASSBAND_EDGE * nyquist, 12)
    )
    figures = f"{rate_in}->{rate_out}: stop-band {-stop:.1f} dB, pass-band {passband:.3f} dB"
    print(figures)
    assert -stop >= SWEEP_STOPBAND_DB, figures
    assert passband < 0.05, figures


def test_no_aliasing_into_3500_hz_at_24k_to_8k() -> None:
    """A 4.5 kHz tone, which would fold onto 3.5 kHz, leaves < -85 dB there; 3.5 kHz passes."""
    folded = _framed(24000, 8000, tone(4500, 24000, 1.0, 30000))[400:-400]
    leak = tone_level_db(folded, 3500, 8000) - 20 * np.log10(30000)
    assert leak < -SWEEP_STOPBAND_DB, f"4.5 kHz leaves {leak:.1f} dB at 3.5 kHz"
    passed = _framed(24000, 8000, tone(3500, 24000, 1.0, 30000))[400:-400]
    assert abs(tone_level_db(passed, 3500, 8000) - 20 * np.log10(30000)) < 0.05


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
    assert snr >= 40, f"round trip SNR {snr:.1f} dB"


@pytest.mark.parametrize(("rate_in", "rate_out"), PAIRS)
def test_impulse_comes_out_after_the_documented_delay(rate_in: int, rate_out: int) -> None:
    """An impulse peaks at delay_samples (rounded); the call path's filters delay <= 6 ms."""
    impulse = np.zeros(rate_in // 10, dtype=np.int16)
    impulse[0] = 30000
    resampler = Resampler(rate_in, rate_out)
    out = np.concatenate((resampler.process(impulse), resampler.flush()))
    assert int(np.argmax(np.abs(out))) == round(resampler.delay_samples)
    assert resampler.delay_seconds == pytest.approx(resampler.delay_samples / rate_out)
    if 22050 not in (rate_in, rate_out):
        assert resampler.delay_samples == int(resampler.delay_samples)
        delay_ms = resampler.delay_seconds * 1000
        assert delay_ms <= CALL_PATH_DELAY_S * 1000, f"{rate_in}->{rate_out}: {delay_ms:.3f} ms"


@pytest.mark.parametrize(("rate_in", "rate_out"), [*CALL_PAIRS, (22050, 8000), (22050, 24000)])
def test_click_comes_out_within_the_delay_and_one_frame(rate_in: int, rate_out: int) -> None:
    """Fed 20 ms frames, a click's peak is returned at most the group delay plus one frame after
    the frame that carried it: the stream holds no output back beyond its filter's delay."""
    frame = rate_in // 50
    resampler = Resampler(rate_in, rate_out)
    delay_ms = resampler.delay_seconds * 1000
    worst = 0.0
    for offset in range(0, frame, frame // 8):
        clicked_frame = 10
        signal = np.zeros(frame * 40, dtype=np.int16)
        signal[clicked_frame * frame + offset] = 30000
        pieces, returned_by = [], []  # returned_by: for each output, the frame that returned it
        for i in range(40):
            pieces.append(resampler.process(signal[i * frame : (i + 1) * frame]))
            returned_by += [i] * len(pieces[-1])
        out = np.concatenate([*pieces, resampler.flush()])  # flush: a new stream for the next
        peak = int(np.argmax(np.abs(out)))
        assert peak < len(returned_by), f"{rate_in}->{rate_out}: the click came out only on flush"
        worst = max(worst, (returned_by[peak] - clicked_frame) * 20.0)
    figures = f"{rate_in}->{rate_out}: click returned {worst:.0f} ms after its frame, "
    figures += f"group delay {delay_ms:.2f} ms"
    print(figures)
    assert worst <= delay_ms + 20.0, figures


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


def test_design_is_made_once_per_pair() -> None:
    """design() (the worker's warm-up) is cached and reduces the pair to up / down factors."""
    assert design(8000, 24000) is design(8000, 24000)
    assert (design(24000, 16000).up, design(24000, 16000).down) == (2, 3)


def test_rejects_bad_input() -> None:
    """Unsupported rates and non-int16 input are refused with a clear message."""
    with pytest.raises(ValueError, match="unsupported sample rate 11025"):
        Resampler(11025, 8000)
    with pytest.raises(TypeError, match="int16"):
        Resampler(8000, 24000).process(np.zeros(160, dtype=np.float32))  # type: ignore[arg-type]
