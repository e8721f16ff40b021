"""The data stage up to the token level: load -> validate -> decontaminate -> mix, plus its records.

`prepare_data(DataSettings.of(cfg))` is what a run calls (the data stage reads only those settings);
`python -m medinject.data.prepare [overrides]` (same config as train.py) runs only this stage and
writes `manifest.json` and `contamination.json` in its output dir. The result is cached under
`<cache_dir>/selections/<key>/` (parquet + meta.json), the key made of every file's content hash
and every parameter that affects it, so a rerun with unchanged inputs skips the work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from omegaconf import DictConfig

from medinject.config import DataSettings, TaskType, conf_dir, register, to_container
from medinject.data.duplicates import handle_duplicates
from medinject.data.contamination import audit, contaminated_mask, report
from medinject.data.mix import select
from medinject.data.planted import ensure_planted
from medinject.data.rows import Example, Rows
from medinject.data.inputs import input_hashes
from medinject.data.sources import Loaded, load_source
from medinject.util.errors import UserError
from medinject.util.io import write_json_atomic
from medinject.util.rundir import CONTAMINATION, MANIFEST

log = logging.getLogger(__name__)

CACHE_VERSION = "selection-v3"  # bump when the selection logic changes


@dataclass
class PreparedData:
    examples: list[Example]  # the run's training examples, in selection order
    test_rows: dict[str, list[Example]]  # every row of every test set
    manifest: dict
    contamination: dict


def counts(examples: list[Example]) -> dict[str, dict[str, int]]:
    """counts[origin][type] of the selected examples."""
    table: dict[str, Counter] = {}
    for ex in examples:
        table.setdefault(ex.origin, Counter())[ex.type] += 1
    return {origin: dict(sorted(c.items())) for origin, c in sorted(table.items())}


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def _source_fingerprint(cfg: DataSettings) -> dict:
    """What the selection depends on besides file contents (resolved paths included)."""
    return {
        "sources": to_container(cfg.data.sources),
        "test_sets": to_container(cfg.test_sets),
        "medinjection": cfg.paths.medinjection,
        "on_bad_row": cfg.data.on_bad_row.value,
        "duplicates": cfg.data.duplicates.value,
        "train_tasks": sorted(t.value for t in cfg.data.train_tasks),
        "decontaminate": cfg.data.decontaminate,
        "contamination": to_container(cfg.data.contamination),
        "mix": to_container(cfg.mix),
        "seed": cfg.seed,
    }


def _load_all(cfg: DataSettings):
    train, tests, files, skipped = {}, {}, {}, {}
    for name, src in sorted(cfg.data.sources.items()):
        if src.origin is None:
            raise UserError(f"data.sources.{name}.origin: a training source needs an origin (native, synthetic, translated)")
        loaded = load_source(src, cfg.paths, f"data.sources.{name}", cfg.data.on_bad_row)
        train[name], skipped[name] = _train_tasks_only(loaded.rows, cfg, name), dict(loaded.skipped)
        pa.default_memory_pool().release_unused()
        files.update(loaded.files)
        log.info("source %s: %d rows%s", name, len(loaded.rows), f", {sum(loaded.skipped.values())} bad rows skipped" if loaded.skipped else "")
    for name, loaded in load_test_sets(cfg.test_sets, cfg.paths).items():
        tests[name] = loaded.rows
        files.update(loaded.files)
    return train, tests, files, skipped


def _train_tasks_only(rows: Rows, cfg: DataSettings, name: str) -> Rows:
    """The rows of the task types in `data.train_tasks` (the study trains on multiple choice only)."""
    tasks = {t.value for t in cfg.data.train_tasks}
    if not tasks:
        raise UserError("data.train_tasks: empty; list the task types to train on (mcqu, mcq, oeq)")
    if tasks >= {t.value for t in TaskType}:
        return rows
    kept = rows.filter([t in tasks for t in rows.column("type").to_pylist()])
    if not len(kept):
        raise UserError(f"data.sources.{name}: no row of the task types in data.train_tasks ({', '.join(sorted(tasks))})")
    return kept


def load_test_sets(test_sets: dict[str, DictConfig], paths: DictConfig) -> dict[str, Loaded]:
    """Every test set of `eval.test_sets`, by name in name order; a bad row is always an error."""
    return {name: load_source(src, paths, f"eval.test_sets.{name}") for name, src in sorted(test_sets.items())}


def _read_cache(folder: Path) -> PreparedData:
    import pyarrow.parquet as pq

    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    examples = Rows(pq.read_table(folder / "examples.parquet")).examples()
    tests = {name: Rows(pq.read_table(folder / f"test-{i}.parquet")).examples() for i, name in enumerate(meta["test_sets"])}
    return PreparedData(examples, tests, meta["manifest"], meta["contamination"])


def _write_cache(folder: Path, prepared: PreparedData) -> None:
    """Arrow files and a small JSON, built beside the final folder and renamed into place."""
    import pyarrow.parquet as pq

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        pq.write_table(Rows.from_examples(prepared.examples).table, staging / "examples.parquet")
        for i, rows in enumerate(prepared.test_rows.values()):
            pq.write_table(Rows.from_examples(rows).table, staging / f"test-{i}.parquet")
        meta = {"test_sets": list(prepared.test_rows), "manifest": prepared.manifest, "contamination": prepared.contamination}
        (staging / "meta.json").write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
        try:
            os.replace(staging, folder)
        except OSError:  # another job wrote the same key first
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def prepare_data(cfg: DataSettings, hashes: dict[str, str] | None = None) -> PreparedData:
    """The run's training examples and test rows, each file read once. `hashes`: the input files'
    content hashes (`input_hashes`) when the caller has them, known-answer data already generated
    (a run does both first); otherwise both are done here."""
    if hashes is None:
        ensure_planted(cfg.planted, cfg.paths.sample_data)  # known-answer data (a `planted` config) is generated into paths.sample_data when absent
        hashes = input_hashes(cfg)
    cache = Path(cfg.paths.cache_dir) / "selections" / _key(CACHE_VERSION, _source_fingerprint(cfg), hashes)
    if cfg.data.cache and (cache / "meta.json").is_file():
        log.info("selection cache hit: %s", cache)
        return _read_cache(cache)
    train, tests, files, skipped = _load_all(cfg)
    train, duplicates = handle_duplicates(train, cfg.data.duplicates)
    for name, found in duplicates.items():
        if found["within_source"] or found["across_sources"]:
            log.warning("source %s: %d duplicate rows within it, %d of another source's rows (data.duplicates=%s)",
                        name, found["within_source"], found["across_sources"], found["action"])

    pa.default_memory_pool().release_unused()  # what reading the files left in Arrow's pool
    params = cfg.data.contamination
    result = audit(train, tests, params.ngram, params.threshold)
    contamination = report(result, train, cfg.data.decontaminate, params.ngram, params.threshold)
    for entry in contamination["sources"]:
        if entry["contaminated"]:
            log.warning(
                "contamination: %d of %d rows of source %s (%.2f%%) match a test item%s",
                entry["contaminated"], entry["rows"], entry["source"], 100 * entry["rate"],
                ", dropped" if cfg.data.decontaminate else " (data.decontaminate=false: kept)",
            )
    pa.default_memory_pool().release_unused()
    if cfg.data.decontaminate and result.contaminated:  # filtering copies the table: only when needed
        train = {name: rows.filter(~contaminated_mask(rows, result)) for name, rows in train.items()}
        for name, rows in train.items():
            if not rows:
                raise UserError(f"data.sources.{name}: no training row left after decontamination")

    dropped = {name: found["within_source"] + found["across_sources"] for name, found in duplicates.items() if found["action"] == "drop"}
    examples = select(train, cfg.mix, cfg.seed, dropped)
    manifest = {
        "data_config": cfg.data.name,
        "sources": {
            name: {"rows": len(train[name]), "by_type": dict(Counter(train[name].column("type").to_pylist())), "skipped_bad_rows": skipped[name],
                   "duplicates": duplicates[name]}
            for name in sorted(train)
        },
        "test_sets": {name: {"rows": len(rows), "by_type": dict(Counter(r.type for r in rows))} for name, rows in sorted(tests.items())},
        "mix": to_container(cfg.mix),
        "seed": cfg.seed,
        "n_examples": len(examples),
        "counts": counts(examples),
        "selected_ids_sha256": hashlib.sha256("\n".join(sorted(e.id for e in examples)).encode()).hexdigest(),
        "decontaminated": cfg.data.decontaminate,
        "contaminated_rows": {e["source"]: e["contaminated"] for e in contamination["sources"]},
        "files": dict(sorted(files.items())),
    }
    prepared = PreparedData(examples, {name: rows.examples() for name, rows in tests.items()}, manifest, contamination)
    if cfg.data.cache:
        _write_cache(cache, prepared)
    return prepared


def write_records(prepared: PreparedData, out_dir: Path) -> None:
    write_json_atomic(out_dir / MANIFEST, prepared.manifest)
    write_json_atomic(out_dir / CONTAMINATION, prepared.contamination)


def _prepare_task(cfg: DictConfig) -> None:
    out_dir = Path(cfg.paths.output_dir)
    prepared = prepare_data(DataSettings.of(cfg))
    write_records(prepared, out_dir)
    print(f"{prepared.manifest['n_examples']} training examples {json.dumps(prepared.manifest['counts'])} -> {out_dir / MANIFEST}")


def main(argv: list[str] | None = None) -> None:
    """`python -m medinject.data.prepare [overrides]` (`medinject prepare`): the data stage alone."""
    from medinject.util.cli import hydra_app

    register()
    hydra_app(_prepare_task, conf_dir(), argv)


if __name__ == "__main__":
    main()
