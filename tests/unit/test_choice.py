"""The choice matcher, table-driven: normalisation, phrases, ASR slips and substring traps."""

from __future__ import annotations

import pytest

from daemon.calls.choice import ChoiceMatcher, Option, normalise

CONFIRM = [
    Option("confirmed", ("yes", "yeah", "yep", "confirm", "okay", "sure")),
    Option("cancelled", ("no", "nope", "cancel", "nevermind")),
]
NUMBERS = [Option("1", ("one", "first")), Option("2", ("two", "second"))]
DEPARTMENTS = [
    Option("sales", ("talk to sales", "sales department")),
    Option("support", ("technical support", "help")),
]

CASES: list[tuple[list[Option], str, str | None]] = [
    (CONFIRM, "yes", "confirmed"),
    (CONFIRM, "Yes!", "confirmed"),
    (CONFIRM, "YEAH.", "confirmed"),
    (CONFIRM, "yeah sure", "confirmed"),
    (CONFIRM, "uh, yeah I guess", "confirmed"),
    (CONFIRM, "I confirm", "confirmed"),
    (CONFIRM, "confirmed", "confirmed"),
    (CONFIRM, "confirmd", "confirmed"),  # one-letter ASR slip on a long word
    (CONFIRM, "OK", "confirmed"),
    (CONFIRM, "okay then", "confirmed"),
    (CONFIRM, "yep yep", "confirmed"),
    (CONFIRM, "no thanks", "cancelled"),
    (CONFIRM, "No.", "cancelled"),
    (CONFIRM, "nope", "cancelled"),
    (CONFIRM, "cancel it please", "cancelled"),
    (CONFIRM, "cancelled", "cancelled"),
    (CONFIRM, "canceled", "cancelled"),  # American spelling: one edit
    (CONFIRM, "never mind", "cancelled"),  # two words for one phrase
    (CONFIRM, "yes no", "confirmed"),  # earliest wins
    (CONFIRM, "no, yes", "cancelled"),
    (CONFIRM, "I know", None),  # "no" is not in "know"
    (CONFIRM, "I don't know", None),
    (CONFIRM, "not really", None),  # "no" is not in "not"
    (CONFIRM, "now", None),
    (CONFIRM, "noon", None),
    (CONFIRM, "snow", None),
    (CONFIRM, "knot", None),
    (CONFIRM, "yesterday", None),  # "yes" is not in "yesterday"
    (CONFIRM, "unsure", None),
    (CONFIRM, "I'm not sure", None),  # negated
    (CONFIRM, "don't cancel", None),  # negated, and not a confirmation either
    (CONFIRM, "hello?", None),
    (CONFIRM, "", None),
    (CONFIRM, "...", None),
    (CONFIRM, "mmm hmm", None),
    (NUMBERS, "one", "1"),
    (NUMBERS, "press 1", "1"),
    (NUMBERS, "option two", "2"),
    (NUMBERS, "the second one", "2"),  # "second" comes before "one"
    (NUMBERS, "first", "1"),
    (NUMBERS, "someone", None),  # "one" is not in "someone"
    (NUMBERS, "twenty one", None),  # 21, not 1
    (NUMBERS, "twenty two", None),
    (DEPARTMENTS, "I want to talk to sales", "sales"),
    (DEPARTMENTS, "Sales department, please", "sales"),
    (DEPARTMENTS, "technical support please", "support"),
    (DEPARTMENTS, "help me", "support"),
    (DEPARTMENTS, "salesforce", None),
    (DEPARTMENTS, "talk to someone", None),  # a phrase needs all its words
    (DEPARTMENTS, "technical", None),  # nor part of a two-word phrase alone
]


@pytest.mark.parametrize(("options", "spoken", "expected"), CASES)
def test_choice(options: list[Option], spoken: str, expected: str | None) -> None:
    """The table: each spoken answer gives its option, or none."""
    match = ChoiceMatcher(options).match(spoken)
    assert (match.value if match else None) == expected


def test_confidence() -> None:
    """Exact beats a forgiven slip; naming two options lowers the confidence."""
    matcher = ChoiceMatcher(CONFIRM)
    exact, slip, both = matcher.match("yes"), matcher.match("confirmd"), matcher.match("yes no")
    assert exact is not None
    assert slip is not None
    assert both is not None
    assert exact.confidence == 1.0
    assert slip.confidence == 0.8
    assert both.confidence == 0.6
    assert (exact.phrase, exact.position) == ("yes", 0)


def test_normalise() -> None:
    """Case, accents, apostrophes, punctuation, aliases and numbers."""
    assert normalise("Don't, CAFÉ! ok twenty-one 3") == ["dont", "cafe", "okay", "21", "3"]
    assert normalise("Thirty five seventy") == ["35", "70"]
