"""The runs of a sweep, as the report finds them on disk.

Runs are the jobs listed in the sweep summary when the sweep wrote one, else every run directory below
the sweep dir (file names and records: `medinject.util.rundir`). A run's data config and seed come
from its run record (then its resolved config, then the sweep summary), never from its directory
name. A run that failed or left nothing is kept, as `failed` or `missing`: every table lists it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from medinject.config import EvalProtocol
from medinject.report.mixture import order_components
from medinject.util import rundir
from medinject.util.errors import UserError

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One job of the sweep as found on disk."""

    run_dir: Path
    config: str
    seed: int | None
    status: str  # completed | failed | missing
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    items: dict[tuple[str, str], list[dict]] = field(default_factory=dict)  # (test set, task) -> numeric fields per item
    protocol: str = "lenient"  # its eval.protocol (the run record's "eval"), by its current name; runs before it was recorded: lenient
    composition: dict[str, int] = field(default_factory=dict)  # examples trained on per source (the run record's data.counts)
    demo: bool = False  # trained the built-in tiny random-weight model

    def label(self) -> str:
        if self.status == "completed":
            return "completed"
        return f"failed: {self.error or 'no error recorded'}" if self.status == "failed" else "missing"


def _read_items(run_dir: Path) -> dict[tuple[str, str], list[dict]]:
    """Per (test set, task): each item's id and numeric fields; None stays None (an unreadable verdict)."""
    items: dict[tuple[str, str], list[dict]] = {}
    for record in rundir.read_predictions(run_dir):
        numeric = {k: v for k, v in record.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
        items.setdefault((record["test_set"], record["task"]), []).append({**numeric, "id": str(record["id"])})
    return items


def _identity_from_config(run_dir: Path) -> tuple[str | None, int | None]:
    """(data config, seed) from the resolved config a run wrote, if any."""
    import yaml

    for path in (run_dir / rundir.CONFIG, run_dir / rundir.HYDRA_CONFIG):
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if isinstance(cfg, dict):
            data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
            return data.get("name"), cfg.get("seed")
    return None, None


def _first(*values):
    return next((v for v in values if v is not None), None)


def _load_run(run_dir: Path, job: dict | None = None) -> Run:
    """A run from its directory (`job`: its entry in the sweep summary, if any)."""
    job = job or {}
    path = run_dir / rundir.RESULTS
    if not path.is_file():
        status = "failed" if job.get("status") == "failed" else "missing"
        return Run(run_dir, job.get("data") or "unknown", job.get("seed"), status, job.get("error"))
    results = rundir.read_results(run_dir)
    data = results.get("data") if isinstance(results.get("data"), dict) else {}
    config, seed = data.get("config"), data.get("seed")
    if config is None or seed is None:  # it failed before its data stage: the config it was given says
        written = _identity_from_config(run_dir)
        config, seed = _first(config, written[0], job.get("data"), "unknown"), _first(seed, written[1], job.get("seed"))
    if results["status"] != "completed":
        error = results.get("error") or job.get("error") or f"status {results['status']!r}"
        return Run(run_dir, config, seed, "failed", error)
    metrics = results.get("metrics")
    if not isinstance(metrics, dict):
        raise UserError(f"{path}: a completed run needs a 'metrics' object")
    numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    protocol = EvalProtocol.current((results.get("eval") or {}).get("protocol") or "lenient")
    run = Run(run_dir, config, seed, "completed", None, numbers, _read_items(run_dir), protocol)
    run.composition = _composition(path, data.get("counts"))
    run.demo = _is_demo(run_dir, results)
    return run


def _composition(path: Path, counts) -> dict[str, int]:
    """Examples per source from `data.counts` ({source: {task type: n}}); {} when the run recorded none."""
    if counts is None:
        return {}
    if not isinstance(counts, dict) or not all(isinstance(v, dict) and all(isinstance(n, int) for n in v.values()) for v in counts.values()):
        raise UserError(f"{path}: data.counts must map each source to {{task type: number of examples}}")
    return {source: sum(by_type.values()) for source, by_type in counts.items()}


def _is_demo(run_dir: Path, results: dict) -> bool:
    """Whether the run trained the built-in tiny model (random weights, built offline): its config says
    `model.build_tiny`."""
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / rundir.CONFIG).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        cfg = None
    if isinstance(cfg, dict) and isinstance(cfg.get("model"), dict):
        return cfg["model"].get("build_tiny") is not None
    model = results.get("model") if isinstance(results.get("model"), dict) else {}
    return model.get("name") == "tiny-qwen3"


def _job_dir(sweep_dir: Path, job: dict) -> Path:
    """The job's run dir; when the sweep was moved, the same name under the sweep dir."""
    recorded = Path(job.get("run_dir") or "")
    if recorded.is_dir() or not recorded.name:
        return recorded
    moved = sweep_dir / recorded.name
    return moved if moved.is_dir() else recorded


def load_runs(sweep_dir: Path) -> list[Run]:
    """Every run of the sweep, failed and missing ones included."""
    summary_path = sweep_dir / rundir.SWEEP_SUMMARY
    if summary_path.is_file():
        jobs = rundir.read_job_list(summary_path)
        log.info("report: %d jobs listed in %s", len(jobs), summary_path)
        runs = [_load_run(_job_dir(sweep_dir, job), job) for job in jobs]
    else:
        found = rundir.run_dirs(sweep_dir)
        log.info("report: no %s; %d run directories with %s found under %s", rundir.SWEEP_SUMMARY, len(found), rundir.RESULTS, sweep_dir)
        runs = [_load_run(run_dir) for run_dir in found]
    if not runs:
        raise UserError(f"{sweep_dir}: no run found (no {rundir.SWEEP_SUMMARY} and no {rundir.RESULTS} below it)")
    return _name_protocols(_drop_duplicates(_label_compositions(runs)))


def _name_protocols(runs: list[Run]) -> list[Run]:
    """A sweep evaluated under both protocols (`eval.protocol=strict,lenient`): each eval metric
    takes its protocol's name (`eval/<set>/<task>/em@strict`), so every table shows both side by side."""
    if len({r.protocol for r in runs if r.status == "completed"}) < 2:
        return runs
    for run in runs:
        run.metrics = {(f"{k}@{run.protocol}" if k.startswith("eval/") else k): v for k, v in run.metrics.items()}
    return runs


def base_metric(name: str) -> str:
    """A metric's name without its protocol (`em@strict` -> `em`)."""
    return name.split("@")[0]


def _label_compositions(runs: list[Run]) -> list[Run]:
    """A data config whose completed runs trained on different compositions (a mixture design or a
    budget curve: every point has the same data config) gets one label per composition, from what
    each run trained on: `native 0.50 + translated 0.50 (n=96)`. Other configs keep their name."""
    compositions: dict[str, set] = {}
    for run in runs:
        if run.status == "completed" and run.composition:
            compositions.setdefault(run.config, set()).add(tuple(sorted(run.composition.items())))
    varied = {config for config, found in compositions.items() if len(found) > 1}
    for run in runs:
        if run.config in varied and run.status == "completed" and run.composition:
            run.config = composition_label(run.composition)
    return runs


def composition_label(composition: dict[str, int]) -> str:
    total = sum(composition.values())
    parts = [f"{source} {composition[source] / total:.2f}" for source in order_components(composition) if composition[source] > 0]
    return f"{' + '.join(parts)} (n={total})"


def _drop_duplicates(runs: list[Run]) -> list[Run]:
    """One completed run per (config, seed, protocol): the newest; an earlier one would weigh its seed twice."""
    newest: dict[tuple[str, int | None, str], Run] = {}
    for run in runs:
        if run.status != "completed" or run.seed is None:
            continue
        key = (run.config, run.seed, run.protocol)
        if key in newest:
            older, newer = sorted((newest[key], run), key=lambda r: (r.run_dir / rundir.RESULTS).stat().st_mtime)
            log.warning("report: %s seed %s completed twice; using %s, not %s", run.config, run.seed, newer.run_dir, older.run_dir)
            newest[key] = newer
        else:
            newest[key] = run
    keep = {id(run) for run in newest.values()}
    return [run for run in runs if run.status != "completed" or run.seed is None or id(run) in keep]


def config_order(configs: set[str]) -> list[str]:
    """Single sources first, then pairs, then the three together (the order of conf/data/ in the paper)."""
    return sorted(configs, key=lambda name: (len(name.split("+")), name.split("+")))


def config_status(config: str, runs: list[Run]) -> str:
    """`completed`, or what went wrong with each bad run (`failed: <error>`, `missing`)."""
    mine = [r for r in runs if r.config == config]
    bad = [r for r in mine if r.status != "completed"]
    if not bad:
        return "completed"
    done = len(mine) - len(bad)
    parts = [f"completed {done}/{len(mine)}"] if done else []
    for run in bad:
        parts.append(run.label() + (f" (seed {run.seed})" if len(mine) > 1 and run.seed is not None else ""))
    return "; ".join(parts)


def completed_seeds(config: str, runs: list[Run]) -> list[int]:
    return sorted(r.seed for r in runs if r.config == config and r.status == "completed" and r.seed is not None)
