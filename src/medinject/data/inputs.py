"""The files a run reads, by content: recorded in the run directory, compared when it runs again.

Paths are run control (a copy of the same data elsewhere is the same input), contents are not: a run
directory whose results or checkpoints came from files that have since changed is neither skipped
nor resumed as if they had not.
"""

from __future__ import annotations

from medinject.config import DataSettings
from medinject.data.sources import file_sha256, source_files
from medinject.util.errors import UserError


def input_hashes(cfg: DataSettings) -> dict[str, str]:
    """Content hash of every file the data stage reads, training sources and test sets (hub datasets
    are keyed by id and split, so they have no file here)."""
    hashes = {}
    groups = [("data.sources", cfg.data.sources), ("eval.test_sets", cfg.test_sets)]
    for prefix, group in groups:
        for name, src in sorted(group.items()):
            for path, _ in source_files(src, cfg.paths, f"{prefix}.{name}"):
                hashes[str(path)] = file_sha256(path)
    return dict(sorted(hashes.items()))


def changed_inputs(recorded: dict[str, str], current: dict[str, str]) -> list[str]:
    """The current files whose contents the recorded run did not read (paths may differ: a copy of
    the same data moved elsewhere is the same input), and recorded contents now gone."""
    before, now = set(recorded.values()), set(current.values())
    changed = [path for path, digest in sorted(current.items()) if digest not in before]
    missing = [path for path, digest in sorted(recorded.items()) if digest not in now and path not in current]
    return changed + missing


def check_inputs(recorded: dict[str, str] | None, current: dict[str, str], run_dir) -> None:
    """Stop, naming a changed file, when a run directory's results or checkpoints came from other
    inputs: skipping or resuming it would report numbers the current files never produced."""
    if recorded is None:
        return
    changed = changed_inputs(recorded, current)
    if changed:
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise UserError(
            f"{run_dir}: was computed from other inputs: {changed[0]} changed{more} since; "
            f"move or delete {run_dir} to train on the current files, or restore the file"
        )
