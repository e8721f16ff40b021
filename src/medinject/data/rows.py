"""The one example record every loader normalizes to, and the checks every row goes through.

A row in the MedInjection-FR schema is `{instruction, context, answer, type, origin}`. Multiple-choice
rows carry their options as lines `A. ...` at the end of `context` (chat-format items give them as
`classes` instead); their answer is one letter (`mcqu`) or letters joined by ", " (`mcq`). A chat item
keeps its own prompt turns (`messages`, JSON, its assistant turns removed): the released evaluation
prompts with them. Every problem is reported as `file:row: field 'name': what is wrong`.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from medinject.config import Origin, TaskType
from medinject.util.errors import UserError

FIELDS = ("instruction", "context", "answer", "type", "origin")
_OPTION_LINE = re.compile(r"^([A-Z])[.)]\s+\S")
_LETTERS = re.compile(r"[A-Z](\s*,\s*[A-Z])*")


@dataclass(frozen=True, slots=True)
class Example:
    id: str  # content hash: identical rows get the same id wherever they come from
    origin: str
    type: str
    instruction: str
    context: str
    answer: str
    options: tuple[str, ...]  # option letters for mcq / mcqu, empty for oeq
    split: str
    file: str
    line: int  # 1-based row number in `file`
    messages: str = ""  # chat items: their prompt turns as JSON [{role, content}...]; "" for schema rows


class BadRow(UserError):
    """A row that fails a check; `reason` is the message without its location (for skip counts)."""

    def __init__(self, where: str, reason: str):
        super().__init__(f"{where}: {reason}")
        self.reason = reason


def option_letters(context: str) -> tuple[str, ...]:
    """Letters of the trailing block of `X. text` lines of a multiple-choice context."""
    letters: list[str] = []
    for line in reversed(context.strip().splitlines()):
        match = _OPTION_LINE.match(line.strip())
        if not match:
            break
        letters.append(match.group(1))
    return tuple(reversed(letters))


def gold_letters(answer: str) -> tuple[str, ...]:
    """The letters of a gold multiple-choice answer ("A, C" -> ("A", "C")); () if it is not letters."""
    if not _LETTERS.fullmatch(answer.strip()):
        return ()
    return tuple(part.strip() for part in answer.split(","))


def example_id(origin: str, type_: str, instruction: str, context: str, answer: str) -> str:
    digest = hashlib.sha256("\x1f".join((origin, type_, instruction, context, answer)).encode())
    return digest.hexdigest()[:16]


def make_example(
    raw: dict,
    file: str,
    line: int,
    split: str,
    origin: str | None,
    type_: str | None = None,
    options: tuple[str, ...] | None = None,
    messages: str = "",
) -> Example:
    """Check one row (already renamed to our field names) and build its record.

    `origin` / `type_` fill in rows that lack the column (e.g. per-source files whose folder gives the
    type); a row whose own value disagrees with the source's origin is refused. `options` is given
    by chat-format items, otherwise read from the context; `messages` too (their prompt turns, JSON).
    """
    where = f"{file}:{line}"
    if not isinstance(raw, dict):
        raise BadRow(where, f"a row must be a JSON object, got {type(raw).__name__}")
    values = {"type": type_, "origin": origin, "context": ""}
    for name in FIELDS:
        value = raw.get(name, values.get(name))
        if value is None and name == "origin":
            value = ""  # a test set of unknown provenance (training sources always have an origin)
        if value is None:
            raise BadRow(where, f"field '{name}': missing")
        if not isinstance(value, str):
            raise BadRow(where, f"field '{name}': expected a string, got {type(value).__name__}")
        values[name] = value
    if values["type"] not in TaskType.__members__:
        raise BadRow(where, f"field 'type': {values['type']!r} is not one of {', '.join(TaskType.__members__)}")
    if values["origin"] and values["origin"] not in Origin.__members__:
        raise BadRow(where, f"field 'origin': {values['origin']!r} is not one of {', '.join(Origin.__members__)}")
    if origin is not None and values["origin"] != origin:
        raise BadRow(where, f"field 'origin': {values['origin']!r} in a source whose origin is {origin!r}")
    if not values["instruction"].strip():
        raise BadRow(where, "field 'instruction': empty")
    answer = values["answer"].strip()
    if not answer:
        raise BadRow(where, "field 'answer': empty")

    found: tuple[str, ...] = ()
    if values["type"] in (TaskType.mcqu.value, TaskType.mcq.value):
        found = tuple(options) if options is not None else option_letters(values["context"])
        if len(found) < 2:
            field_name = "classes" if options is not None else "context"
            raise BadRow(where, f"field '{field_name}': a {values['type']} row needs at least two options ('A. ...' lines)")
        letters = gold_letters(answer)
        if not letters:
            raise BadRow(where, f"field 'answer': {answer!r} is not letters joined by ', '")
        if unknown := [x for x in letters if x not in found]:
            raise BadRow(where, f"field 'answer': {', '.join(unknown)} not among the options {''.join(found)}")
        if values["type"] == TaskType.mcqu.value and len(letters) != 1:
            raise BadRow(where, f"field 'answer': an mcqu row has exactly one correct letter, got {answer!r}")
        answer = ", ".join(sorted(set(letters)))
    return Example(
        id=example_id(values["origin"], values["type"], values["instruction"], values["context"], answer),
        origin=values["origin"],
        type=values["type"],
        instruction=values["instruction"],
        context=values["context"],
        answer=answer,
        options=found,
        split=split,
        file=file,
        line=line,
        messages=messages,
    )


class Rows:
    """Checked rows held column-wise in Arrow; `Example` objects are made only on demand.

    A source of the real dataset has up to ~420K rows: as Python objects they would take several GB,
    as Arrow columns about their UTF-8 size. The audit and the mix work on the columns; only the
    selected examples become Python records.
    """

    SCHEMA = pa.schema(
        [
            ("id", pa.string()),
            ("origin", pa.string()),
            ("type", pa.string()),
            ("instruction", pa.large_string()),
            ("context", pa.large_string()),
            ("answer", pa.large_string()),
            ("options", pa.list_(pa.string())),
            ("split", pa.string()),
            ("file", pa.string()),
            ("line", pa.int64()),
            ("messages", pa.large_string()),
        ]
    )

    def __init__(self, table: pa.Table | None = None):
        self.table = table if table is not None else self.SCHEMA.empty_table()

    @classmethod
    def from_examples(cls, examples: list[Example]) -> "Rows":
        columns = {name: [getattr(e, name) for e in examples] for name in cls.SCHEMA.names}
        columns["options"] = [list(o) for o in columns["options"]]
        return cls(pa.table(columns, schema=cls.SCHEMA))

    @classmethod
    def concat(cls, parts: list["Rows"]) -> "Rows":
        tables = [p.table for p in parts if p.table.num_rows]
        return cls(pa.concat_tables(tables) if tables else None)

    def __len__(self) -> int:
        return self.table.num_rows

    def column(self, name: str) -> pa.ChunkedArray:
        return self.table.column(name)

    def _example(self, row: dict) -> Example:
        return Example(**{**row, "options": tuple(row["options"])})

    def __getitem__(self, index):
        if isinstance(index, slice):
            return Rows(self.table.take(pa.array(range(len(self))[index], type=pa.int64())))
        if index < 0:
            index += len(self)
        return self._example(self.table.slice(index, 1).to_pylist()[0])

    def __iter__(self):
        for batch in self.table.to_batches(max_chunksize=10_000):
            yield from (self._example(row) for row in batch.to_pylist())

    def take(self, indices) -> "Rows":
        """Rows at `indices`, in that order. Taken batch by batch: pyarrow's take on a chunked table
        may first concatenate every chunk, a full copy of a source for a 30K-row selection."""
        indices = np.asarray(indices, dtype=np.int64)
        if not len(indices):
            return Rows(self.table.slice(0, 0))
        batches = self.table.to_batches()
        starts = np.cumsum([0] + [b.num_rows for b in batches])
        order = np.argsort(indices, kind="stable")
        which = np.searchsorted(starts, indices[order], side="right") - 1
        parts = [
            batches[b].take(pa.array(indices[order][which == b] - starts[b]))
            for b in np.unique(which)
        ]
        gathered = pa.Table.from_batches(parts, schema=self.table.schema)  # in sorted index order
        return Rows(gathered.take(pa.array(np.argsort(order, kind="stable"))))

    def filter(self, mask) -> "Rows":
        return Rows(self.table.filter(pa.array(mask, type=pa.bool_())))

    def examples(self) -> list[Example]:
        return list(self)
