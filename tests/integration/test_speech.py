"""The embedded speech models: Piper speaks, Whisper hears it back through mu-law at 8 kHz."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.calls.choice import ChoiceMatcher, Option
from daemon.speech import SpeechError, SpeechToText, TextToSpeech
from daemon.speech.local import PiperSynthesizer, WhisperTranscriber
from media import g711
from media.vad import rms_dbfs


@pytest.fixture(scope="module")
def tts() -> TextToSpeech:
    model = PiperSynthesizer()
    return TextToSpeech(model, model.name)


@pytest.fixture(scope="module")
def stt() -> SpeechToText:
    return SpeechToText(WhisperTranscriber())


def _over_the_phone(pcm: np.ndarray) -> np.ndarray:
    return g711.ulaw_decode(g711.ulaw_encode(pcm))


def _words(text: str) -> list[str]:
    return "".join(c if c.isalnum() else " " for c in text.lower()).split()


async def test_synthesis_at_call_rate_and_cache(tts: TextToSpeech) -> None:
    """A sentence comes out at 8 kHz with speech-like length and level; repeats are cached."""
    text = "Your package has been delivered."
    audio = await tts.synthesize(text, 8000)
    assert audio.dtype == np.int16
    assert 1.0 < len(audio) / 8000 < 4.0
    assert rms_dbfs(audio) > -30
    again = await tts.synthesize(text, 8000)
    assert again is audio
    assert (tts.hits, tts.misses) == (1, 1)


async def test_round_trip_through_mu_law(tts: TextToSpeech, stt: SpeechToText) -> None:
    """Whisper finds the message's words in Piper's voice after G.711 mu-law at 8 kHz."""
    message = "Hello, this is a reminder about your appointment tomorrow."
    heard = await stt.transcribe(_over_the_phone(await tts.synthesize(message, 8000)), 8000)
    assert {"reminder", "appointment", "tomorrow"} <= set(_words(heard))


@pytest.mark.parametrize(
    ("spoken", "expected"),
    [
        ("yeah sure", "confirmed"),
        ("no thanks", "cancelled"),
        ("cancel it please", "cancelled"),
        ("I confirm", "confirmed"),
    ],
)
async def test_spoken_answers_are_matched(
    tts: TextToSpeech, stt: SpeechToText, spoken: str, expected: str
) -> None:
    """The outbound test answers, spoken and heard over mu-law, pick the right option.

    As in a call, recognition gets the options' words as a hint.
    """
    options = [
        Option("confirmed", ("yes", "yeah", "yep", "confirm", "okay", "sure")),
        Option("cancelled", ("no", "nope", "cancel", "nevermind")),
    ]
    matcher = ChoiceMatcher(options)
    hint = ", ".join(p for o in options for p in (o.value, *o.synonyms))
    audio = _over_the_phone(await tts.synthesize(spoken, 8000))
    heard = await stt.transcribe(audio, 8000, hint)
    match = matcher.match(heard)
    assert match is not None, heard
    assert match.value == expected


async def test_silence_transcribes_to_nothing_useful(stt: SpeechToText) -> None:
    """Two seconds of silence yield no option words."""
    heard = await stt.transcribe(np.zeros(16000, dtype=np.int16), 8000)
    matcher = ChoiceMatcher([Option("confirmed", ("yes",)), Option("cancelled", ("no",))])
    assert matcher.match(heard) is None


def test_missing_models_are_clear_errors(tmp_path: Path) -> None:
    """A configured model that is not there names the setting and the path."""
    with pytest.raises(SpeechError, match=r"speech.voice_model: .*nope.onnx does not exist"):
        PiperSynthesizer(tmp_path / "nope.onnx")
    with pytest.raises(SpeechError, match=r"speech\.whisper_model: no model\.bin"):
        WhisperTranscriber(tmp_path)
