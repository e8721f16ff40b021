"""The report's text: its tables, and the same tables as CSV, Markdown and one self-contained HTML page.

`summary.csv` has one row per config and metric (a config without a completed run: one row with its
status); `summary.md` and `report.html` have the answer first (`medinject.report.summary`), the notes,
then every table and plot. A run that failed or left nothing shows in every table as `failed:
<error>` or `missing`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

from medinject.report.cells import by_task
from medinject.report.runs import Run, completed_seeds, config_status
from medinject.report.stats import Comparison, Estimate
from medinject.util.rundir import POWER, SUMMARY_CSV

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


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]


def num_text(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.4g}"


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


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
            row = [config, config_status(config, runs), str(len(completed_seeds(config, runs)))]
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
    return f"{num_text(e.mean)} [{num_text(e.low)}, {num_text(e.high)}]"


def _comparison_text(c: Comparison, p_holm: float | None = None, power: dict | None = None) -> str:
    sign = "+" if c.diff > 0 else ""
    holm = f" (Holm {_p(p_holm)})" if p_holm is not None else ""
    said = ""
    if power:
        said = f"; {power['verdict']}" + (f", MDE {num_text(power['mde'])}" if power.get("mde") is not None else ", 1 seed: MDE unknown")
    return f"{sign}{num_text(c.diff)} [{num_text(c.low)}, {num_text(c.high)}] p={_p(c.p_value)}{holm}{said}"


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
            "seeds": " ".join(map(str, completed_seeds(config, runs))),
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


def _shares_text(shares: dict[str, float]) -> str:
    return ", ".join(f"{source} {share:.2f}" for source, share in shares.items())


def _interval_text(ci) -> str:
    if not ci:
        return "n/a"
    return "[" + ", ".join("inf" if end is None else num_text(end) for end in ci) + "]"  # None: unbounded (a rate's only infinity is +inf)


def mixture_table(mixture: dict) -> Table:
    """One row per metric: the fitted model, its fit, the best shares with their region, what to run next."""
    rows = []
    for name, entry in mixture["metrics"].items():
        if entry.get("optimum") is None:
            best = entry.get("descriptive_best")
            said = f"; descriptive best {_shares_text(best['shares'])} ({num_text(best['predicted'])})" if best else ""
            rows.append([name, entry["model"], "—", "—", f"no optimum: {entry.get('reason', '')}{said}", "—", "—", "—"])
            continue
        fit = entry["fit"]
        region = entry.get("optimum_region")
        ranges = ", ".join(f"{c} {lo:.2f}–{hi:.2f}" for c, (lo, hi) in region["share_ranges"].items()) if region else "n/a"
        rows.append(
            [
                name,
                entry["model"],
                f"R² {num_text(fit['r2'])}, LOO RMSE {num_text(fit['loo_rmse'])} (linear: R² {num_text(entry['linear_fit']['r2'])})",
                str(fit["residual_df"]),
                _shares_text(entry["optimum"]),
                f"{num_text(entry['predicted'])} {_interval_text(entry.get('ci'))}",
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
                value = "inf" if rate["status"].startswith("unbounded") else num_text(rate["rate"])
                text = "n/a" if value == "n/a" else f"{value} {_interval_text(rate.get('ci'))}"
                rows.append([name, source, f"{rate['reference_budget']} {entry['reference']}", needed, text, rate["status"]])
    header = ["metric", "source", "reference examples", "examples needed", "rate [95% CI]", "status"]
    return Table("Exchange rates (source examples per reference example, matched on the fitted learning curves)", header, rows)


# What the mixture file's `model` codes mean, for the report's notes (`medinject.report.mixture` says why).
MODEL_NOTES = {
    "scheffe_quadratic": (
        "mixture model: Scheffé quadratic, which can place the best mixture inside the simplex (a blend better than "
        "its parts), is refitted exactly per bootstrap replicate and is estimable from the simplex-centroid design; "
        "a data mixing law (exp of a linear function of the shares) is monotone along every line, so its best "
        "mixture is always a single source"
    ),
    "scheffe_linear": (
        "mixture model: Scheffé linear, as the design has too few distinct points for the quadratic's coefficients plus one"
    ),
}


def method_notes(sweep_dir: Path, runs: list[Run], counts: dict[str, int], baseline: str | None, n_resamples: int, n_compared: int) -> list[str]:
    """The notes on how the report's numbers were computed, listed above its tables."""
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
            f"and {SUMMARY_CSV} also has Benjamini-Hochberg's (p_bh, false discovery rate). Read the corrected one."
        )
        notes.append(
            "power: with 2+ matched seeds, p comes from a t test on the seed, item and item x seed variance components of the "
            "differences (the seed variance pooled over the configs), and each Δ shows its minimum detectable effect (MDE: 80% power at Holm's smallest threshold); "
            "'too little power' where the CI reaches the MDE, 'no effect >= MDE' where it lies inside ±MDE; "
            f"{POWER} has the components, the MDE for 1, 3, 5 and 10 seeds and the seeds a difference needs"
        )
    if baseline and not any(r.config == baseline and r.status == "completed" for r in runs):
        notes.append(f"no comparison: the baseline {baseline} has no completed run")
    return notes
