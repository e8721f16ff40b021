"""Contamination audit: training rows that repeat a test item, exactly or nearly.

A row's *question* is its instruction and context (options included), lower-cased, accents and case
folded, punctuation removed, whitespace collapsed. A training row matches a test item when

- exact: their normalized questions are equal, or
- near: at least `threshold` of the test item's word `ngram`-shingles occur in the training row
  (containment of the test item in the row; items shorter than `ngram` words match exactly only).

The answer is left out on purpose: a leaked question with a reworded answer is still a leak.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from medinject.data.rows import Example

_NON_WORD = re.compile(r"[\W_]+")
MAX_POSTINGS = 20  # shingles found in more test items than this are treated as boilerplate


def normalize(text: str) -> list[str]:
    folded = unicodedata.normalize("NFKD", text.casefold())
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    return [w for w in _NON_WORD.split(folded) if w]


def _question(example: Example) -> list[str]:
    return normalize(f"{example.instruction}\n{example.context}")


def _shingles(words: list[str], n: int) -> set[int]:
    return {hash(" ".join(words[i : i + n])) for i in range(len(words) - n + 1)}


@dataclass
class Audit:
    contaminated: set[str] = field(default_factory=set)  # ids of training rows that match a test item
    # pairs[(source, test set)] = {"exact": n, "near": n}: training rows of the source matching the set
    pairs: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[tuple[str, str], list[dict]] = field(default_factory=lambda: defaultdict(list))


def audit(train: dict[str, list[Example]], tests: dict[str, list[Example]], ngram: int, threshold: float) -> Audit:
    exact_index: dict[str, list[tuple[str, Example]]] = defaultdict(list)
    shingle_index: dict[int, list[int]] = defaultdict(list)
    items: list[tuple[str, Example]] = []
    for set_name, rows in tests.items():
        for item in rows:
            words = _question(item)
            exact_index[" ".join(words)].append((set_name, item))
            for s in _shingles(words, ngram):
                shingle_index[s].append(len(items))
            items.append((set_name, item))
    # A shingle shared by many test items is boilerplate ("parmi les propositions suivantes ..."): it
    # says nothing about which item leaked and would make every lookup slow. Containment is measured
    # on the informative shingles only.
    shingle_index = {s: postings for s, postings in shingle_index.items() if len(postings) <= MAX_POSTINGS}
    informative = Counter(j for postings in shingle_index.values() for j in postings)

    result = Audit()
    for source, rows in train.items():
        for row in rows:
            words = _question(row)
            matches: dict[str, tuple[str, Example]] = {}
            for set_name, item in exact_index.get(" ".join(words), ()):
                matches.setdefault(set_name, ("exact", item))
            hits: Counter = Counter()
            for s in _shingles(words, ngram):
                for j in shingle_index.get(s, ()):
                    hits[j] += 1
            for j, n in hits.items():
                set_name, item = items[j]
                if n >= threshold * informative[j]:
                    matches.setdefault(set_name, ("near", item))
            for set_name, (kind, item) in matches.items():
                result.contaminated.add(row.id)
                result.pairs[(source, set_name)][kind] += 1
                if len(result.examples[(source, set_name)]) < 5:
                    result.examples[(source, set_name)].append(
                        {"kind": kind, "train": f"{row.file}:{row.line}", "test": f"{item.file}:{item.line}"}
                    )
    return result


def report(result: Audit, train: dict[str, list[Example]], dropped: bool, ngram: int, threshold: float) -> dict:
    """contamination.json: per source and test set, sorted by the share of the source that leaks."""
    per_source = []
    for source, rows in sorted(train.items()):
        leaked = sum(1 for r in rows if r.id in result.contaminated)
        per_source.append(
            {
                "source": source,
                "rows": len(rows),
                "contaminated": leaked,
                "rate": leaked / len(rows) if rows else 0.0,
                "by_test_set": {
                    test_set: {**dict(counter), "examples": result.examples[(src, test_set)]}
                    for (src, test_set), counter in sorted(result.pairs.items())
                    if src == source
                },
            }
        )
    per_source.sort(key=lambda entry: entry["rate"], reverse=True)
    return {
        "method": {"ngram": ngram, "threshold": threshold, "fields": ["instruction", "context"]},
        "action": "dropped" if dropped else "reported only",
        "dropped": sum(e["contaminated"] for e in per_source) if dropped else 0,
        "sources": per_source,
    }
