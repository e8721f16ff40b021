"""Atomic writes: a reader sees the old file or the complete new one, never a half-written one.

Text goes through `redact` on its way out: a credential from the environment never reaches a file
medinject writes, whatever the text (a config, a record, a test item that happens to contain it)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable

from medinject.util.secrets import TEXT_SUFFIXES, redact, secret_values

_UMASK = os.umask(0)  # the process's umask: reading it means setting it, so put it straight back
os.umask(_UMASK)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:  # a read-only or full directory: name the file that was to be written, not the temporary one
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the mode open() would
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None:  # no space, quota: name the file, not the temporary one
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def check_writable(folder: Path) -> None:
    """Make `folder` if needed and write a file there; an OSError naming the folder when the disk
    refuses (read-only, full, not ours): what a tool checks before its work, not after."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".medinject-write-check.", dir=folder)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(folder)) from None
    os.close(fd)
    os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, redact(text).encode("utf-8"))


def write_json_atomic(path: Path, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def redact_files(folder: Path) -> None:
    """Mask credentials in the text files another library wrote into `folder` (peft's
    adapter_config.json, a tokenizer's files), rewriting only those that hold one."""
    secrets = secret_values()
    if not secrets:
        return
    for path in Path(folder).rglob("*"):
        if not path.is_file() or path.suffix not in TEXT_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        masked = redact(text, secrets)
        if masked != text:
            write_bytes_atomic(path, masked.encode("utf-8", errors="surrogateescape"))


def read_json(path: Path) -> object:
    """A JSON file a tool needs; a missing, unreadable or damaged one is one line naming it."""
    return _parse(path, _read_text(path), json.loads)


def read_jsonl(path: Path) -> list:
    """A JSON Lines file a tool needs, every line parsed; a damaged line is named by its number."""
    return [row for _, row in read_jsonl_numbered(path)]


def read_jsonl_numbered(path: Path) -> list[tuple[int, object]]:
    """(line number, parsed line) of each line of a JSON Lines file that is not blank."""
    return [(number, _parse(f"{path}:{number}", line, json.loads))
            for number, line in enumerate(_read_text(path).splitlines(), start=1) if line.strip()]


def _read_text(path: Path) -> str:
    from medinject.util.errors import UserError

    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; the file is damaged") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None


def _parse(where, text: str, parse):
    from medinject.util.errors import UserError

    try:
        return parse(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); the file is damaged") from None
