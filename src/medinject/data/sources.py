"""Loaders: every supported layout -> `Example` records, checked row by row.

Layouts (`format:` in a source or test-set config, see `SourceFormat`):
  jsonl / parquet       local files in the MedInjection-FR schema, `columns` renames other names
  medinjection_all      `<paths.medinjection>/ALL/**/<split>-*.parquet`, rows picked by their `origin`
  medinjection_source   `<paths.medinjection>/<subset>/<Split>/<type>/*.json`, type from the folder;
                        each row a schema row or a chat item (`{messages, classes, answer}`)
  chat_json             JSON lists of `{messages, classes, answer}` evaluation items
  hub                   `datasets.load_dataset(hub_id, hub_config, split=split)`
  auto                  the MedInjection-FR download when `paths.medinjection` is set (ALL/ first,
                        else `<subset>/`), otherwise `files` as JSONL (the bundled sample)
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig

from medinject.config import OnBadRow, SourceFormat, TaskType
from medinject.data.rows import BadRow, Example, Rows, make_example
from medinject.util.errors import UserError

BATCH = 20_000  # rows checked in Python before they move into Arrow
SPLIT_FOLDERS = {"train": "Train", "validation": "Validation", "test": "Test"}


@dataclass
class Loaded:
    rows: Rows = field(default_factory=Rows)
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256 of its bytes
    skipped: Counter = field(default_factory=Counter)  # reason -> rows dropped (on_bad_row=skip)


_HASHES: dict[tuple, str] = {}


def file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
        _HASHES[key] = digest.hexdigest()
    return _HASHES[key]


def _expand(specs: list[str], suffixes: tuple[str, ...], key: str) -> list[Path]:
    """Files as given, and the matching files under given directories, in path order."""
    if not specs:
        raise UserError(f"{key}: no files given")
    found: list[Path] = []
    for spec in dict.fromkeys(specs):  # a file or folder listed twice is read once
        path = Path(spec).expanduser()
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            inside = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
            if not inside:
                raise UserError(f"{key}: no {'/'.join(suffixes)} file under {path}")
            found.extend(inside)
        else:
            raise UserError(f"{key}: file not found: {path}")
    unique = {p.resolve(): p for p in reversed(found)}  # the same file reached twice (a folder and a file in it)
    return [p for p in found if unique.get(p.resolve()) is p]


def _rename(raw: object, columns: dict[str, str]) -> object:
    if not columns or not isinstance(raw, dict):
        return raw
    renamed = dict(raw)
    for ours, theirs in columns.items():
        if theirs in raw:
            renamed[ours] = raw[theirs]
    return renamed


def _json_rows(path: Path) -> Iterator[tuple[object, int]]:
    """(row, 1-based row number) from a JSON Lines file, or a .json file holding a list of rows.
    Files are UTF-8 (a byte-order mark is tolerated); anything else is refused, naming the file."""
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except UnicodeDecodeError as err:
            raise UserError(_not_utf8(path, err)) from None
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
        if not isinstance(data, list):
            raise UserError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        yield from ((row, i) for i, row in enumerate(data, start=1))
        return
    number = 0
    try:
        with path.open(encoding="utf-8-sig") as handle:
            for number, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    yield json.loads(text), number
                except json.JSONDecodeError as err:
                    yield BadRow(f"{path}:{number}", f"not valid JSON ({err.msg} at column {err.colno})"), number
    except UnicodeDecodeError as err:
        raise UserError(_not_utf8(path, err, after_row=number)) from None


def _not_utf8(path: Path, err: UnicodeDecodeError, after_row: int = 0) -> str:
    where = f" after row {after_row}" if after_row else ""
    return f"{path}: not UTF-8 text (undecodable byte 0x{err.object[err.start]:02x}{where}); save the file as UTF-8"


def _parquet_rows(path: Path, origin: str | None, columns: dict[str, str]) -> Iterator[tuple[object, int]]:
    """Rows of a parquet file, read in record batches (a hub shard holds ~100K rows: reading it whole
    would hold it twice, as Arrow and as Python rows); rows of another origin are skipped in Arrow."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        handle = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for unreadable files
        raise UserError(f"{path}: not a readable parquet file ({str(err).splitlines()[0]})") from None
    origin_column = columns.get("origin", "origin")
    first = 0
    for batch in handle.iter_batches(batch_size=10_000):
        size = batch.num_rows
        index = np.arange(size)
        if origin is not None and origin_column in batch.schema.names:
            index = np.flatnonzero(pc.equal(batch.column(origin_column), origin).to_numpy(zero_copy_only=False))
            batch = batch.take(index)
        for row, i in zip(batch.to_pylist(), index.tolist()):
            yield row, first + i + 1
        first += size


def is_chat_item(raw: object) -> bool:
    return isinstance(raw, dict) and isinstance(raw.get("messages"), list)


def _chat_item(raw: dict, where: str, type_: str | None = None) -> tuple[dict, tuple[str, ...] | None, str, str]:
    """A `{messages, classes, answer}` item as (schema row, options, task type, prompt turns as JSON).

    The options are its `classes`; the answer its `answer` ("A, C" or ["A", "C"]), else its first
    assistant message; the task type `type_` (a per-source folder) or, without one, oeq when it has
    no classes, mcqu with one gold letter, mcq with several. The prompt turns are its messages
    without the assistant's (the released evaluation prompts with exactly these)."""
    turns = raw["messages"]
    for number, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            raise BadRow(where, f"field 'messages': turn {number} is not {{role, content}} strings")
    answer = raw.get("answer")
    if answer is None:  # an open answer's reference: the first assistant message
        answer = next((t["content"] for t in turns if t["role"] == "assistant"), None)
    if isinstance(answer, list):
        answer = ", ".join(str(a).strip() for a in answer)
    prompt = [{"role": t["role"], "content": t["content"]} for t in turns if t["role"] != "assistant"]
    row = {"instruction": "\n\n".join(t["content"] for t in turns if t["role"] == "user"), "context": "", "answer": answer}
    if "origin" in raw:
        row["origin"] = raw["origin"]
    classes = raw.get("classes") or []
    if not isinstance(classes, list):
        raise BadRow(where, f"field 'classes': expected a list of option letters, got {type(classes).__name__}")
    options = tuple(str(c).strip() for c in classes) or None
    if type_ is None:
        letters = [p for p in str(answer or "").replace(" ", "").split(",") if p]
        type_ = TaskType.oeq.value if options is None else TaskType.mcqu.value if len(letters) == 1 else TaskType.mcq.value
    return row, options, type_, json.dumps(prompt, ensure_ascii=False)


def resolve_format(src: DictConfig, paths: DictConfig, key: str) -> SourceFormat:
    if src.format != SourceFormat.auto:
        return src.format
    if not paths.medinjection:
        return SourceFormat.jsonl
    root = Path(paths.medinjection).expanduser()
    if not root.is_dir():
        raise UserError(f"paths.medinjection: {root} is not a folder")
    if (root / "ALL").is_dir():
        return SourceFormat.medinjection_all
    if src.subset and (root / src.subset).is_dir():
        return SourceFormat.medinjection_source
    raise UserError(f"paths.medinjection: {root} holds neither ALL/ nor {src.subset}/ (needed by {key})")


def _medinjection_root(paths: DictConfig, key: str) -> Path:
    if not paths.medinjection:
        raise UserError(f"{key}: this format reads from paths.medinjection, which is not set")
    return Path(paths.medinjection).expanduser()


def source_files(src: DictConfig, paths: DictConfig, key: str) -> list[tuple[Path, str | None]]:
    """(file, task type given by its folder or None) for every file a source reads; [] for the hub."""
    fmt = resolve_format(src, paths, key)
    split = src.split
    if fmt == SourceFormat.hub:
        return []
    if fmt == SourceFormat.medinjection_all:
        root = _medinjection_root(paths, key) / "ALL"
        files = sorted(p for p in root.rglob("*.parquet") if p.name.startswith(f"{split}-") or p.stem == split)
        if not files:
            raise UserError(f"{key}: no {split}-*.parquet under {root}")
        return [(p, None) for p in files]
    if fmt == SourceFormat.medinjection_source:
        folder = _medinjection_root(paths, key) / (src.subset or "") / SPLIT_FOLDERS.get(split, split)
        typed = [(p, p.parent.name) for t in TaskType.__members__ for p in sorted((folder / t).glob("*.json*"))]
        if not typed:
            raise UserError(f"{key}: no {'/'.join(TaskType.__members__)} JSON files under {folder}")
        return typed
    if fmt == SourceFormat.parquet:
        return [(p, None) for p in _expand(list(src.files), (".parquet",), f"{key}.files")]
    suffixes = (".json",) if fmt == SourceFormat.chat_json else (".jsonl", ".json")
    return [(p, None) for p in _expand(list(src.files), suffixes, f"{key}.files")]


def load_source(src: DictConfig, paths: DictConfig, key: str, on_bad_row: OnBadRow = OnBadRow.error) -> Loaded:
    """Every row of one source or test set, normalized and checked."""
    fmt = resolve_format(src, paths, key)
    origin = src.origin.value if src.origin is not None else None
    columns = dict(src.columns)
    split = src.split
    loaded = Loaded()
    pending: list[Example] = []  # checked rows not yet moved into Arrow
    parts: list[Rows] = []

    def take(raw: object, file: str, line: int, type_: str | None = None, chat: bool = False) -> None:
        try:
            if isinstance(raw, BadRow):
                raise raw
            options, messages = None, ""
            if chat and is_chat_item(raw):  # chat_json files, and per-source files row by row
                raw, options, type_, messages = _chat_item(raw, f"{file}:{line}", type_)
            elif chat and fmt == SourceFormat.chat_json:
                raise BadRow(f"{file}:{line}", "field 'messages': missing (a chat_json item is {messages, classes, answer})")
            pending.append(make_example(_rename(raw, columns), file, line, split, origin, type_, options, messages))
        except BadRow as bad:
            if on_bad_row == OnBadRow.error:
                raise
            loaded.skipped[bad.reason] += 1
        if len(pending) >= BATCH:
            parts.append(Rows.from_examples(pending))
            pending.clear()

    def finish() -> Loaded:
        parts.append(Rows.from_examples(pending))
        loaded.rows = Rows.concat(parts)
        if not len(loaded.rows):
            why = f" ({sum(loaded.skipped.values())} bad rows skipped)" if loaded.skipped else ""
            raise UserError(f"{key}: no usable {split} row in {', '.join(loaded.files) or 'its files'}{why}")
        return loaded

    if fmt == SourceFormat.hub:
        if not src.hub_id:
            raise UserError(f"{key}.hub_id: format hub needs a dataset id")
        import datasets

        try:
            rows = datasets.load_dataset(src.hub_id, src.hub_config, split=split)
        except Exception as err:  # network, auth, unknown id or split: one line for the user
            raise UserError(f"{key}.hub_id: cannot load {src.hub_id!r} split {split!r}: {str(err).splitlines()[0]}") from None
        loaded.files[f"hub:{src.hub_id}"] = rows._fingerprint
        origin_column = columns.get("origin", "origin")
        for i, raw in enumerate(rows, start=1):
            if origin is None or raw.get(origin_column, origin) == origin:  # ALL mixes the three origins
                take(raw, src.hub_id, i)
        return finish()

    typed = source_files(src, paths, key)
    for path, type_ in typed:
        name = str(path)  # one string shared by all rows of the file
        loaded.files[name] = file_sha256(path)
        if path.suffix == ".parquet":
            rows = _parquet_rows(path, origin, columns)
        else:
            rows = _json_rows(path)
        chat = fmt in (SourceFormat.chat_json, SourceFormat.medinjection_source)
        for raw, line in rows:
            take(raw, name, line, type_, chat)
    return finish()
