"""Answering-machine detection on 36 synthesised pick-ups (Piper, espeak-ng, tones via mu-law)."""

from __future__ import annotations

import json

from media.amd import AmdParameters
from tests.support.amd_cases import amd_cases, evaluate

HUMAN_DECISION_MS = 2500  # a person who said "hello?" hears the message this soon at the latest
GREETING_END_SLACK_MS = 200


def test_detection_accuracy_and_human_decision_time() -> None:
    """With the default [amd] settings at least 90% of the 36 cases are labelled right, every
    human is decided within 2.5 s of the answer (stream time), no speech is taken for a beep,
    and each beep case's greeting ends within 200 ms after its beep."""
    figures, outcomes = evaluate(AmdParameters())
    print(json.dumps(figures, indent=2))
    assert figures["amd_cases"] == len(amd_cases()) >= 36
    assert figures["amd_accuracy"] >= 0.90, figures
    assert figures["amd_speech_tone_frames_max"] < 10, figures  # a beep needs 200 ms
    for family, result in figures["amd_families"].items():
        assert result["accuracy"] >= 0.80, (family, figures)
    for outcome in outcomes:
        case, decision = outcome.case, outcome.decision
        if case.voice_ms is not None:  # speech is never taken for a beep
            assert decision is None or decision.cause != "beep", (case.name, decision)
        if case.label.value == "human" and outcome.correct:
            assert decision is not None
            assert decision.at_ms <= HUMAN_DECISION_MS, (case.name, decision, figures)
        if case.greeting_end_ms is not None and outcome.correct:
            end = outcome.greeting_end
            assert end is not None, (case.name, figures)
            assert end.beep, (case.name, end)
            late = end.at_ms - case.greeting_end_ms
            assert 0 <= late <= GREETING_END_SLACK_MS, (case.name, end, case.greeting_end_ms)
