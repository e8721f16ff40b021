"""The comparison report of a sweep: one table per test set and task, plots, one HTML page.

    python -m medinject.report <sweep dir> [--baseline native] [--out DIR] [--main-metric mcqu/em]

`build_report` reads the runs (`medinject.report.runs`), computes the cells with every test of the
report as one family (`medinject.report.cells`), and writes atomically into the sweep dir (or
`--out`) the tables (`medinject.report.render`: `summary.csv`, `summary.md`, `report.html` with every
table and plot embedded), the plots (`medinject.report.plots`: one bar chart per test set and task, a
heatmap of the main metric, a judge-score vs answer-length scatter when the predictions carry judge
verdicts) and the power file (`medinject.report.power`). A report of runs of the built-in tiny
random-weight model says at its top that its numbers are a demo.

When the runs form a mixture design (several compositions of the sources at one budget, read from
each run's `data.counts`; `experiment=mixture_search`, and the seven provenance configs themselves)
the report also writes the mixture file and plot (`medinject.report.mixture`); when some ran one
source alone at three or more budgets (`experiment=budget_curve`), the exchange rates and learning
curves (`medinject.report.curves`). A data config whose runs trained on different compositions is
listed once per composition (`native 0.50 + translated 0.50 (n=96)`). The file names are
`medinject.util.rundir`'s.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medinject.report.cells import ALPHA, MAIN_METRICS, by_task, metric_names, power_json, report_statistics, score_table
from medinject.report.curves import curves_report
from medinject.report.mixture import pilot_seed_variances
from medinject.report.registered import rounds_section
from medinject.report.plots import plot_bars, plot_curves, plot_heatmap, plot_judge_vs_length, plot_mixture, plot_truth, judge_points, save_png, slug
from medinject.report.render import (DEMO_BANNER, MODEL_NOTES, Table, build_tables, exchange_table, method_notes, mixture_table, report_html,
                                     summary_csv, summary_markdown)
from medinject.report.runs import Run, config_order, load_runs
from medinject.report.summary import lead_html, lead_markdown, lead_summary, plot_forest
from medinject.report.truth import read_truth, truth_check, truth_rows
from medinject.util import rundir
from medinject.util.errors import UserError
from medinject.util.io import check_writable, write_text_atomic

log = logging.getLogger(__name__)


def _main_names(entries: dict, main: str | None, test_sets: list[str]) -> list[str]:
    return [name for name in (f"eval/{t}/{main}" for t in test_sets) if main and name in entries]


def design_outputs(
    out: Path, runs: list[Run], metrics: list[str], main: str | None, test_sets: list[str], n_resamples: int, seed: int, mixture: dict | None = None
):
    """The mixture file (`mixture`: the `mixture_report` already computed) and the exchange rates when
    the runs form a mixture design or learning curves, with their tables and plots; returns (tables, plots, notes)."""
    tables: list[Table] = []
    plots: list[Path] = []
    notes: list[str] = []
    completed = [r for r in runs if r.status == "completed"]
    if mixture is not None:
        write_text_atomic(out / rundir.MIXTURE, json.dumps(mixture, indent=2) + "\n")
        log.info("report: mixture design of %d points -> %s", len(mixture["design"]), out / rundir.MIXTURE)
        notes.append(
            f"{rundir.MIXTURE}: a {len(mixture['design'])}-point design over {', '.join(mixture['components'])} at {mixture['budget']} examples; "
            "shares are what each run trained on (its recorded data.counts)"
        )
        notes += sorted({MODEL_NOTES[entry["model"]] for entry in mixture["metrics"].values() if entry.get("model") in MODEL_NOTES})
        tables.append(mixture_table(mixture))
        names = _main_names(mixture["metrics"], main, test_sets)
        if names and len(mixture["components"]) <= 3:
            plots.append(plot_mixture(out / "mixture.png", mixture, names))
    curves = curves_report(completed, metrics, score_table, n_resamples, seed)
    if curves is not None:
        write_text_atomic(out / rundir.EXCHANGE_RATES, json.dumps(curves, indent=2) + "\n")
        log.info("report: learning curves of %s -> %s", ", ".join(curves["sources"]), out / rundir.EXCHANGE_RATES)
        notes.append(f"{rundir.EXCHANGE_RATES}: learning curves of {', '.join(curves['sources'])} (runs on one source at 3 or more budgets)")
        names = _main_names(curves["metrics"], main, test_sets)
        tables.append(exchange_table(curves, names or list(curves["metrics"])[:1]))
        if names:
            plots.append(plot_curves(out / "learning_curves.png", curves, names))
    return tables, plots, notes



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
    """Write the sweep's summary tables, plots and report page; return the path of the page.
    `baseline=None` leaves the comparison columns out (e.g. a sweep of one config over seeds);
    `strict_baseline=False` drops a baseline the sweep has no run of, instead of refusing it. `pilot`: a
    pilot sweep whose seed-to-seed variance lets a one-seed mixture design be tested; `effect`: the
    difference whose needed seeds the power file states (default: each comparison's own)."""
    sweep_dir = Path(sweep_dir).resolve()
    if not sweep_dir.is_dir():
        raise UserError(f"{sweep_dir}: not a directory")
    out = Path(out_dir).resolve() if out_dir else sweep_dir
    check_writable(out)  # before the bootstrap, not after
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
    write_text_atomic(out / rundir.POWER, json.dumps(power_json(cells, n_compared), indent=2) + "\n")

    notes = method_notes(sweep_dir, runs, counts, baseline, n_resamples, n_compared)
    plots: list[Path] = []
    for (test_set, task), names in by_task(metrics).items():
        plots.append(plot_bars(out / f"bars_{slug(test_set)}_{slug(task)}.png", f"{test_set} / {task}", names, configs, cells, runs, baseline))
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
        write_text_atomic(out / rundir.TRUTH_CHECK, json.dumps(check, indent=2) + "\n")
        tables.insert(1, Table(f"Planted truth ({truth['metric']}) against what this report found", ["", "planted", "found"], truth_rows(check)))
        if check["configs"]:
            plots.insert(0, plot_truth(out / "truth.png", truth, check, cells))
        notes.append(f"{rundir.TRUTH}: planted {truth['metric']}; the comparison is in {rundir.TRUTH_CHECK} and the table 'Planted truth'")
    lead = lead_summary(configs, metrics, cells, baseline, MAIN_METRICS, n_compared)
    if baseline:
        plot_forest(out / "forest.png", lead, save_png)
    banner = DEMO_BANNER if any(r.demo for r in runs if r.status == "completed") else None
    title = f"medinject sweep report: {sweep_dir.name}"
    write_text_atomic(out / rundir.SUMMARY_CSV, summary_csv(runs, configs, metrics, cells, baseline))
    write_text_atomic(out / rundir.SUMMARY_MD, summary_markdown(title, notes, tables, plots, banner, lead_markdown(lead)))
    page = out / rundir.REPORT_HTML
    write_text_atomic(page, report_html(title, notes, tables, plots, banner, lead_html(lead)))
    log.info("report: wrote %s, %s and %s", out / rundir.SUMMARY_CSV, out / rundir.SUMMARY_MD, page)
    return page
