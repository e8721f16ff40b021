"""The report's plots, each a PNG written atomically: a bar chart per test set and task, the heatmap of
the main metric, judge score against answer length, the mixture surface and the learning curves."""

from __future__ import annotations

import io
import logging
import math
from pathlib import Path

import numpy as np

from medinject.report.curves import power_law
from medinject.report.mixture import surface_grid
from medinject.report.render import num_text
from medinject.report.runs import Run, config_status
from medinject.util.io import write_bytes_atomic

log = logging.getLogger(__name__)


def save_png(fig, path: Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    write_bytes_atomic(path, buffer.getvalue())
    log.info("report: wrote %s", path)
    return path


def slug(text: str) -> str:
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
    return save_png(fig, out)


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
                ax.text(j, i, num_text(values[i, j]), ha="center", va="center", fontsize=8, color="black" if image.norm(values[i, j]) > 0.6 else "white")
            else:
                ax.text(j, i, config_status(config, runs).split(":")[0], ha="center", va="center", fontsize=8, color="tab:red")
    ax.set_xticks(range(len(test_sets)), test_sets)
    ax.set_yticks(range(len(configs)), configs, fontsize=8)
    ax.set_title(f"{main} by test set (mean over seeds and items)", fontsize=10)
    fig.tight_layout()
    return save_png(fig, out)


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
    return save_png(fig, out)


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
        detail = f"{entry['model']}, R² {num_text(fit['r2'])}" if fit else entry.get("reason", "no fit").split(";")[0]
        ax.set_title(f"{name}\n{detail}", fontsize=9)
    fig.suptitle(f"Mixture design at {mixture['budget']} examples: runs (dots), fitted surface, optimum (star), 95% region, run next (triangles)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    return save_png(fig, out)


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
    return save_png(fig, out)


def plot_truth(out: Path, truth: dict, check: dict, cells: dict) -> Path:
    """A known-answer sweep: each config's planted score (x) against the score found (y, mean over seeds
    and items with its 95% CI), the line where they agree, and the rank agreement in the title."""
    from matplotlib.figure import Figure

    metric = truth["metric"]
    configs = [c for c in check["configs"] if (c, metric) in cells]
    planted = np.array([truth["expected"][c] for c in configs])
    found = [cells[(c, metric)].estimate for c in configs]
    means = np.array([e.mean for e in found])
    errors = np.clip(np.vstack([means - [e.low for e in found], [e.high for e in found] - means]), 0, None)
    fig = Figure(figsize=(6.4, 5.2))
    ax = fig.subplots()
    ends = [min(planted.min(), (means - errors[0]).min()) - 0.03, max(planted.max(), (means + errors[1]).max()) + 0.03]
    ax.plot(ends, ends, color="tab:gray", linestyle="--", linewidth=1, label="found = planted")
    ax.errorbar(planted, means, yerr=errors, fmt="o", color="tab:blue", ecolor="black", capsize=3, label="found, 95% CI")
    for x, y, config in zip(planted, means, configs):
        ax.annotate(config, (x, y), textcoords="offset points", xytext=(6, -3), fontsize=7)
    ax.set_xlabel(f"planted ({metric})")
    ax.set_ylabel("found: mean over seeds and items")
    tau = (check.get("ranking") or {}).get("kendall_tau")
    seeds = "/".join(map(str, sorted({e.n_seeds for e in found})))
    ax.set_title(f"Known answer: planted against found (Kendall τ {'n/a' if tau is None else f'{tau:.2f}'}, {seeds} seeds)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return save_png(fig, out)
