"""Rows in the MedInjection-FR schema, read from JSONL and checked one by one.

A row is `{instruction, context, answer, type, origin}`. Multiple-choice rows carry their options as
lines `A. ...` at the end of `context`; their answer is one letter (`mcqu`) or sorted letters joined by
", " (`mcq`). Every problem is reported as `file:line: field 'name': what is wrong`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from medinject.config import Origin, TaskType
from medinject.errors import UserError

FIELDS = ("instruction", "context", "answer", "type", "origin")
_OPTION_LINE = re.compile(r"^([A-Z])[.)]\s+\S")


@dataclass(frozen=True)
class Example:
    id: str  # content hash: identical rows get the same id wherever they come from
    origin: str
    type: str
    instruction: str
    context: str
    answer: str
    options: tuple[str, ...]  # option letters for mcq / mcqu, empty for oeq
    file: str
    line: int


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
    """The letters of a gold multiple-choice answer ("A, C" -> ("A", "C"))."""
    parts = [p.strip() for p in answer.split(",")]
    return tuple(parts) if all(re.fullmatch(r"[A-Z]", p) for p in parts) else ()


def example_id(origin: str, type_: str, instruction: str, context: str, answer: str) -> str:
    digest = hashlib.sha256("\x1f".join((origin, type_, instruction, context, answer)).encode())
    return digest.hexdigest()[:16]


def _parse_row(raw: object, where: str, expected_origin: str | None) -> Example:
    if not isinstance(raw, dict):
        raise UserError(f"{where}: a row must be a JSON object, got {type(raw).__name__}")
    for name in FIELDS:
        if name not in raw:
            raise UserError(f"{where}: field '{name}': missing")
        if not isinstance(raw[name], str):
            raise UserError(f"{where}: field '{name}': expected a string, got {type(raw[name]).__name__}")
    type_, origin = raw["type"], raw["origin"]
    if type_ not in TaskType.__members__:
        raise UserError(f"{where}: field 'type': {type_!r} is not one of {', '.join(TaskType.__members__)}")
    if origin not in Origin.__members__:
        raise UserError(f"{where}: field 'origin': {origin!r} is not one of {', '.join(Origin.__members__)}")
    if expected_origin is not None and origin != expected_origin:
        raise UserError(f"{where}: field 'origin': {origin!r} in a file of the {expected_origin!r} source")
    if not raw["instruction"].strip():
        raise UserError(f"{where}: field 'instruction': empty")
    if not raw["answer"].strip():
        raise UserError(f"{where}: field 'answer': empty")

    options: tuple[str, ...] = ()
    if type_ in (TaskType.mcqu.value, TaskType.mcq.value):
        options = option_letters(raw["context"])
        if len(options) < 2:
            raise UserError(f"{where}: field 'context': a {type_} row needs option lines 'A. ...', 'B. ...' at its end")
        letters = gold_letters(raw["answer"].strip())
        if not letters:
            raise UserError(f"{where}: field 'answer': {raw['answer']!r} is not letters joined by ', '")
        if unknown := [x for x in letters if x not in options]:
            raise UserError(f"{where}: field 'answer': {', '.join(unknown)} not among the options {''.join(options)}")
        if type_ == TaskType.mcqu.value and len(letters) != 1:
            raise UserError(f"{where}: field 'answer': an mcqu row has exactly one correct letter, got {raw['answer']!r}")
    answer = raw["answer"].strip()
    return Example(
        id=example_id(origin, type_, raw["instruction"], raw["context"], answer),
        origin=origin,
        type=type_,
        instruction=raw["instruction"],
        context=raw["context"],
        answer=answer,
        options=options,
        file=where.rsplit(":", 1)[0],
        line=int(where.rsplit(":", 1)[1]),
    )


def read_jsonl(path: Path, expected_origin: str | None = None) -> list[Example]:
    rows: list[Example] = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            where = f"{path}:{number}"
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as err:
                raise UserError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
            rows.append(_parse_row(raw, where, expected_origin))
    return rows


def resolve_files(spec: str, key: str) -> list[Path]:
    """A JSONL file, or a directory whose *.jsonl files (recursively) are read in path order."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        found = sorted(path.rglob("*.jsonl"))
        if not found:
            raise UserError(f"{key}: no *.jsonl file under {path}")
        return found
    raise UserError(f"{key}: file not found: {path}")


def load_rows(specs: list[str], key: str, expected_origin: str | None = None) -> list[Example]:
    rows: list[Example] = []
    for spec in specs:
        for path in resolve_files(spec, key):
            rows.extend(read_jsonl(path, expected_origin))
    return rows
