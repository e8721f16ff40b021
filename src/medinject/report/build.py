"""The comparison report of a sweep: one table per test set and task, plots, one HTML page.

    python -m medinject.report <sweep dir> [--baseline native] [--out DIR] [--main-metric mcqu/em]

Runs are the jobs listed in `sweep_summary.json` when the sweep wrote one, else every directory below
the sweep dir holding a `results.json`. A run's data config and seed come from its `results.json`
(then `config.yaml`, then the sweep summary), never from its directory name. Per config and metric:
mean over seeds and test items with a 95% CI, and the paired difference against the baseline config
with a p-value (`medinject.report.stats` says how). Metrics scored per item in `predictions.jsonl` (exact
match, Hamming, judge, answer length) are resampled over items and seeds; corpus-level ones (BLEU,
ROUGE, BERTScore) over seeds only.

Written atomically into the sweep dir (or `--out`): `summary.csv` (one row per config and metric),
`summary.md`, one bar chart per test set and task, a heatmap of the main metric, a judge-score vs
answer-length scatter when the predictions carry judge verdicts, and `report.html` with every table
and plot embedded. A run that failed or left nothing shows in every table as `failed: <error>` or
`missing`. The p-values of all comparisons in a report (and the mixture's flatness tests) are one
family: each is shown with its Holm correction (and summary.csv has Benjamini-Hochberg's too), and each
comparison with its minimum detectable effect and verdict (`medinject.report.power`; `power.json`). A report of runs of the built-in tiny
random-weight model says at its top that its numbers are a demo.

When the runs form a mixture design (several compositions of the sources at one budget, read from each
run's `data.counts`; `experiment=mixture_search`, and the seven provenance configs themselves) the
report also writes `mixture.json` and `mixture.png` (`medinject.report.mixture`); when some ran one
source alone at three or more budgets (`experiment=budget_curve`), `exchange_rates.json` and
`learning_curves.png` (`medinject.report.curves`). A data config whose runs trained on different
compositions is listed once per composition (`native 0.50 + translated 0.50 (n=96)`).
"""

from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import logging
import math
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medinject.util.errors import UserError
from medinject.util.io import write_bytes_atomic, write_text_atomic
from medinject.report.curves import curves_report, power_law
from medinject.report.mixture import flatness_pvalues, mixture_report, order_components, pilot_seed_variances, surface_grid
from medinject.report.registered import rounds_section
from medinject.report.power import Components, pool_seed_variance, power_entry, variance_components, verdict
from medinject.report.truth import read_truth, truth_check, truth_rows
from medinject.report.stats import Comparison, Estimate, adjust_pvalues, bootstrap_ci, paired_difference, paired_differences, score_matrix
from medinject.report.summary import lead_html, lead_markdown, lead_summary, plot_forest

log = logging.getLogger(__name__)

SUMMARY = "sweep_summary.json"
RESULTS = "results.json"
PREDICTIONS = "predictions.jsonl"
COMPLETED = ("completed", "skipped")  # `skipped`: the sweep reused an earlier completed run
NOT_COMPARED = {"n", "skipped_too_long", "reference_words_mean"}  # properties of the test set, not of the model
ITEM_FIELD = {"answer_words_mean": "answer_words"}  # run metric -> per-item field when the names differ
MAIN_METRICS = ("mcqu/em_constrained", "mcqu/em", "mcq/hamming_constrained", "mcq/hamming", "oeq/judge", "oeq/rougeL")
STYLE = (
    "body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse;margin:1em 0;font-size:13px}"
    "th,td{border:1px solid #bbb;padding:3px 6px;text-align:left;vertical-align:top}th{background:#eee}.scroll{overflow-x:auto}"
    ".bad{color:#b00}figure{margin:1.5em 0}img{max-width:100%;border:1px solid #ddd}"
    ".demo{background:#fff3cd;border:2px solid #d39e00;padding:.8em 1em;font-size:15px}"
    "#summary{border-bottom:3px solid #888;margin-bottom:2em}tr.good td{background:#e6f4ea}tr.bad td{background:#fdecea}"
)
DEMO_BANNER = (
    "Demo numbers: these runs trained the built-in tiny model with random weights (model.build_tiny) for a "
    "few steps, so every score below shows that the pipeline runs end to end, not what the training data "
    "is worth. Run a real base model (e.g. model=qwen3_4b_instruct on a GPU) for results."
)
CSV_FIELDS = [
    "config", "status", "seeds", "metric", "mean", "ci_low", "ci_high", "n_seeds", "n_items",
    "baseline", "diff", "diff_ci_low", "diff_ci_high", "p_value", "p_holm", "p_bh", "matched_seeds", "mde", "power_verdict",
]  # fmt: skip
ALPHA = 0.05  # the family-wise level a comparison or an optimum is called significant at


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
    protocol: str = "medinject"  # its eval.protocol (results.json "eval"); runs before it was recorded: medinject
    composition: dict[str, int] = field(default_factory=dict)  # examples trained on per source (results.json data.counts)
    demo: bool = False  # trained the built-in tiny random-weight model

    def label(self) -> str:
        if self.status == "completed":
            return "completed"
        return f"failed: {self.error or 'no error recorded'}" if self.status == "failed" else "missing"


@dataclass
class Cell:
    estimate: Estimate
    comparison: Comparison | None  # None for the baseline itself, or when the baseline has no run
    p_holm: float | None = None  # the comparison's p-value corrected over every comparison of the report
    p_bh: float | None = None
    components: Components | None = None  # variance components of the paired differences (2+ matched seeds)
    power: dict | None = None  # medinject.report.power.power_entry, with its verdict


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]


# ----------------------------------------------------------------------------------------- reading


def _read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror or err}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        where = f" (line {err.lineno}, column {err.colno})" if isinstance(err, json.JSONDecodeError) else ""
        raise UserError(f"{path}: not valid JSON{where}") from None


def _read_items(path: Path) -> dict[tuple[str, str], list[dict]]:
    """Per (test set, task): each item's id and numeric fields; None stays None (an unreadable verdict)."""
    if not path.is_file():
        raise UserError(f"{path}: missing (a completed run writes one line per evaluated item)")
    items: dict[tuple[str, str], list[dict]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: cannot read: {err}") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{number}: not valid JSON") from None
        if not isinstance(record, dict) or any(key not in record for key in ("test_set", "task", "id")):
            raise UserError(f"{path}:{number}: a prediction needs 'test_set', 'task' and 'id'")
        numeric = {k: v for k, v in record.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))}
        items.setdefault((record["test_set"], record["task"]), []).append({**numeric, "id": str(record["id"])})
    return items


def _identity_from_config(run_dir: Path) -> tuple[str | None, int | None]:
    """(data config, seed) from the resolved config a run wrote, if any."""
    import yaml

    for path in (run_dir / "config.yaml", run_dir / ".hydra" / "config.yaml"):
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
    path = run_dir / RESULTS
    if not path.is_file():
        status = "failed" if job.get("status") == "failed" else "missing"
        return Run(run_dir, job.get("data") or "unknown", job.get("seed"), status, job.get("error"))
    results = _read_json(path)
    if not isinstance(results, dict) or "status" not in results:
        raise UserError(f"{path}: not a medinject results file (no 'status')")
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
    protocol = (results.get("eval") or {}).get("protocol") or "medinject"
    run = Run(run_dir, config, seed, "completed", None, numbers, _read_items(run_dir / PREDICTIONS), protocol)
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
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
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
    summary_path = sweep_dir / SUMMARY
    if summary_path.is_file():
        summary = _read_json(summary_path)
        if not isinstance(summary, dict) or not isinstance(summary.get("jobs"), list):
            raise UserError(f"{summary_path}: no 'jobs' list")
        log.info("report: %d jobs listed in %s", len(summary["jobs"]), summary_path)
        runs = [_load_run(_job_dir(sweep_dir, job), job) for job in summary["jobs"]]
    else:
        found = sorted(p.parent for p in sweep_dir.rglob(RESULTS))
        log.info("report: no %s; %d run directories with %s found under %s", SUMMARY, len(found), RESULTS, sweep_dir)
        runs = [_load_run(run_dir) for run_dir in found]
    if not runs:
        raise UserError(f"{sweep_dir}: no run found (no {SUMMARY} and no {RESULTS} below it)")
    return _name_protocols(_drop_duplicates(_label_compositions(runs)))


def _name_protocols(runs: list[Run]) -> list[Run]:
    """A sweep evaluated under both protocols (`eval.protocol=released,medinject`): each eval metric
    takes its protocol's name (`eval/<set>/<task>/em@released`), so every table shows both side by side."""
    if len({r.protocol for r in runs if r.status == "completed"}) < 2:
        return runs
    for run in runs:
        run.metrics = {(f"{k}@{run.protocol}" if k.startswith("eval/") else k): v for k, v in run.metrics.items()}
    return runs


def _base_metric(name: str) -> str:
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
            older, newer = sorted((newest[key], run), key=lambda r: (r.run_dir / RESULTS).stat().st_mtime)
            log.warning("report: %s seed %s completed twice; using %s, not %s", run.config, run.seed, newer.run_dir, older.run_dir)
            newest[key] = newer
        else:
            newest[key] = run
    keep = {id(run) for run in newest.values()}
    return [run for run in runs if run.status != "completed" or run.seed is None or id(run) in keep]


# ------------------------------------------------------------------------------------- statistics


def config_order(configs: set[str]) -> list[str]:
    """Single sources first, then pairs, then the three together (the order of conf/data/ in the paper)."""
    return sorted(configs, key=lambda name: (len(name.split("+")), name.split("+")))


def metric_names(runs: list[Run]) -> list[str]:
    """Every eval metric `eval/<test set>/<task>/<metric>` of the completed runs, first-seen order."""
    names: dict[str, None] = {}
    for run in runs:
        for name in run.metrics:
            parts = name.split("/")
            if len(parts) == 4 and parts[0] == "eval" and _base_metric(parts[3]) not in NOT_COMPARED:
                names[name] = None
    bases = list(dict.fromkeys(_base_metric(n) for n in names))  # both protocols' versions of a metric next to each other
    return sorted(names, key=lambda n: (bases.index(_base_metric(n)), n))


def by_task(metrics: list[str]) -> dict[tuple[str, str], list[str]]:
    """Metric names grouped by (test set, task), in order."""
    groups: dict[tuple[str, str], list[str]] = {}
    for metric in metrics:
        _, test_set, task, _ = metric.split("/")
        groups.setdefault((test_set, task), []).append(metric)
    return groups


def _item_field(name: str, runs: list[Run]) -> str | None:
    """The per-item field behind a metric when every completed run's predictions carry it, else None."""
    _, test_set, task, metric = name.split("/")
    metric = _base_metric(metric)
    key = ITEM_FIELD.get(metric, metric)
    for run in runs:
        if name not in run.metrics:  # a run of the other protocol
            continue
        records = run.items.get((test_set, task))
        if not records or any(key not in record for record in records):
            return None
    return key


def score_table(name: str, runs: list[Run]) -> dict[int, dict[object, float]]:
    """{seed: {item: score}} of one config's completed runs for one metric (item `run` if corpus-level)."""
    _, test_set, task, _ = name.split("/")
    key = _item_field(name, runs)
    table: dict[int, dict[object, float]] = {}
    for run in runs:
        seed = run.seed if run.seed is not None else -1 - zlib.crc32(str(run.run_dir).encode())  # pairs with nothing
        if name not in run.metrics:  # a run of the other protocol
            continue
        if key is None:
            table[seed] = {"run": run.metrics[name]}
            continue
        scores: dict[object, float] = {}
        seen: dict[str, int] = {}
        for record in run.items[(test_set, task)]:
            seen[record["id"]] = seen.get(record["id"], 0) + 1
            value = record[key]
            scores[(record["id"], seen[record["id"]])] = math.nan if value is None else float(value)
        table[seed] = scores
        reported = run.metrics.get(name)
        observed = [v for v in scores.values() if not math.isnan(v)]
        if reported is not None and observed and not math.isclose(np.mean(observed), reported, rel_tol=1e-6, abs_tol=1e-9):
            log.warning("report: %s in %s is %.6g but its items average %.6g", name, run.run_dir, reported, np.mean(observed))
    return table


def compute_cells(
    runs: list[Run], configs: list[str], metrics: list[str], baseline: str | None, n_resamples: int, seed: int
) -> dict[tuple[str, str], Cell]:
    """Estimate (and comparison with the baseline) per (config, metric) over the completed runs."""
    completed = {c: [r for r in runs if r.config == c and r.status == "completed"] for c in configs}
    cells: dict[tuple[str, str], Cell] = {}
    for metric in metrics:
        tables = {c: score_table(metric, completed[c]) for c in configs if completed[c]}
        pool = pool_seed_variance([score_matrix(t)[2] for t in tables.values()])  # seeds scatter every config alike
        for config, table in tables.items():
            _, _, matrix = score_matrix(table)
            estimate = bootstrap_ci(matrix, n_resamples=n_resamples, seed=seed)
            comparison = None
            if config != baseline and baseline in tables:
                comparison = paired_difference(table, tables[baseline], n_resamples=n_resamples, seed=seed, seed_pool=pool)
            components = None
            if comparison is not None and comparison.n_seeds >= 2:
                components = variance_components(paired_differences(table, tables[baseline])[0], pool)
            cells[config, metric] = Cell(estimate, comparison, components=components)
    return cells


def report_statistics(
    runs: list[Run], configs: list[str], metrics: list[str], baseline: str | None, n_resamples: int, seed: int,
    seed_variances: dict | None = None, effect: float | None = None, with_power: bool = True,
) -> tuple[dict[tuple[str, str], Cell], dict | None, int]:
    """Every test of a report as one family: (cells with their Holm p and power, the mixture report
    with its optima settled over the same family, the family's size). `with_power=False` leaves the
    power entries out (they decide nothing that is significant)."""
    cells = compute_cells(runs, configs, metrics, baseline, n_resamples, seed)
    completed = [r for r in runs if r.status == "completed"]
    mixture = mixture_report(completed, metrics, score_table, n_resamples, seed, comparison_pvalues(cells), seed_variances, ALPHA)
    return cells, mixture, adjust_for_multiplicity(cells, flatness_pvalues(mixture), effect, with_power)


def comparison_pvalues(cells: dict[tuple[str, str], Cell]) -> list[float]:
    return [cell.comparison.p_value for cell in cells.values() if cell.comparison is not None and math.isfinite(cell.comparison.p_value)]


def adjust_for_multiplicity(cells: dict[tuple[str, str], Cell], extra: list[float] = (), effect: float | None = None, with_power: bool = True) -> int:
    """Holm and Benjamini-Hochberg p-values over the family of every test in the report (each config
    against the baseline, on every metric and test set, and `extra`: the mixture's flatness tests);
    then each comparison's power at that family's Holm level (MDE, seeds needed for `effect`, default
    its own difference) and verdict. Returns the family's size."""
    compared = [cell for cell in cells.values() if cell.comparison is not None and math.isfinite(cell.comparison.p_value)]
    raw = [cell.comparison.p_value for cell in compared] + list(extra)
    for cell, holm, bh in zip(compared, adjust_pvalues(raw, "holm"), adjust_pvalues(raw, "bh")):
        cell.p_holm, cell.p_bh = float(holm), float(bh)
    for cell in compared if with_power else ():
        c = cell.comparison
        cell.power = power_entry(cell.components, ALPHA, len(raw), effect if effect is not None else c.diff)
        cell.power["verdict"] = verdict(c.low, c.high, cell.p_holm, cell.power.get("mde"), ALPHA)
    return len(raw)


# ------------------------------------------------------------------------------------------ tables


def _num(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.4g}"


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


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


def _seeds(config: str, runs: list[Run]) -> list[int]:
    return sorted(r.seed for r in runs if r.config == config and r.status == "completed" and r.seed is not None)


def build_tables(runs: list[Run], configs: list[str], metrics: list[str], cells: dict, baseline: str | None) -> list[Table]:
    """The runs table, then one table per test set and task: a row per config, every config listed."""
    tables = [
        Table(
            "Runs",
            ["config", "seed", "status", "run dir"],
            [[r.config, "" if r.seed is None else str(r.seed), r.label(), str(r.run_dir)] for r in sorted(runs, key=_run_order(configs))],
        )
    ]
    for (test_set, task), names in by_task(metrics).items():
        header = ["config", "status", "seeds"]
        for name in names:
            short = name.split("/")[-1]
            header += [short, f"Δ {short} (p)"] if baseline else [short]
        rows = []
        for config in configs:
            row = [config, config_status(config, runs), str(len(_seeds(config, runs)))]
            for name in names:
                cell = cells.get((config, name))
                row.append(_estimate_text(cell.estimate) if cell else "—")
                if baseline:
                    row.append(_comparison_text(cell.comparison, cell.p_holm, cell.power) if cell and cell.comparison else "—")
            rows.append(row)
        tables.append(Table(f"{test_set} / {task}", header, rows))
    return tables


def _run_order(configs: list[str]):
    return lambda r: (configs.index(r.config) if r.config in configs else len(configs), r.seed if r.seed is not None else -1, str(r.run_dir))


def _estimate_text(e: Estimate) -> str:
    return f"{_num(e.mean)} [{_num(e.low)}, {_num(e.high)}]"


def _comparison_text(c: Comparison, p_holm: float | None = None, power: dict | None = None) -> str:
    sign = "+" if c.diff > 0 else ""
    holm = f" (Holm {_p(p_holm)})" if p_holm is not None else ""
    said = ""
    if power:
        said = f"; {power['verdict']}" + (f", MDE {_num(power['mde'])}" if power.get("mde") is not None else ", 1 seed: MDE unknown")
    return f"{sign}{_num(c.diff)} [{_num(c.low)}, {_num(c.high)}] p={_p(c.p_value)}{holm}{said}"


def _csv_num(x: float) -> str:
    return format(x, ".10g") if math.isfinite(x) else ""


def summary_csv(runs: list[Run], configs: list[str], metrics: list[str], cells: dict, baseline: str | None) -> str:
    """One row per (config, metric); a config without a completed run gets one row with its status."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for config in configs:
        base = {
            "config": config,
            "status": config_status(config, runs),
            "seeds": " ".join(map(str, _seeds(config, runs))),
            "baseline": baseline or "",
        }
        rows = [(metric, cells[config, metric]) for metric in metrics if (config, metric) in cells]
        if not rows:
            writer.writerow(base)
        for metric, cell in rows:
            e, c = cell.estimate, cell.comparison
            writer.writerow(
                {
                    **base,
                    "metric": metric,
                    "mean": _csv_num(e.mean),
                    "ci_low": _csv_num(e.low),
                    "ci_high": _csv_num(e.high),
                    "n_seeds": e.n_seeds,
                    "n_items": e.n_items,
                    "diff": _csv_num(c.diff) if c else "",
                    "diff_ci_low": _csv_num(c.low) if c else "",
                    "diff_ci_high": _csv_num(c.high) if c else "",
                    "p_value": _csv_num(c.p_value) if c else "",
                    "p_holm": _csv_num(cell.p_holm) if cell.p_holm is not None else "",
                    "p_bh": _csv_num(cell.p_bh) if cell.p_bh is not None else "",
                    "matched_seeds": c.n_seeds if c else "",
                    "mde": _csv_num(cell.power["mde"]) if cell.power and cell.power.get("mde") is not None else "",
                    "power_verdict": cell.power["verdict"] if cell.power else "",
                }
            )
    return buffer.getvalue()


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def summary_markdown(title: str, notes: list[str], tables: list[Table], plots: list[Path], banner: str | None = None, lead: str = "") -> str:
    lines = [f"# {title}", ""] + ([f"> **{banner}**", ""] if banner else []) + ([lead, ""] if lead else [])
    lines += [f"- {note}" for note in notes] + [""]
    for table in tables:
        lines += [f"## {table.title}", "", "| " + " | ".join(map(_md_cell, table.header)) + " |", "|" + "---|" * len(table.header)]
        lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
        lines.append("")
    if plots:
        lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def _is_bad(cell: str) -> bool:
    return cell.startswith(("failed", "missing")) or "; failed" in cell or "; missing" in cell


def report_html(title: str, notes: list[str], tables: list[Table], plots: list[Path], banner: str | None = None, lead: str = "") -> str:
    """One self-contained page: styles inline, plots as base64 data URIs, no external resource."""
    esc = html.escape
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        f"<style>{STYLE}</style>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        f'<p class="demo"><strong>{esc(banner)}</strong></p>' if banner else "",
        lead,  # the answer first (medinject.report.summary), then the notes and the full tables
        "<ul>" + "".join(f"<li>{esc(note)}</li>" for note in notes) + "</ul>",
    ]
    for table in tables:
        parts.append(
            f'<h2>{esc(table.title)}</h2><div class="scroll"><table><thead><tr>'
            + "".join(f"<th>{esc(h)}</th>" for h in table.header)
            + "</tr></thead><tbody>"
        )
        for row in table.rows:
            cells = "".join(f'<td class="bad">{esc(c)}</td>' if _is_bad(c) else f"<td>{esc(c)}</td>" for c in row)
            parts.append(f"<tr>{cells}</tr>")
        parts.append("</tbody></table></div>")
    if plots:
        parts.append("<h2>Plots</h2>")
    for plot in plots:
        data = base64.b64encode(plot.read_bytes()).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{esc(plot.stem)}"><figcaption>{esc(plot.name)}</figcaption></figure>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------- plots


def _save(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())
    log.info("report: wrote %s", path)
    return path


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in text)


def plot_bars(out: Path, title: str, names: list[str], configs: list[str], cells: dict, runs: list[Run], baseline: str | None) -> Path:
    """One panel per metric: a bar per config (fixed order) at its mean, error bars at the 95% CI."""
    from matplotlib.figure import Figure

    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig = Figure(figsize=(0.55 * len(configs) * ncols + 1.5, 3.4 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    x = np.arange(len(configs))
    for ax, name in zip(axes.flat, names):
        found = [cells.get((c, name)) for c in configs]
        means = np.array([cell.estimate.mean if cell else np.nan for cell in found])
        low = np.array([cell.estimate.low if cell else np.nan for cell in found])
        high = np.array([cell.estimate.high if cell else np.nan for cell in found])
        errors = np.clip(np.nan_to_num(np.vstack([means - low, high - means])), 0, None)
        colors = ["tab:gray" if c == baseline else "tab:blue" for c in configs]
        ax.bar(x, np.nan_to_num(means), yerr=errors, color=colors, capsize=3, ecolor="black", linewidth=0)
        for i, (config, cell) in enumerate(zip(configs, found)):
            if cell is None:
                ax.text(i, 0, config_status(config, runs).split(":")[0], rotation=90, ha="center", va="bottom", fontsize=7, color="tab:red")
        ax.set_title(name.split("/")[-1], fontsize=10)
        ax.set_xticks(x, configs, rotation=40, ha="right", fontsize=7)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: mean over seeds and items, 95% CI" + (f" (gray: baseline {baseline})" if baseline else ""), fontsize=11)
    fig.tight_layout()
    return _save(fig, out)


def plot_heatmap(out: Path, main: str, test_sets: list[str], configs: list[str], cells: dict, runs: list[Run]) -> Path:
    """Configs x test sets, the main metric's mean in each cell; a config without data says why."""
    from matplotlib.figure import Figure

    task, metric = main.split("/")
    found = {(c, t): cells.get((c, f"eval/{t}/{task}/{metric}")) for c in configs for t in test_sets}
    values = np.array([[found[c, t].estimate.mean if found[c, t] else np.nan for t in test_sets] for c in configs])
    fig = Figure(figsize=(1.6 * len(test_sets) + 3.5, 0.45 * len(configs) + 1.8))
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8)
    for i, config in enumerate(configs):
        for j in range(len(test_sets)):
            if np.isfinite(values[i, j]):
                ax.text(j, i, _num(values[i, j]), ha="center", va="center", fontsize=8, color="black" if image.norm(values[i, j]) > 0.6 else "white")
            else:
                ax.text(j, i, config_status(config, runs).split(":")[0], ha="center", va="center", fontsize=8, color="tab:red")
    ax.set_xticks(range(len(test_sets)), test_sets)
    ax.set_yticks(range(len(configs)), configs, fontsize=8)
    ax.set_title(f"{main} by test set (mean over seeds and items)", fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def judge_points(runs: list[Run]) -> list[tuple[str, str, float, float]]:
    """(config, test set, mean answer words, judge score) per completed run and test set with verdicts."""
    points = []
    for run in runs:
        for (test_set, task), records in run.items.items():
            verdicts = [r["judge"] for r in records if r.get("judge") is not None]
            lengths = [r["answer_words"] for r in records if r.get("answer_words") is not None]
            if task == "oeq" and verdicts and lengths:
                points.append((run.config, test_set, float(np.mean(lengths)), float(np.mean(verdicts))))
    return points


def plot_judge_vs_length(out: Path, points: list[tuple[str, str, float, float]], configs: list[str]) -> Path:
    """A point per run and test set: does the judge reward long answers?"""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    test_sets = sorted({p[1] for p in points})
    markers = "osD^v<>P*X"
    for k, config in enumerate(configs):
        for j, test_set in enumerate(test_sets):
            xs = [p[2] for p in points if p[0] == config and p[1] == test_set]
            ys = [p[3] for p in points if p[0] == config and p[1] == test_set]
            if xs:
                ax.scatter(xs, ys, color=f"C{k % 10}", marker=markers[j % len(markers)], label=f"{config} · {test_set}", alpha=0.8)
    ax.set_xlabel("mean answer length (words)")
    ax.set_ylabel("judge score")
    ax.set_title("Judge score vs answer length (one point per run and test set)", fontsize=10)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return _save(fig, out)


# ------------------------------------------------------------------- mixture design and learning curves


def _shares_text(shares: dict[str, float]) -> str:
    return ", ".join(f"{source} {share:.2f}" for source, share in shares.items())


def _interval_text(ci) -> str:
    if not ci:
        return "n/a"
    return "[" + ", ".join("inf" if end is None else _num(end) for end in ci) + "]"  # None: unbounded (a rate's only infinity is +inf)


def mixture_table(mixture: dict) -> Table:
    """One row per metric: the fitted model, its fit, the best shares with their region, what to run next."""
    rows = []
    for name, entry in mixture["metrics"].items():
        if entry.get("optimum") is None:
            best = entry.get("descriptive_best")
            said = f"; descriptive best {_shares_text(best['shares'])} ({_num(best['predicted'])})" if best else ""
            rows.append([name, entry["model"], "—", "—", f"no optimum: {entry.get('reason', '')}{said}", "—", "—", "—"])
            continue
        fit = entry["fit"]
        region = entry.get("optimum_region")
        ranges = ", ".join(f"{c} {lo:.2f}–{hi:.2f}" for c, (lo, hi) in region["share_ranges"].items()) if region else "n/a"
        rows.append(
            [
                name,
                entry["model"],
                f"R² {_num(fit['r2'])}, LOO RMSE {_num(fit['loo_rmse'])} (linear: R² {_num(entry['linear_fit']['r2'])})",
                str(fit["residual_df"]),
                _shares_text(entry["optimum"]),
                f"{_num(entry['predicted'])} {_interval_text(entry.get('ci'))}",
                ranges,
                "; ".join(_shares_text(p["shares"]) for p in entry["next_points"]) or "—",
            ]
        )
    header = ["metric", "model", "fit", "residual df", "best shares", "predicted [95% CI]", "95% region of the best shares", "run next"]
    return Table(f"Mixture model at {mixture['budget']} examples ({', '.join(mixture['components'])})", header, rows)


def exchange_table(curves: dict, names: list[str]) -> Table:
    """For the given metrics: examples of each source that buy what N reference examples buy."""
    rows = []
    for name in names:
        entry = curves["metrics"].get(name)
        if not entry:
            continue
        if entry.get("exchange_rates") is None:
            rows.append([name, "—", "—", "—", "—", entry.get("reason", "")])
            continue
        for source, rates in entry["exchange_rates"].items():
            for rate in rates:
                needed = "n/a" if rate["examples_needed"] is None else f"{rate['examples_needed']:.0f}"
                value = "inf" if rate["status"].startswith("unbounded") else _num(rate["rate"])
                text = "n/a" if value == "n/a" else f"{value} {_interval_text(rate.get('ci'))}"
                rows.append([name, source, f"{rate['reference_budget']} {entry['reference']}", needed, text, rate["status"]])
    header = ["metric", "source", "reference examples", "examples needed", "rate [95% CI]", "status"]
    return Table("Exchange rates (source examples per reference example, matched on the fitted learning curves)", header, rows)


def _ternary_xy(shares) -> np.ndarray:
    """Barycentric (a, b, c) -> the plane: a at (0, 0), b at (1, 0), c at (0.5, sqrt(3)/2)."""
    s = np.atleast_2d(np.asarray(shares, dtype=float))
    return np.stack([s[:, 1] + 0.5 * s[:, 2], s[:, 2] * math.sqrt(3) / 2], axis=1)


def plot_mixture(out: Path, mixture: dict, names: list[str]) -> Path:
    """Per metric: the fitted surface over the simplex (ternary for 3 sources, a line for 2), the runs
    coloured by their mean, the optimum (star), its 95% region (white dots) and the next points (triangles)."""
    from matplotlib.figure import Figure

    components = mixture["components"]
    fig = Figure(figsize=(5.2 * len(names), 4.8))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        entry = mixture["metrics"][name]
        runs = np.array([[p["shares"][c] for c in components] for p in entry["points"]])
        means = np.array([p["mean"] for p in entry["points"]])
        grid = surface_grid(entry, components)
        lo, hi = (min(means.min(), grid[1].min()), max(means.max(), grid[1].max())) if grid else (means.min(), means.max())
        norm = dict(vmin=lo, vmax=hi if hi > lo else lo + 1e-9, cmap="viridis")
        marks = [(entry.get("optimum_region") or {}).get("points", []), [p["shares"] for p in entry.get("next_points") or []]]
        if len(components) == 2:
            if grid:
                ax.plot(grid[0][:, 0], grid[1], color="tab:blue", label=entry["model"])
            ax.scatter(runs[:, 0], means, c=means, edgecolors="black", zorder=3, label="runs", **norm)
            if entry.get("optimum"):
                ax.axvline(entry["optimum"][components[0]], color="tab:red", linestyle="--", label="optimum")
            ax.set_xlabel(f"share of {components[0]} (rest: {components[1]})")
            ax.legend(fontsize=7)
        elif len(components) == 3:
            if grid:
                xy = _ternary_xy(grid[0])
                image = ax.tricontourf(xy[:, 0], xy[:, 1], grid[1], levels=20, **norm)
                fig.colorbar(image, ax=ax, shrink=0.75)
            xy = _ternary_xy(runs)
            ax.scatter(xy[:, 0], xy[:, 1], c=means, edgecolors="black", s=45, zorder=3, **norm)
            for points, style in zip(marks, (dict(marker=".", color="white", s=12), dict(marker="^", facecolors="none", edgecolors="tab:red", s=70))):
                if points:
                    pxy = _ternary_xy([[p[c] for c in components] for p in points])
                    ax.scatter(pxy[:, 0], pxy[:, 1], zorder=4, **style)
            if entry.get("optimum"):
                oxy = _ternary_xy([[entry["optimum"][c] for c in components]])
                ax.scatter(oxy[:, 0], oxy[:, 1], marker="*", s=260, color="tab:red", edgecolors="white", zorder=5)
            corners = _ternary_xy(np.eye(3))
            ax.plot(*np.vstack([corners, corners[:1]]).T, color="black", linewidth=1)
            for (x, y), label, align in zip(corners, components, ("right", "left", "center")):
                ax.text(x, y + (0.04 if align == "center" else -0.05), label, ha=align, fontsize=9)
            ax.set_xlim(-0.12, 1.12)
            ax.set_ylim(-0.1, 0.96)
            ax.set_aspect("equal")
            ax.axis("off")
        fit = entry.get("fit")
        detail = f"{entry['model']}, R² {_num(fit['r2'])}" if fit else entry.get("reason", "no fit").split(";")[0]
        ax.set_title(f"{name}\n{detail}", fontsize=9)
    fig.suptitle(f"Mixture design at {mixture['budget']} examples: runs (dots), fitted surface, optimum (star), 95% region, run next (triangles)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return _save(fig, out)


def plot_curves(out: Path, curves: dict, names: list[str]) -> Path:
    """Per metric: each source's mean score per budget (dots) and its fitted power law (line), log budget."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(names), 4.2))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        for k, (source, curve) in enumerate(curves["metrics"][name]["curves"].items()):
            budgets = np.array([p["budget"] for p in curve["points"]], dtype=float)
            ax.scatter(budgets, [p["mean"] for p in curve["points"]], color=f"C{k}", label=source, zorder=3)
            if curve.get("a") is not None:
                n = np.geomspace(budgets.min(), budgets.max(), 100)
                ax.plot(n, power_law(np.array([curve["a"], curve["b"], curve["c"]]), n), color=f"C{k}")
        ax.set_xscale("log")
        ticks = sorted({p["budget"] for c in curves["metrics"][name]["curves"].values() for p in c["points"]})
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=8)  # the budgets run, not log-axis minor labels
        ax.minorticks_off()
        ax.set_xlabel("training examples")
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=7)
    fig.suptitle("Learning curves: mean over seeds and items per budget, fitted y = a + b n^-c", fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def _main_names(entries: dict, main: str | None, test_sets: list[str]) -> list[str]:
    return [name for name in (f"eval/{t}/{main}" for t in test_sets) if main and name in entries]


def design_outputs(
    out: Path, runs: list[Run], metrics: list[str], main: str | None, test_sets: list[str], n_resamples: int, seed: int, mixture: dict | None = None
):
    """`mixture.json` (`mixture`: the `mixture_report` already computed) and `exchange_rates.json` when
    the runs form a mixture design or learning curves, with their tables and plots; returns (tables, plots, notes)."""
    tables: list[Table] = []
    plots: list[Path] = []
    notes: list[str] = []
    completed = [r for r in runs if r.status == "completed"]
    if mixture is not None:
        write_text_atomic(out / "mixture.json", json.dumps(mixture, indent=2) + "\n")
        log.info("report: mixture design of %d points -> %s", len(mixture["design"]), out / "mixture.json")
        notes.append(
            f"mixture.json: a {len(mixture['design'])}-point design over {', '.join(mixture['components'])} at {mixture['budget']} examples; "
            "shares are what each run trained on (results.json data.counts)"
        )
        tables.append(mixture_table(mixture))
        names = _main_names(mixture["metrics"], main, test_sets)
        if names and len(mixture["components"]) <= 3:
            plots.append(plot_mixture(out / "mixture.png", mixture, names))
    curves = curves_report(completed, metrics, score_table, n_resamples, seed)
    if curves is not None:
        write_text_atomic(out / "exchange_rates.json", json.dumps(curves, indent=2) + "\n")
        log.info("report: learning curves of %s -> %s", ", ".join(curves["sources"]), out / "exchange_rates.json")
        notes.append(f"exchange_rates.json: learning curves of {', '.join(curves['sources'])} (runs on one source at 3 or more budgets)")
        names = _main_names(curves["metrics"], main, test_sets)
        tables.append(exchange_table(curves, names or list(curves["metrics"])[:1]))
        if names:
            plots.append(plot_curves(out / "learning_curves.png", curves, names))
    return tables, plots, notes


# ------------------------------------------------------------------------------------------- entry


def build_report(
    sweep_dir: Path | str,
    baseline: str | None = "native",
    out_dir: Path | str | None = None,
    main_metric: str | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
    strict_baseline: bool = True,
    pilot: Path | str | None = None,
    effect: float | None = None,
) -> Path:
    """Write the sweep's summary tables, plots and `report.html`; return the path of `report.html`.
    `baseline=None` leaves the comparison columns out (e.g. a sweep of one config over seeds);
    `strict_baseline=False` drops a baseline the sweep has no run of, instead of refusing it. `pilot`: a
    pilot sweep whose seed-to-seed variance lets a one-seed mixture design be tested; `effect`: the
    difference whose needed seeds `power.json` states (default: each comparison's own)."""
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: not a directory")
    out = Path(out_dir).resolve() if out_dir else sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    runs = load_runs(sweep_dir)
    configs = config_order({r.config for r in runs})
    missing_baseline = baseline is not None and baseline not in configs
    if missing_baseline and not strict_baseline:
        log.info("report: no run of data config %s: no comparison columns", baseline)
        baseline = None
    elif missing_baseline:
        raise UserError(f"--baseline {baseline}: no run of that data config in {sweep_dir} (found: {', '.join(configs)})")
    counts = {s: sum(r.status == s for r in runs) for s in ("completed", "failed", "missing")}
    log.info("report: %d runs of %d configs (%s)", len(runs), len(configs), ", ".join(f"{n} {s}" for s, n in counts.items()))
    metrics = metric_names(runs)
    log.info("report: %d metrics; bootstrap with %d replicates", len(metrics), n_resamples)
    variances = pilot_seed_variances(load_runs(Path(pilot)), metrics) if pilot else None
    cells, mixture, n_compared = report_statistics(runs, configs, metrics, baseline, n_resamples, seed, variances, effect)
    write_text_atomic(out / "power.json", json.dumps(power_json(cells, n_compared), indent=2) + "\n")

    notes = [
        f"sweep: {sweep_dir}",
        f"runs: {len(runs)} ({', '.join(f'{n} {s}' for s, n in counts.items())}); baseline: {baseline or 'none'}",
        (
            "cells: mean over seeds and test items [95% CI], two-level bootstrap (seeds, then items) "
            f"with {n_resamples} replicates; corpus-level metrics (BLEU, ROUGE, BERTScore, medians) over seeds only"
        ),
    ]
    if baseline:
        notes.append(
            f"Δ: config − {baseline} on the same items (and seeds where both have them), 95% CI, "
            "two-sided sign-flip permutation p-value (unit: item; seed for corpus-level metrics)"
        )
        notes.append(
            f"multiplicity: the {n_compared} tests of this report (every config against {baseline} on every metric and "
            "test set, and the mixture's flatness tests) are one family; beside each raw p the table shows Holm's step-down corrected p (family-wise error), "
            "and summary.csv also has Benjamini-Hochberg's (p_bh, false discovery rate). Read the corrected one."
        )
        notes.append(
            "power: with 2+ matched seeds, p comes from a t test on the seed, item and item x seed variance components of the "
            "differences (the seed variance pooled over the configs), and each Δ shows its minimum detectable effect (MDE: 80% power at Holm's smallest threshold); "
            "'too little power' where the CI reaches the MDE, 'no effect >= MDE' where it lies inside ±MDE; "
            "power.json has the components, the MDE for 1, 3, 5 and 10 seeds and the seeds a difference needs"
        )
    if baseline and not any(r.config == baseline and r.status == "completed" for r in runs):
        notes.append(f"no comparison: the baseline {baseline} has no completed run")

    plots: list[Path] = []
    for (test_set, task), names in by_task(metrics).items():
        plots.append(plot_bars(out / f"bars_{_slug(test_set)}_{_slug(task)}.png", f"{test_set} / {task}", names, configs, cells, runs, baseline))
    main = main_metric or next((m for m in MAIN_METRICS if any(name.endswith(f"/{m}") for name in metrics)), None)
    test_sets = list(dict.fromkeys(metric.split("/")[1] for metric in metrics))
    if main and any(name.endswith(f"/{main}") for name in metrics):
        plots.append(plot_heatmap(out / "heatmap.png", main, test_sets, configs, cells, runs))
    else:
        notes.append(f"heatmap skipped: no metric {main_metric or ' or '.join(MAIN_METRICS)} in the runs")
    points = judge_points([r for r in runs if r.status == "completed"])
    if points:
        plots.append(plot_judge_vs_length(out / "judge_vs_length.png", points, configs))
    else:
        notes.append("judge score vs answer length: skipped, no judge verdicts in the predictions (run with eval=judge)")
    if not metrics:
        notes.append("no evaluation metric: no run completed")

    design_tables, design_plots, design_notes = design_outputs(out, runs, metrics, main, test_sets, n_resamples, seed, mixture)
    plots += design_plots
    notes += design_notes
    if (rounds := rounds_section(sweep_dir)) is not None:  # the mixture search's registered predictions (report/registered.py)
        design_tables.append(Table(*rounds[:3]))
        notes += rounds[3]

    tables = build_tables(runs, configs, metrics, cells, baseline) + design_tables
    truth = read_truth(sweep_dir)
    if truth is not None:  # a known-answer sweep: what was planted beside what was found (report/truth.py)
        check = truth_check(truth, cells, baseline, mixture, ALPHA)
        write_text_atomic(out / "truth_check.json", json.dumps(check, indent=2) + "\n")
        tables.insert(1, Table(f"Planted truth ({truth['metric']}) against what this report found", ["", "planted", "found"], truth_rows(check)))
        notes.append(f"truth.json: planted {truth['metric']}; the comparison is in truth_check.json and the table 'Planted truth'")
    lead = lead_summary(configs, metrics, cells, baseline, MAIN_METRICS, n_compared)
    if baseline:
        plot_forest(out / "forest.png", lead, _save)
    banner = DEMO_BANNER if any(r.demo for r in runs if r.status == "completed") else None
    title = f"medinject sweep report: {sweep_dir.name}"
    write_text_atomic(out / "summary.csv", summary_csv(runs, configs, metrics, cells, baseline))
    write_text_atomic(out / "summary.md", summary_markdown(title, notes, tables, plots, banner, lead_markdown(lead)))
    page = out / "report.html"
    write_text_atomic(page, report_html(title, notes, tables, plots, banner, lead_html(lead)))
    log.info("report: wrote %s, %s and %s", out / "summary.csv", out / "summary.md", page)
    return page


def power_json(cells: dict[tuple[str, str], Cell], family_size: int) -> dict:
    """`power.json`: per compared config and metric, the variance components, MDEs and verdict."""
    comparisons = [
        {"config": config, "metric": metric, "diff": cell.comparison.diff, "ci": [cell.comparison.low, cell.comparison.high],
         "p_holm": cell.p_holm, **cell.power}
        for (config, metric), cell in cells.items() if cell.power is not None
    ]  # fmt: skip
    return {"family_size": family_size, "alpha": ALPHA, "method": "medinject.report.power", "comparisons": comparisons}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m medinject.report", description="Tables, plots and an HTML page comparing a sweep's data configs."
    )
    parser.add_argument("sweep_dir", type=Path, help="the sweep directory (with sweep_summary.json, or run directories below it)")
    parser.add_argument(
        "--baseline", default=None, help="data config the others are compared with (default: native, when the sweep has native runs)"
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write the report (default: the sweep dir)")
    parser.add_argument("--main-metric", default=None, help=f"<task>/<metric> of the heatmap (default: first found of {', '.join(MAIN_METRICS)})")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap replicates (default: 2000)")
    parser.add_argument("--pilot", type=Path, default=None, help="a pilot sweep (2+ seeds per config): its seed variance lets a one-seed mixture design be tested")
    parser.add_argument("--effect", type=float, default=None, help="the difference whose needed seeds power.json states (default: each comparison's own)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        baseline = args.baseline or "native"
        page = build_report(
            args.sweep_dir, baseline, args.out, args.main_metric, args.resamples, strict_baseline=args.baseline is not None, pilot=args.pilot, effect=args.effect
        )
    except UserError as err:
        print(f"medinject: error: {err}", file=sys.stderr)
        sys.exit(2)
    print(page)


