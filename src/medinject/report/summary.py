"""The answer first: what the top of `report.html` and `summary.md` says before the full tables.

Per test set, and for each task its main metric (the first of `main_metrics` the runs have for it:
constrained EM for mcqu, constrained Hamming for mcq, the judge, else ROUGE-L, for open answers): the
configurations ranked by their mean, each with its 95% CI, its difference from the baseline with that
difference's CI, and Holm's p over every comparison of the report. A rank is an order of means, not a
test: a configuration is called better or worse than the baseline only where its Holm-corrected p is
below `alpha`; otherwise the line says no configuration was separable from the baseline. A forest plot
draws the same differences with their CIs, one panel per test set.

The cells come from `medinject.report.cells` (duck-typed: `estimate` with mean / low / high, and
`comparison` with diff / low / high / p_value, `p_holm`), so this module needs nothing of it.
"""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

ALPHA = 0.05


@dataclass
class Ranked:
    rank: int
    config: str
    mean: float
    low: float
    high: float
    diff: float | None = None  # config - baseline
    diff_low: float | None = None
    diff_high: float | None = None
    p_holm: float | None = None
    verdict: str = ""  # baseline | better | worse | not separable | no comparison


@dataclass
class TaskAnswer:
    task: str
    metric: str  # eval/<test set>/<task>/<metric>[@protocol]
    rows: list[Ranked]
    sentence: str


@dataclass
class Lead:
    baseline: str | None
    n_compared: int
    alpha: float
    test_sets: dict[str, list[TaskAnswer]] = field(default_factory=dict)
    forest: Path | None = None

    def comparisons(self) -> list[tuple[str, str, Ranked]]:
        return [(ts, a.metric, r) for ts, answers in self.test_sets.items() for a in answers for r in a.rows if r.diff is not None]


def _base(name: str) -> str:
    return name.split("@")[0]


def main_metric_names(metrics: list[str], test_set: str, task: str, main_metrics) -> list[str]:
    """The task's main metric on this test set (each protocol's version of it, when there are two)."""
    for main in main_metrics:
        if not main.startswith(f"{task}/"):
            continue
        found = [m for m in metrics if _base(m) == f"eval/{test_set}/{main}"]
        if found:
            return found
    return []


def lead_summary(configs: list[str], metrics: list[str], cells: dict, baseline: str | None, main_metrics, n_compared: int,
                 alpha: float = ALPHA) -> Lead:
    lead = Lead(baseline, n_compared, alpha)
    groups: dict[str, list[str]] = {}
    for metric in metrics:
        _, test_set, task, _ = metric.split("/")
        groups.setdefault(test_set, [])
        if task not in groups[test_set]:
            groups[test_set].append(task)
    for test_set, tasks in groups.items():
        answers = []
        for task in tasks:
            for metric in main_metric_names(metrics, test_set, task, main_metrics):
                answers.append(_answer(task, metric, configs, cells, baseline, alpha, n_compared))
        lead.test_sets[test_set] = answers
    return lead


def _answer(task: str, metric: str, configs: list[str], cells: dict, baseline: str | None, alpha: float, n_compared: int) -> TaskAnswer:
    found = [(c, cells[c, metric]) for c in configs if (c, metric) in cells and math.isfinite(cells[c, metric].estimate.mean)]
    found.sort(key=lambda pair: -pair[1].estimate.mean)
    rows: list[Ranked] = []
    for position, (config, cell) in enumerate(found):
        e = cell.estimate
        rank = rows[-1].rank if rows and rows[-1].mean == e.mean else position + 1  # ties share a rank
        row = Ranked(rank, config, e.mean, e.low, e.high)
        c = cell.comparison
        if config == baseline:
            row.verdict = "baseline"
        elif c is None:
            row.verdict = "no comparison"
        else:
            row.diff, row.diff_low, row.diff_high, row.p_holm = c.diff, c.low, c.high, cell.p_holm
            significant = row.p_holm is not None and row.p_holm < alpha
            row.verdict = ("better" if c.diff > 0 else "worse") if significant else "not separable"
        rows.append(row)
    if not baseline:
        sentence = "ranked by mean; no baseline, so no comparison."
    else:
        better = [r for r in rows if r.verdict == "better"]
        worse = [r for r in rows if r.verdict == "worse"]
        parts = []
        if better:
            parts.append("better than " + baseline + ": " + ", ".join(f"{r.config} ({_signed(r.diff)}, Holm p {_p(r.p_holm)})" for r in better))
        if worse:
            parts.append("worse than " + baseline + ": " + ", ".join(f"{r.config} ({_signed(r.diff)}, Holm p {_p(r.p_holm)})" for r in worse))
        if parts:
            sentence = "; ".join(parts) + f" (Holm over the report's {n_compared} comparisons, p < {alpha:g})."
        else:
            sentence = (f"no configuration differs from {baseline} at Holm p < {alpha:g} "
                        f"(over the report's {n_compared} comparisons); the ranking is an order of means, not a finding.")
    return TaskAnswer(task, metric, rows, sentence)


def _num(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def _signed(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.3f}"


def _p(p: float | None) -> str:
    return "n/a" if p is None or not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


HEADER = ["rank", "config", "mean [95% CI]", "Δ vs baseline [95% CI]", "Holm p", "verdict"]


def _cells(row: Ranked) -> list[str]:
    diff = f"{_signed(row.diff)} [{_signed(row.diff_low)}, {_signed(row.diff_high)}]" if row.diff is not None else "—"
    return [str(row.rank), row.config, f"{_num(row.mean)} [{_num(row.low)}, {_num(row.high)}]", diff,
            _p(row.p_holm) if row.diff is not None else "—", row.verdict]


def _intro(lead: Lead) -> str:
    if not lead.baseline:
        return "Configurations ranked on each task's main metric (mean over seeds and items, 95% CI). No baseline: no differences."
    return (f"Configurations ranked on each task's main metric (mean over seeds and items, 95% CI); Δ = config − {lead.baseline} "
            f"on the same items, 95% CI; Holm p corrected over all {lead.n_compared} comparisons of this report. "
            f"'better' / 'worse' only where Holm p < {lead.alpha:g}. The full tables follow.")


def lead_markdown(lead: Lead) -> str:
    lines = ["## Summary", "", _intro(lead), ""]
    for test_set, answers in lead.test_sets.items():
        lines += [f"### Test set {test_set}", ""]
        for answer in answers:
            lines += [f"**{answer.task}** ({answer.metric.split('/')[-1]}): {answer.sentence}", ""]
            lines += ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
            lines += ["| " + " | ".join(c.replace("|", "\\|") for c in _cells(row)) + " |" for row in answer.rows]
            lines.append("")
    if lead.forest is not None:
        lines += [f"![forest]({lead.forest.name})", ""]
    return "\n".join(lines)


def lead_html(lead: Lead) -> str:
    esc = html.escape
    parts = ['<section id="summary"><h2>Summary</h2>', f"<p>{esc(_intro(lead))}</p>"]
    for test_set, answers in lead.test_sets.items():
        parts.append(f"<h3>Test set {esc(test_set)}</h3>")
        for answer in answers:
            parts.append(f"<p><strong>{esc(answer.task)}</strong> ({esc(answer.metric.split('/')[-1])}): {esc(answer.sentence)}</p>")
            parts.append('<table class="lead"><thead><tr>' + "".join(f"<th>{esc(h)}</th>" for h in HEADER) + "</tr></thead><tbody>")
            for row in answer.rows:
                klass = {"better": "good", "worse": "bad"}.get(row.verdict)
                parts.append("<tr" + (f' class="{klass}"' if klass else "") + ">" + "".join(f"<td>{esc(c)}</td>" for c in _cells(row)) + "</tr>")
            parts.append("</tbody></table>")
    if lead.forest is not None:
        data = base64.b64encode(lead.forest.read_bytes()).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="forest"><figcaption>{esc(lead.forest.name)}: '
                     f"differences from {esc(lead.baseline or '')} with 95% CIs</figcaption></figure>")
    parts.append("</section>")
    return "\n".join(parts)


def plot_forest(out: Path, lead: Lead, save) -> Path | None:
    """One panel per test set: each configuration's difference from the baseline on each task's main
    metric, with its 95% CI; a line at 0; filled where Holm p < alpha. `save(fig, path)` writes it."""
    from matplotlib.figure import Figure

    panels = {ts: [(a.metric, r) for a in answers for r in a.rows if r.diff is not None] for ts, answers in lead.test_sets.items()}
    panels = {ts: rows for ts, rows in panels.items() if rows}
    if not panels:
        return None
    height = max(len(rows) for rows in panels.values())
    fig = Figure(figsize=(5.2 * len(panels), 0.28 * height + 1.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (test_set, rows) in zip(axes, panels.items()):
        rows = list(reversed(rows))  # the first task's top rank at the top
        y = list(range(len(rows)))
        for i, (metric, row) in enumerate(rows):
            significant = row.verdict in ("better", "worse")
            color = "tab:green" if row.verdict == "better" else "tab:red" if row.verdict == "worse" else "tab:blue"
            low, high = row.diff_low, row.diff_high
            if low is not None and high is not None and math.isfinite(low) and math.isfinite(high):
                ax.plot([low, high], [i, i], color=color, linewidth=1.5)
            ax.plot([row.diff], [i], "o", color=color, markerfacecolor=color if significant else "white", markersize=5)
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, [f"{m.split('/')[2]}/{m.split('/')[3]}  {r.config}" for m, r in rows], fontsize=7)
        ax.set_xlabel(f"difference from {lead.baseline} (95% CI)", fontsize=8)
        ax.set_title(f"test set {test_set}", fontsize=10)
        ax.tick_params(axis="x", labelsize=7)
    fig.suptitle(f"Differences from {lead.baseline} on each task's main metric (filled: Holm p < {lead.alpha:g})", fontsize=10)
    fig.tight_layout()
    lead.forest = save(fig, out)
    return lead.forest
