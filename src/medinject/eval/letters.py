"""Reading option letters out of a model's answer, and scoring them.

The rule, applied in order to the generated text:

1. Only the first non-empty line is read (what follows is taken as explanation).
2. A leading label "Réponse(s)" or "Answer(s)", followed by ":" or "-", is dropped.
3. If what is left is only single letters and separators (spaces, punctuation, "et", "and", "ou"),
   every letter is taken, upper or lower case: "a c", "A, C", "C,A", "A et C".
4. Otherwise only capital letters standing alone are taken ("La réponse est B", "B. Metformine");
   a lone lower-case letter in a sentence is a word ("il a"), not an answer.
5. Letters that are not among the item's options are dropped; the rest are de-duplicated and sorted.

An answer with no letter left is an empty prediction, which is never correct.
"""

from __future__ import annotations

import re

_LABEL = re.compile(r"^\s*(r[ée]ponses?|answers?)\s*[:\-]\s*", re.IGNORECASE)
_CONNECTIVES = re.compile(r"\b(et|and|ou|or)\b", re.IGNORECASE)
_LONE_CAPITAL = re.compile(r"(?<![\w'’])([A-Z])(?![\w'’])")


def parse_letters(text: str, options: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    body = _LABEL.sub("", lines[0]) if lines else ""
    tokens = [t for t in re.split(r"[\W_]+", _CONNECTIVES.sub(" ", body)) if t]
    if tokens and all(len(t) == 1 and t.isascii() and t.isalpha() for t in tokens):
        found = [t.upper() for t in tokens]
    else:
        found = _LONE_CAPITAL.findall(body)
    allowed = set(options)
    return tuple(sorted({letter for letter in found if letter in allowed}))


def join_letters(letters: tuple[str, ...] | list[str]) -> str:
    return ", ".join(letters)


def split_letters(answer: str) -> set[str]:
    return {part.strip() for part in answer.split(",") if part.strip()}


def exact_match(prediction: str, reference: str) -> float:
    return float(split_letters(prediction) == split_letters(reference))


def hamming_score(prediction: str, reference: str) -> float:
    """|gold ∩ pred| / |gold ∪ pred| (1.0 when both are empty)."""
    pred, gold = split_letters(prediction), split_letters(reference)
    union = pred | gold
    return len(pred & gold) / len(union) if union else 1.0
