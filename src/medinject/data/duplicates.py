"""Exact duplicate training rows, within a source and across sources.

Two rows are duplicates when their type, instruction, context and answer are identical (the origin
aside: the same question shipped by two sources is one question). The first occurrence, in source
name order then file order, is the original. `data.duplicates` says what happens to the others:
`drop` (default), `keep`, or `error` (stop, naming both rows).
"""

from __future__ import annotations

import hashlib

import numpy as np

from medinject.config import Duplicates
from medinject.data.rows import Rows
from medinject.util.errors import UserError


def _keys(rows: Rows) -> list[bytes]:
    columns = [rows.column(name).to_pylist() for name in ("type", "instruction", "context", "answer")]
    return [hashlib.blake2b("\x1f".join(values).encode(), digest_size=16).digest() for values in zip(*columns)]


def handle_duplicates(train: dict[str, Rows], action: Duplicates) -> tuple[dict[str, Rows], dict[str, dict]]:
    """(the sources with duplicates handled, per source: duplicates within it, duplicates of an earlier
    source's rows, and the action taken)."""
    seen: dict[bytes, tuple[str, int]] = {}  # key -> (source, row index) of its first occurrence
    handled, counts = {}, {}
    for name, rows in sorted(train.items()):
        duplicate = np.zeros(len(rows), dtype=bool)
        within = across = 0
        for index, key in enumerate(_keys(rows)):
            first = seen.setdefault(key, (name, index))
            if first == (name, index):
                continue
            duplicate[index] = True
            if first[0] == name:
                within += 1
            else:
                across += 1
            if action == Duplicates.error:
                original = train[first[0]][first[1]]
                row = rows[index]
                raise UserError(
                    f"{row.file}:{row.line}: duplicates {original.file}:{original.line} (same type, instruction, "
                    "context and answer); data.duplicates=drop drops such rows, keep keeps them"
                )
        counts[name] = {"within_source": within, "across_sources": across, "action": action.value}
        handled[name] = rows.filter(~duplicate) if action == Duplicates.drop and duplicate.any() else rows
    return handled, counts
