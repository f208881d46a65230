"""The Smart Turn model from the installed pipecat-ai package, on real Piper speech.

Speech goes through the telephone band (Piper, 8 kHz, back to 16 kHz), as the engine hears
a call; the pauses are cut from one synthesis of the whole sentence, so their intonation is
that of a speaker who goes on (a phrase synthesised alone ends falling, as if finished).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from config.schema import EndOfTurn, EngineSettings
from daemon.engine.turns import unfinished
from daemon.speech import SpeechError
from daemon.speech.backends import load_turn_model
from daemon.speech.local import PiperSynthesizer
from daemon.speech.turn import MODEL_FILE, SmartTurn, model_path
from media.resample import resample


@pytest.fixture(scope="module")
def piper() -> PiperSynthesizer:
    return PiperSynthesizer()


@pytest.fixture(scope="module")
def model() -> SmartTurn:
    return SmartTurn()


def _call_audio(piper: PiperSynthesizer, text: str) -> NDArray[np.int16]:
    """``text`` as a call carries it, at 16 kHz, followed by 300 ms of silence."""
    line = resample(piper.synthesize(text), piper.rate, 8000)
    return resample(np.concatenate((line, np.zeros(2400, np.int16))), 8000, 16000)


@pytest.mark.parametrize(
    "text",
    [
        "I would like to move my appointment to Friday.",
        "Tell Peter the meeting is at three.",
        "Yes.",
    ],
)
def test_a_complete_sentence_is_a_complete_turn(
    piper: PiperSynthesizer, model: SmartTurn, text: str
) -> None:
    """A whole sentence ends the turn: probability well above 0.5."""
    assert model.probability(_call_audio(piper, text)) > 0.8


def test_an_open_clause_is_not(piper: PiperSynthesizer, model: SmartTurn) -> None:
    """A clause left open ("So I was wondering if") does not end the turn."""
    assert model.probability(_call_audio(piper, "So I was wondering if")) < 0.2


def test_the_pause_after_a_filler_inside_a_sentence_is_not_an_end(
    piper: PiperSynthesizer, model: SmartTurn
) -> None:
    """Cut at the comma after "um" of one synthesis, the sentence is heard as unfinished; the
    same synthesis, whole, as finished."""
    text = "I would like to, um, move my appointment to Friday."
    line = resample(piper.synthesize(text), piper.rate, 8000)
    level = np.array(
        [
            np.sqrt(np.mean(b.astype(float) ** 2))
            for b in np.split(line[: len(line) // 80 * 80], len(line) // 80)
        ]
    )
    quiet = level < 32768 * 10 ** (-40 / 20)
    runs = []  # (start block, length) of quiet runs of at least 200 ms inside the speech
    start = None
    for i, q in enumerate(quiet[5:-5], 5):
        if q and start is None:
            start = i
        elif not q and start is not None:
            if i - start >= 20:
                runs.append((start, i - start))
            start = None
    assert len(runs) >= 2, runs  # the commas around "um"
    after_um = runs[1][0] * 80
    cut = np.concatenate((line[:after_um], np.zeros(2400, np.int16)))
    assert model.probability(resample(cut, 8000, 16000)) < 0.2
    assert model.probability(_call_audio(piper, text)) > 0.8


def test_a_missing_package_names_it_and_the_setting() -> None:
    """Without the distribution, loading is a SpeechError naming the package and the key that
    turns the model off."""
    with pytest.raises(SpeechError) as error:
        model_path("no-such-distribution-anywhere")
    assert "no-such-distribution-anywhere" in str(error.value)
    assert 'engine.end_of_turn = "silence"' in str(error.value)
    assert model_path().is_file()  # the installed pipecat-ai's


def test_a_package_without_the_file_is_an_error_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed distribution that does not ship the ONNX file (another version, a
    trimmed install) is a SpeechError naming the package and the file it lacks."""
    info = tmp_path / "pipecat_ai-0.0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pipecat-ai\nVersion: 0.0.1\n")
    (info / "RECORD").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(SpeechError) as error:
        SmartTurn()
    assert "pipecat-ai" in str(error.value)
    assert MODEL_FILE in str(error.value)


def test_the_model_loads_only_for_smart_turn() -> None:
    """``end_of_turn = "silence"`` loads no model; the default loads it."""
    assert load_turn_model(EngineSettings(end_of_turn=EndOfTurn.SILENCE)) is None
    assert isinstance(load_turn_model(EngineSettings()), SmartTurn)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I would like to", True),
        ("My name is, uh,", True),
        ("Please send the", True),
        ("", True),
        ("I would like to move my appointment to Friday.", False),
        ("Yes.", False),
        ("Tell Peter the meeting is at three.", False),
        # Whisper's own writing: numbers as digits
        ("Tell Peter the meeting is at 3.", False),
        ("My room number is 12.", False),
        ("I was born in 1990.", False),
        ("Is it room 12?", False),
        ("I think so.", True),  # weak endings veto an unsure verdict
        ("My name is", True),
        ("And the", True),
        ("So I was wondering if", True),
        ("I need a plumber and", True),
    ],
)
def test_an_unfinished_transcript(text: str, expected: bool) -> None:
    """A transcript stopping on an article, a conjunction or a filler is a pause; a number
    or a content word ends it."""
    assert unfinished(text) is expected


@pytest.mark.parametrize(
    "text",
    ["Who is it for?", "Where are you from?", "Yes, it is.", "I think so.", "Come in.",
     "Is that his?", "Who did you speak to?"],
)  # fmt: skip
def test_a_complete_turn_on_a_weak_ending_ends_on_a_sure_verdict(text: str) -> None:
    """Turns that end on a preposition, a verb or a pronoun: a verdict of 0.95 stands."""
    assert unfinished(text, 0.95) is False


def test_a_weak_ending_vetoes_an_unsure_verdict() -> None:
    assert unfinished("I would like to", 0.7) is True
    assert unfinished("My name is", 0.58) is True
    assert unfinished("Please send the", 0.99) is True  # an article, however sure


def test_a_missing_inference_library_is_a_speech_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without onnxruntime the load fails as a SpeechError naming it (the daemon reports it
    at start), not as a crash."""
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(SpeechError, match="onnxruntime") as raised:
        SmartTurn()
    assert "end_of_turn" in str(raised.value)
