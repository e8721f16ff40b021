"""The report's cells: per data config and metric, the estimate over seeds and items, and the paired
comparison with the baseline config, with every test of the report corrected as one family.

Per config and metric: mean over seeds and test items with a 95% CI, and the paired difference
against the baseline config with a p-value (`medinject.report.stats` says how). Metrics scored per
item in the predictions (exact match, Hamming, judge, answer length) are resampled over items and
seeds; corpus-level ones (BLEU, ROUGE, BERTScore) over seeds only. The p-values of all comparisons
(and the mixture's flatness tests) are one family: each gets its Holm and Benjamini-Hochberg
correction, and each comparison its minimum detectable effect and verdict (`medinject.report.power`).
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass

import numpy as np

from medinject.report.mixture import flatness_pvalues, mixture_report
from medinject.report.power import Components, pool_seed_variance, power_entry, variance_components, verdict
from medinject.report.runs import Run, base_metric
from medinject.report.stats import Comparison, Estimate, adjust_pvalues, bootstrap_ci, paired_difference, paired_differences, score_matrix

log = logging.getLogger(__name__)

NOT_COMPARED = {"n", "skipped_too_long", "reference_words_mean"}  # properties of the test set, not of the model
ITEM_FIELD = {"answer_words_mean": "answer_words"}  # run metric -> per-item field when the names differ
MAIN_METRICS = ("mcqu/em_constrained", "mcqu/em", "mcq/hamming_constrained", "mcq/hamming", "oeq/judge", "oeq/rougeL")
ALPHA = 0.05  # the family-wise level a comparison or an optimum is called significant at


@dataclass
class Cell:
    estimate: Estimate
    comparison: Comparison | None  # None for the baseline itself, or when the baseline has no run
    p_holm: float | None = None  # the comparison's p-value corrected over every comparison of the report
    p_bh: float | None = None
    components: Components | None = None  # variance components of the paired differences (2+ matched seeds)
    power: dict | None = None  # medinject.report.power.power_entry, with its verdict


def metric_names(runs: list[Run]) -> list[str]:
    """Every eval metric `eval/<test set>/<task>/<metric>` of the completed runs, first-seen order."""
    names: dict[str, None] = {}
    for run in runs:
        for name in run.metrics:
            parts = name.split("/")
            if len(parts) == 4 and parts[0] == "eval" and base_metric(parts[3]) not in NOT_COMPARED:
                names[name] = None
    bases = list(dict.fromkeys(base_metric(n) for n in names))  # both protocols' versions of a metric next to each other
    return sorted(names, key=lambda n: (bases.index(base_metric(n)), n))


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
    metric = base_metric(metric)
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


def power_json(cells: dict[tuple[str, str], Cell], family_size: int) -> dict:
    """The power file (`rundir.POWER`): per compared config and metric, the variance components, MDEs and verdict."""
    comparisons = [
        {"config": config, "metric": metric, "diff": cell.comparison.diff, "ci": [cell.comparison.low, cell.comparison.high],
         "p_holm": cell.p_holm, **cell.power}
        for (config, metric), cell in cells.items() if cell.power is not None
    ]  # fmt: skip
    return {"family_size": family_size, "alpha": ALPHA, "method": "medinject.report.power", "comparisons": comparisons}
