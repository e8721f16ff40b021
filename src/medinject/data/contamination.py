"""Contamination audit: training rows that repeat a test item, exactly or nearly.

A row's *question* is its instruction and context (options included), lower-cased and cut into
words at every character that is not a letter or a digit (accents are kept: folding them costs more
than half of the audit's time on the full corpus and a leak rarely loses only its accents). A training
row matches a test item when

- exact: their word sequences are equal, or
- near: at least `threshold` of the test item's word `ngram`-shingles occur in the training row
  (containment of the test item in the row; items shorter than `ngram` words match exactly only).

The answer is left out on purpose: a leaked question with a reworded answer is still a leak.

Splitting and shingling run vectorized (pyarrow compute, numpy 64-bit polynomial hashes over word
ids), in chunks of training rows. Words absent from every test item cannot be part of a match and
break shingles. Exact matches are found by a hash of each row's whole word-id sequence.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medinject.data.rows import Example, Rows

MAX_POSTINGS = 20  # shingles found in more test items than this are treated as boilerplate
CHUNK = 10_000  # training rows per vectorized pass (bounds memory)
THREADS = 2
_MULT = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant for the polynomial shingle hash


def _question_words(table: pa.Table) -> pa.ListArray:
    """Lower-cased words (runs of letters and digits) of each row's instruction and context."""
    text = pc.binary_join_element_wise(table.column("instruction"), table.column("context"), pa.scalar("\n", pa.large_string()))
    words = pc.split_pattern_regex(pc.utf8_lower(text), r"[^\p{L}\p{N}]+")
    return words.combine_chunks() if isinstance(words, pa.ChunkedArray) else words


def _word_ids(words: pa.ListArray, vocab: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(id in `vocab` of every non-empty word, -1 for words outside it; row offsets into the ids)."""
    flat = words.flatten()
    nonempty = pc.greater(pc.utf8_length(flat), 0)
    kept = np.concatenate([[0], np.cumsum(nonempty.to_numpy(zero_copy_only=False))])
    offsets = words.offsets.to_numpy().astype(np.int64)
    offsets = kept[offsets - offsets[0]]
    ids = pc.fill_null(pc.index_in(flat.filter(nonempty), value_set=vocab), -1).to_numpy().astype(np.int64)
    return ids, offsets


def _sequence_hashes(ids: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """A hash of each row's whole word sequence; 0 for rows with no word or a word outside the vocab."""
    lengths = np.diff(offsets)
    row = np.repeat(np.arange(len(lengths)), lengths)
    position = np.arange(len(ids)) - offsets[row]
    with np.errstate(over="ignore"):
        terms = (ids + 1).astype(np.uint64) * ((position + 1).astype(np.uint64) * _MULT)
        hashes = np.zeros(len(lengths), dtype=np.uint64)
        np.add.at(hashes, row, terms)
        hashes += lengths.astype(np.uint64) * np.uint64(0x632BE59BD9B4E019)
    unknown = np.concatenate([[0], np.cumsum(ids < 0)])
    valid = (lengths > 0) & (unknown[offsets[1:]] - unknown[offsets[:-1]] == 0)
    return np.where(valid, hashes, np.uint64(0))


def _shingles(ids: np.ndarray, offsets: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(hash, row) of every word n-gram made only of known words (others cannot match a test item)."""
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


def _near_matches(hashes, rows, t_hash, t_item, per_item, threshold) -> list[tuple[int, int]]:
    """(training row, test item) pairs where the row holds >= threshold of the item's shingles.

    `hashes`/`rows`: the training shingles that occur in some test item; `t_hash`/`t_item`: the test
    (shingle, item) pairs sorted by shingle. Every step is a whole-array operation."""
    if not len(hashes):
        return []
    order = np.lexsort((hashes, rows))
    hashes, rows = hashes[order], rows[order]
    distinct = np.ones(len(hashes), dtype=bool)
    distinct[1:] = (hashes[1:] != hashes[:-1]) | (rows[1:] != rows[:-1])
    hashes, rows = hashes[distinct], rows[distinct]
    lo = np.searchsorted(t_hash, hashes, side="left")
    lengths = np.searchsorted(t_hash, hashes, side="right") - lo
    ends = np.cumsum(lengths)
    positions = np.arange(ends[-1]) + np.repeat(lo - (ends - lengths), lengths)
    n_items = len(per_item)
    keys, counts = np.unique(np.repeat(rows, lengths) * n_items + t_item[positions], return_counts=True)
    train_rows, test_items = keys // n_items, keys % n_items
    ok = (per_item[test_items] > 0) & (counts >= threshold * per_item[test_items])
    return list(zip(train_rows[ok].tolist(), test_items[ok].tolist()))


@dataclass
class Audit:
    contaminated: set[str] = field(default_factory=set)  # ids of training rows that match a test item
    # pairs[(source, test set)] = {"exact": n, "near": n}: training rows of the source matching the set
    pairs: dict[tuple[str, str], Counter] = field(default_factory=lambda: defaultdict(Counter))
    examples: dict[tuple[str, str], list[dict]] = field(default_factory=lambda: defaultdict(list))


def audit(train: dict[str, Rows], tests: dict[str, Rows], ngram: int, threshold: float) -> Audit:
    items = [(set_name, item) for set_name, rows in tests.items() for item in rows]
    result = Audit()
    if not items:
        return result
    test_words = _question_words(Rows.concat(list(tests.values())).table)
    vocab = pc.unique(test_words.flatten())
    test_ids, test_offsets = _word_ids(test_words, vocab)
    exact_index: dict[int, list[int]] = defaultdict(list)
    for j, h in enumerate(_sequence_hashes(test_ids, test_offsets).tolist()):
        exact_index[h].append(j)

    # test shingles: distinct (hash, item) pairs sorted by hash; boilerplate shingles dropped
    t_hash, t_item = _shingles(test_ids, test_offsets, ngram)
    order = np.lexsort((t_item, t_hash))
    t_hash, t_item = t_hash[order], t_item[order]
    distinct = np.ones(len(t_hash), dtype=bool)
    distinct[1:] = (t_hash[1:] != t_hash[:-1]) | (t_item[1:] != t_item[:-1])
    t_hash, t_item = t_hash[distinct], t_item[distinct]
    _, inverse, postings = np.unique(t_hash, return_inverse=True, return_counts=True)
    informative = postings[inverse] <= MAX_POSTINGS
    t_hash, t_item = t_hash[informative], t_item[informative]
    per_item = np.bincount(t_item, minlength=len(items))
    test_hashes = np.unique(t_hash)

    def scan(chunk: pa.Table) -> dict[int, dict[str, tuple[str, Example]]]:
        ids, offsets = _word_ids(_question_words(chunk), vocab)
        matches: dict[int, dict[str, tuple[str, Example]]] = defaultdict(dict)
        for r, h in enumerate(_sequence_hashes(ids, offsets).tolist()):
            for j in exact_index.get(h, ()) if h else ():
                if np.array_equal(ids[offsets[r] : offsets[r + 1]], test_ids[test_offsets[j] : test_offsets[j + 1]]):
                    matches[r].setdefault(items[j][0], ("exact", items[j][1]))
        hashes, row = _shingles(ids, offsets, ngram)
        # membership by binary search: pc.is_in would rebuild a hash table of every test shingle per chunk
        where = np.minimum(np.searchsorted(test_hashes, hashes), len(test_hashes) - 1)
        hit = test_hashes[where] == hashes if len(test_hashes) else np.zeros(len(hashes), dtype=bool)
        for r, j in _near_matches(hashes[hit], row[hit], t_hash, t_item, per_item, threshold):
            matches[r].setdefault(items[j][0], ("near", items[j][1]))
        return matches

    # pyarrow and numpy release the GIL in their kernels: two threads keep both cores busy
    jobs = [(source, rows.table.slice(i, CHUNK)) for source, rows in train.items() for i in range(0, len(rows), CHUNK)]
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        for (source, chunk), matches in zip(jobs, pool.map(lambda job: scan(job[1]), jobs)):
            pa.default_memory_pool().release_unused()
            for i, by_set in matches.items():
                train_row = Rows(chunk)[i]
                result.contaminated.add(train_row.id)
                for set_name, (kind, item) in by_set.items():
                    result.pairs[(source, set_name)][kind] += 1
                    if len(result.examples[(source, set_name)]) < 5:
                        result.examples[(source, set_name)].append(
                            {"kind": kind, "train": f"{train_row.file}:{train_row.line}", "test": f"{item.file}:{item.line}"}
                        )
    return result


def contaminated_mask(rows: Rows, result: Audit) -> np.ndarray:
    ids = pa.array(sorted(result.contaminated), type=pa.string())
    return pc.is_in(rows.column("id"), value_set=ids).to_numpy(zero_copy_only=False)


def report(result: Audit, train: dict[str, Rows], dropped: bool, ngram: int, threshold: float) -> dict:
    """contamination.json: per source and test set, sorted by the share of the source that leaks."""
    per_source = []
    for source, rows in sorted(train.items()):
        leaked = int(contaminated_mask(rows, result).sum())
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
