"""Which option did the caller choose? Matching a transcript against the request's options.

Pure and deterministic. Rules:

- Text is normalised: lower case, accents and punctuation removed, ``ok`` read as ``okay``,
  number words turned into digits (``twenty one`` -> ``21``, ``one`` -> ``1``).
- Every option's value and synonyms are phrases matched on whole tokens; a multi-word phrase
  matches the same token sequence, and ``never mind`` matches ``nevermind`` (two tokens
  spoken as one word, or the reverse). "no" never matches inside "know", "not", "nope" or "now".
- Small recognition errors are forgiven only on words of four letters or more (one edit:
  "canse" -> "cancel" is two, "confirmd" -> "confirm" is one); short words must be exact.
- A phrase right after a negation ("not sure", "don't cancel") is not a choice.
- The earliest match in the transcript wins; at the same position, the option listed first.
  The confidence is 1.0 for an exact match, lower for a forgiven error, and lower again when
  another option also appears in the answer.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

_UNITS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = {
    "twenty": 20,
    "thirty": 30,
    "forty": 40,
    "fifty": 50,
    "sixty": 60,
    "seventy": 70,
    "eighty": 80,
    "ninety": 90,
}
_ALIASES = {"ok": "okay", "okey": "okay"}
_NEGATIONS = frozenset(
    {"not", "dont", "never", "didnt", "doesnt", "cant", "cannot", "wont", "isnt", "arent"}
)
_FUZZY_MIN_LENGTH = 4


@dataclass(frozen=True)
class Option:
    value: str
    synonyms: tuple[str, ...] = ()
    dtmf: str | None = None  # a key that answers with this option ("1", "*", "#")


@dataclass(frozen=True)
class Match:
    value: str
    phrase: str  # the option phrase that matched, as given
    position: int  # token index in the normalised transcript
    confidence: float


def normalise(text: str) -> list[str]:
    """Tokens of ``text`` after case, accent, punctuation, alias and number normalisation."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    plain = re.sub(r"['\u2019]", "", plain)  # don't -> dont
    words = [_ALIASES.get(w, w) for w in re.findall(r"[a-z0-9]+", plain)]
    return _numbers(words)


def _numbers(words: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if word in _TENS:
            value = _TENS[word]
            if i + 1 < len(words) and words[i + 1] in _UNITS[1:10]:
                value += _UNITS.index(words[i + 1])
                i += 1
            out.append(str(value))
        elif word in _UNITS:
            out.append(str(_UNITS.index(word)))
        else:
            out.append(word)
        i += 1
    return out


def _within_one_edit(a: str, b: str) -> bool:
    if a == b:
        return True
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = j = edits = 0
    while i < len(a) and j < len(b):
        if a[i] == b[j]:
            i += 1
            j += 1
            continue
        edits += 1
        if edits > 1:
            return False
        if len(a) == len(b):
            i += 1
        j += 1
    return edits + (len(b) - j) + (len(a) - i) <= 1


def _token_score(spoken: str, wanted: str) -> float:
    """1.0 exact, 0.8 one edit on a long enough word, else 0."""
    if spoken == wanted:
        return 1.0
    if min(len(spoken), len(wanted)) >= _FUZZY_MIN_LENGTH and _within_one_edit(spoken, wanted):
        return 0.8
    return 0.0


@dataclass(frozen=True)
class _Phrase:
    option: int
    text: str
    tokens: tuple[str, ...]


class ChoiceMatcher:
    def __init__(self, options: Sequence[Option]) -> None:
        self.options = list(options)
        self._phrases: list[_Phrase] = []
        for index, option in enumerate(self.options):
            for text in (option.value, *option.synonyms):
                tokens = tuple(normalise(text))
                if tokens:
                    self._phrases.append(_Phrase(index, text, tokens))

    def match(self, transcript: str) -> Match | None:
        """The chosen option, or None when the answer names none of them."""
        words = normalise(transcript)
        hits: list[tuple[int, int, float, _Phrase]] = []  # (position, option, score, phrase)
        for phrase in self._phrases:
            found = self._find(words, phrase.tokens)
            if found is not None:
                hits.append((found[0], phrase.option, found[1], phrase))
        if not hits:
            return None
        hits.sort(key=lambda h: (h[0], h[1], -h[2]))
        position, option, score, phrase = hits[0]
        if len({h[1] for h in hits}) > 1:
            score *= 0.6  # the answer also names another option
        return Match(self.options[option].value, phrase.text, position, round(score, 3))

    def _find(self, words: list[str], tokens: tuple[str, ...]) -> tuple[int, float] | None:
        """Earliest (position, score) where ``tokens`` occur in ``words``, not negated."""
        joined = "".join(tokens)
        for start in range(len(words)):
            if start > 0 and words[start - 1] in _NEGATIONS:
                continue
            score = self._sequence_score(words, start, tokens)
            if score == 0.0 and len(tokens) == 1 and start + 1 < len(words):
                # "never mind" spoken for the phrase "nevermind"
                score = _token_score(words[start] + words[start + 1], joined)
            if score == 0.0 and len(tokens) > 1:
                # "nevermind" spoken for the phrase "never mind"
                score = _token_score(words[start], joined)
            if score > 0.0:
                return start, score
        return None

    @staticmethod
    def _sequence_score(words: list[str], start: int, tokens: tuple[str, ...]) -> float:
        if start + len(tokens) > len(words):
            return 0.0
        score = 1.0
        for spoken, wanted in zip(words[start : start + len(tokens)], tokens, strict=True):
            token = _token_score(spoken, wanted)
            if token == 0.0:
                return 0.0
            score = min(score, token)
        return score
