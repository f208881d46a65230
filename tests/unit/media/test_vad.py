"""Voice activity events on synthesised speech, silence and noise."""

from __future__ import annotations

import numpy as np
import pytest

from media.g711 import ulaw_decode, ulaw_encode
from media.resample import resample
from media.vad import SpeechStarted, SpeechStopped, VoiceActivityDetector, rms_dbfs
from tests.audio import speech, tone


def _feed_frames(vad: VoiceActivityDetector, pcm: np.ndarray, frame: int) -> list[object]:
    events: list[object] = []
    for i in range(0, len(pcm), frame):
        events += vad.process(pcm[i : i + frame])
    return events


@pytest.mark.parametrize("rate", [8000, 16000])
def test_speech_between_silences_gives_one_start_and_one_end(rate: int) -> None:
    """An utterance after 1 s of silence starts near 1 s and ends within its duration."""
    source_rate, words = speech("Hello, this is a reminder about your appointment tomorrow.")
    words = resample(words, source_rate, rate)
    voiced = np.flatnonzero(np.abs(words) > 300)
    first_ms = 1000 + voiced[0] * 1000 // rate
    last_ms = 1000 + voiced[-1] * 1000 // rate
    silence = np.zeros(rate, dtype=np.int16)
    signal = np.concatenate((silence, words, silence, silence))
    vad = VoiceActivityDetector(rate, aggressiveness=2, min_speech_ms=100, hangover_ms=500)
    events = _feed_frames(vad, signal, rate // 50)
    assert len(events) == 2, events
    start, stop = events
    assert isinstance(start, SpeechStarted)
    assert isinstance(stop, SpeechStopped)
    assert abs(start.at_ms - first_ms) <= 60
    assert last_ms - 300 <= stop.at_ms <= last_ms + 200  # webrtcvad's own hang-over
    assert stop.duration_ms == stop.at_ms - start.at_ms
    assert not vad.speaking


def test_chunk_size_does_not_change_events() -> None:
    """Odd-sized chunks give the same events as 20 ms frames."""
    source_rate, words = speech("Yes, please.")
    signal = np.concatenate((np.zeros(4000, np.int16), resample(words, source_rate, 8000)))
    signal = np.concatenate((signal, np.zeros(8000, np.int16)))
    framed = _feed_frames(VoiceActivityDetector(8000), signal, 160)
    odd = _feed_frames(VoiceActivityDetector(8000), signal, 77)
    assert framed == odd
    assert len(framed) == 2


def test_silence_and_line_noise_are_not_speech() -> None:
    """Digital silence and -50 dBFS noise produce no events."""
    rng = np.random.default_rng(3)
    noise = np.rint(rng.standard_normal(8000 * 3) * 100).astype(np.int16)
    assert rms_dbfs(noise) < -49
    for signal in (np.zeros(8000 * 3, dtype=np.int16), noise):
        vad = VoiceActivityDetector(8000, aggressiveness=3)
        assert vad.process(signal) == []


def test_speech_far_below_any_caller_is_not_speech() -> None:
    """Speech 75-80 dB below full scale (an echo canceller's residue of the agent's voice),
    through mu-law at the engine's 16 kHz, starts no speech; the same words at a caller's
    level do."""
    rate, words = speech("please call me back tomorrow morning")
    words = resample(words, rate, 8000).astype(np.float64)
    for peak, heard in ((16, False), (40, False), (8000, True)):
        quiet = np.rint(words / np.abs(words).max() * peak).astype(np.int16)
        line = ulaw_decode(ulaw_encode(quiet))
        events = VoiceActivityDetector(16000, aggressiveness=1).process(resample(line, 8000, 16000))
        level = rms_dbfs(line)
        print(f"peak {peak}: {level:.1f} dBFS -> {events[:1]}")
        assert any(isinstance(e, SpeechStarted) for e in events) is heard, (peak, level, events)


def test_a_click_shorter_than_min_speech_is_ignored() -> None:
    """A 60 ms burst does not start speech with the default min_speech_ms; 300 ms does."""
    silence = np.zeros(8000, np.int16)
    for seconds, expected in ((0.06, 0), (0.3, 2)):
        burst = tone(300, 8000, seconds, amplitude=12000)
        vad = VoiceActivityDetector(8000, aggressiveness=2, hangover_ms=300)
        assert len(vad.process(np.concatenate((silence, burst, silence)))) == expected


def test_rms_dbfs() -> None:
    """A full-scale square wave is 0 dBFS; a sine at half scale is about -9 dBFS."""
    assert rms_dbfs(np.array([32767, -32768] * 80, dtype=np.int16)) == pytest.approx(0, abs=0.01)
    assert rms_dbfs(tone(1000, 8000, 0.1, 16384)) == pytest.approx(-9.03, abs=0.05)
    assert rms_dbfs(np.zeros(160, np.int16)) == float("-inf")


def test_bad_settings() -> None:
    """Unsupported rate, frame size or aggressiveness is refused."""
    with pytest.raises(ValueError, match="rate"):
        VoiceActivityDetector(22050)
    with pytest.raises(ValueError, match="aggressiveness"):
        VoiceActivityDetector(8000, aggressiveness=4)


def test_silence_ms_counts_the_pause_since_the_last_voiced_frame() -> None:
    """silence_ms is 0 right after a voiced frame and grows by one frame per silent frame."""
    source_rate, words = speech("Yes.")
    signal = resample(words, source_rate, 8000)
    vad = VoiceActivityDetector(8000, min_speech_ms=100, hangover_ms=700)
    assert vad.silence_ms == 0
    vad.process(np.zeros(160 * 3, dtype=np.int16))
    assert vad.silence_ms == 60
    voiced = False
    for i in range(0, len(signal) - len(signal) % 160, 160):
        vad.process(signal[i : i + 160])
        voiced = voiced or vad.silence_ms == 0
    assert voiced
    assert vad.speaking
    after = vad.silence_ms
    for n in range(1, 6):
        vad.process(np.zeros(160, dtype=np.int16))
        assert vad.silence_ms == after + 20 * n
