"""Contamination audit: training rows that repeat a test item, exactly or nearly.

A row's *question* is its instruction and context (options included), lower-cased, accents and case
folded, punctuation removed, whitespace collapsed. A training row matches a test item when

- exact: their normalized questions are equal, or
- near: at least `threshold` of the test item's word `ngram`-shingles occur in the training row
  (containment of the test item in the row; items shorter than `ngram` words match exactly only).

The answer is left out on purpose: a leaked question with a reworded answer is still a leak.

Normalization and shingling run vectorized (pyarrow compute, numpy 64-bit polynomial hashes over
word ids), in chunks of training rows; only rows that share a shingle with a test item are examined
one by one. Words absent from every test item cannot be part of a match and end shingles early.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medinject.data.rows import Example

MAX_POSTINGS = 20  # shingles found in more test items than this are treated as boilerplate
CHUNK = 50_000  # training rows per vectorized pass (bounds memory)
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for the polynomial shingle hash


def normalize(texts: list[str]) -> pa.Array:
    """Case-folded, accents removed, every run of non-letters/digits one space, trimmed (vectorized)."""
    arr = pc.utf8_normalize(pc.utf8_lower(pa.array(texts, type=pa.large_string())), "NFKD")
    arr = pc.replace_substring_regex(arr, r"\p{Mn}", "")
    arr = pc.replace_substring_regex(arr, r"[^\p{L}\p{N}]+", " ")
    return pc.utf8_trim_whitespace(arr)


def _questions(rows: list[Example]) -> pa.Array:
    return normalize([f"{r.instruction}\n{r.context}" for r in rows])


def _shingles(words: pa.ListArray, vocab: pa.Array, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hash, row) of every word n-gram made only of words in `vocab` (others cannot match a test item)."""
    ids = pc.fill_null(pc.index_in(words.flatten(), value_set=vocab), -1).to_numpy().astype(np.int64)
    offsets = words.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    starts = len(ids) - n + 1
    if starts <= 0:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    hashes = np.zeros(starts, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            hashes = hashes * _MULT + (ids[k : k + starts] + 1).astype(np.uint64)
    unknown = np.concatenate([[0], np.cumsum(ids < 0)])
    row = np.searchsorted(offsets, np.arange(starts), side="right") - 1
    keep = (unknown[n:] - unknown[:starts] == 0) & (np.arange(starts) + n <= offsets[row + 1])
    return hashes[keep], row[keep]


@dataclass
class Audit:
    contaminated: set[str] = field(default_factory=set)  # ids of training rows that match a test item
    # pairs[(source, test set)] = {"exact": n, "near": n}: training rows of the source matching the set
    pairs: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[tuple[str, str], list[dict]] = field(default_factory=lambda: defaultdict(list))


def audit(train: dict[str, list[Example]], tests: dict[str, list[Example]], ngram: int, threshold: float) -> Audit:
    items = [(set_name, item) for set_name, rows in tests.items() for item in rows]
    result = Audit()
    if not items:
        return result
    test_text = _questions([item for _, item in items])
    test_words = pc.utf8_split_whitespace(test_text)
    vocab = pc.unique(test_words.flatten())
    exact_index: dict[str, list[int]] = defaultdict(list)
    for j, text in enumerate(test_text.to_pylist()):
        exact_index[text].append(j)

    # test shingles: distinct (hash, item) pairs; boilerplate shingles dropped
    t_hash, t_item = _shingles(test_words, vocab, ngram)
    pairs = np.unique(np.stack([t_hash, t_item.astype(np.uint64)]), axis=1)
    t_hash, t_item = pairs[0], pairs[1].astype(np.int64)
    uniq, inverse, postings = np.unique(t_hash, return_inverse=True, return_counts=True)
    informative = postings[inverse] <= MAX_POSTINGS
    t_hash, t_item = t_hash[informative], t_item[informative]  # sorted by hash
    per_item = np.bincount(t_item, minlength=len(items))
    test_hashes = np.unique(t_hash)

    for source, rows in train.items():
        for start in range(0, len(rows), CHUNK):
            chunk = rows[start : start + CHUNK]
            text = _questions(chunk)
            matches: dict[int, dict[str, tuple[str, Example]]] = defaultdict(dict)
            for i in np.flatnonzero(pc.is_in(text, value_set=pa.array(list(exact_index), type=pa.large_string())).to_numpy(zero_copy_only=False)):
                for j in exact_index[text[int(i)].as_py()]:
                    matches[int(i)].setdefault(items[j][0], ("exact", items[j][1]))
            hashes, row = _shingles(pc.utf8_split_whitespace(text), vocab, ngram)
            hit = np.isin(hashes, test_hashes)
            hit_hashes, hit_rows = hashes[hit], row[hit]  # rows are non-decreasing: group by run
            bounds = np.flatnonzero(np.diff(hit_rows)) + 1
            for group_hashes, group_rows in zip(np.split(hit_hashes, bounds), np.split(hit_rows, bounds)):
                if not len(group_rows):
                    continue
                r = group_rows[0]
                row_hashes = np.unique(group_hashes)
                lo = np.searchsorted(t_hash, row_hashes, side="left")
                hi = np.searchsorted(t_hash, row_hashes, side="right")
                found = np.concatenate([t_item[a:b] for a, b in zip(lo, hi)])
                candidates, counts = np.unique(found, return_counts=True)
                for j, c in zip(candidates, counts):
                    if per_item[j] and c >= threshold * per_item[j]:
                        matches[int(r)].setdefault(items[j][0], ("near", items[j][1]))
            for i, by_set in matches.items():
                train_row = chunk[i]
                result.contaminated.add(train_row.id)
                for set_name, (kind, item) in by_set.items():
                    result.pairs[(source, set_name)][kind] += 1
                    if len(result.examples[(source, set_name)]) < 5:
                        result.examples[(source, set_name)].append(
                            {"kind": kind, "train": f"{train_row.file}:{train_row.line}", "test": f"{item.file}:{item.line}"}
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
