"""Reading option letters out of a model's answer, and scoring them, under either protocol.

`parse_letters` is the lenient protocol's rule (`eval.protocol=lenient`), lenient with what a model
writes around its letters; `parse_letters_released` is the study's released rule, the strict
protocol's (`eval.protocol=strict`), which empties any answer holding anything but option letters and
a few separators. Each protocol (`medinject.eval.protocols`) reads with its own.

The lenient rule, applied in order to the generated text:

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


# The released rule: after upper-casing, an answer may hold only the item's option letters and these.
RELEASED_SEPARATORS = frozenset(",;/| \n.():+")


def parse_letters_released(text: str, options: tuple[str, ...] | list[str], single: bool) -> tuple[str, ...]:
    """The study's released reading: upper-case the stripped output; if any alphabetic character is
    not an option letter, or any other character is not a separator above, nothing is read;
    otherwise the option letters in the order written, each once. A single-answer item (`single`)
    needs exactly one letter, else nothing is read."""
    text = text.strip().upper()
    allowed = set(options)
    for char in text:
        if char.isalpha() and char not in allowed:
            return ()
        if not char.isalpha() and char not in RELEASED_SEPARATORS:
            return ()
    letters = tuple(dict.fromkeys(char for char in text if char in allowed))
    if single and len(letters) != 1:
        return ()
    return letters


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
