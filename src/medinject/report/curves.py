"""Learning curves per source, and what one source's examples are worth in another's.

The runs of a sweep give a learning curve for a source when at least three of them trained on that
source alone (the counts of their run records name no other) at three or more budgets;
`experiment=budget_curve` runs each source alone at geometric budgets.

Curve: a power law with an asymptote, y(n) = a + b n^(-c) with c > 0, fitted by least squares to the
mean score (over seeds and test items) at each budget n. It is the form scaling-law studies fit
(performance approaches a ceiling `a` with diminishing returns), and it is linear in (a, b) for a given
c, so the fit is exact least squares over (a, b) on a grid of exponents c (0.01 to 5, log-spaced):
no optimiser, no starting values. With three budgets the curve passes through the points (no
residual degree of freedom), which the output says.

Exchange rate, at each budget N of the reference source (native when there is one): the number n of
source-s examples whose curve reaches the reference's score at N, n = ((y_ref(N) - a_s) / b_s)^(-1/c_s),
divided by N, i.e. how many s examples buy what one reference example buys, at that scale (every curve
starts from the same base model, so equal scores mean equal gains). It is unbounded when the
reference's score at N lies beyond s's asymptote (no amount of s reaches it), undefined when s's
curve is flat, and marked extrapolated when n lies outside the budgets s was run at.

Uncertainty: `stats.bootstrap_point_means` over all curve points at once (test items drawn once per
replicate and shared, seeds drawn within each point), the curves refitted to every replicate; the
rate's 95% interval is the percentile interval of the replicates' rates, an unbounded replicate
counting as infinitely large (so an interval may have no upper end: null in the JSON).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np

from medinject.report.mixture import NOT_SCORES, order_components
from medinject.report.stats import ScoreTable, bootstrap_point_means, score_matrix

EXPONENTS = np.geomspace(0.01, 5.0, 160)
CONFIDENCE = 0.95
REFERENCE = "native"


def find_curves(runs: Sequence) -> dict[str, dict[int, list]]:
    """{source: {budget: runs}} of the completed single-source runs, for sources run at >= 3 budgets."""
    found: dict[str, dict[int, list]] = {}
    for run in runs:
        composition = {s: n for s, n in (getattr(run, "composition", None) or {}).items() if n > 0}
        if run.status == "completed" and len(composition) == 1:
            (source, n), = composition.items()
            found.setdefault(source, {}).setdefault(n, []).append(run)
    return {s: dict(sorted(b.items())) for s, b in found.items() if len(b) >= 3}


def fit_power_law(budgets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(a, b, c) of y = a + b n^-c for each row of `values` (replicates x budgets): least squares in
    (a, b) at every exponent of EXPONENTS (a straight-line fit in z = n^-c), the exponent with the
    smallest squared error kept."""
    values = np.atleast_2d(np.asarray(values, dtype=float))
    z = np.asarray(budgets, dtype=float)[None, :] ** -EXPONENTS[:, None]  # exponents x budgets
    z_centred = z - z.mean(axis=1, keepdims=True)
    y_centred = values - values.mean(axis=1, keepdims=True)
    szz = (z_centred**2).sum(axis=1)  # exponents
    syz = y_centred @ z_centred.T  # replicates x exponents
    sse = (y_centred**2).sum(axis=1, keepdims=True) - syz**2 / szz
    best = np.argmin(sse, axis=1)  # the first exponent among equals (a flat curve: any exponent fits)
    rows = np.arange(len(values))
    b = syz[rows, best] / szz[best]
    a = values.mean(axis=1) - b * z.mean(axis=1)[best]
    return np.stack([a, b, EXPONENTS[best]], axis=1)


def power_law(params: np.ndarray, n) -> np.ndarray:
    a, b, c = np.asarray(params, dtype=float).T
    return a + b * np.asarray(n, dtype=float) ** (-c)


def invert(params: np.ndarray, level) -> np.ndarray:
    """n where each curve reaches `level`: inf beyond the asymptote, NaN for a flat curve."""
    a, b, c = np.atleast_2d(params).T
    level = np.broadcast_to(np.asarray(level, dtype=float), a.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (level - a) / b
        n = np.where(ratio > 0, ratio ** (-1.0 / c), np.inf)
    return np.where(np.abs(b) < 1e-12, np.nan, n)


def _interval(values: np.ndarray) -> list[float | None] | None:
    """Percentile interval with inf allowed (an unbounded end is None); None without data."""
    kept = values[~np.isnan(values)]
    if kept.size < 2:
        return None
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(kept, [tail, 1 - tail], method="inverted_cdf")
    return [float(v) if np.isfinite(v) else None for v in (low, high)]


def fit_curves(curves: dict[str, dict[int, np.ndarray]], n_resamples: int = 2000, seed: int = 0, reference: str | None = None) -> dict:
    """Curves and exchange rates of one metric from {source: {budget: seeds x items matrix}} (items
    aligned across every matrix). Returns the metric's `exchange_rates.json` entry."""
    sources = order_components(curves)
    reference = reference or (REFERENCE if REFERENCE in sources else sources[0])
    keys = [(s, n) for s in sources for n in curves[s]]
    matrices = [curves[s][n] for s, n in keys]
    means = np.array([np.nanmean(m) if np.isfinite(m).any() else np.nan for m in matrices])
    has_spread = any(np.atleast_2d(m).shape[0] > 1 or np.atleast_2d(m).shape[1] > 1 for m in matrices)
    replicates = bootstrap_point_means(matrices, n_resamples, seed) if has_spread else np.empty((0, len(keys)))
    entry: dict = {"model": "power law with asymptote: y = a + b n^-c", "reference": reference, "curves": {}, "exchange_rates": {}}
    params: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for source in sources:
        columns = [i for i, (s, _) in enumerate(keys) if s == source]
        budgets = np.array([keys[i][1] for i in columns], dtype=float)
        y = means[columns]
        ok = np.isfinite(y)
        curve = {"points": [{"budget": int(n), "mean": float(v)} for n, v in zip(budgets[ok], y[ok])]}
        if ok.sum() < 3:
            entry["curves"][source] = {**curve, "fit": None, "reason": "fewer than 3 budgets with scores"}
            continue
        point = fit_power_law(budgets[ok], y[ok])[0]
        reps = replicates[:, columns][np.isfinite(replicates[:, columns]).all(axis=1)]
        boot = fit_power_law(budgets, reps) if len(reps) else np.empty((0, 3))
        residual = y[ok] - power_law(point, budgets[ok])
        sst = float(((y[ok] - y[ok].mean()) ** 2).sum())
        curve.update(
            {
                "a": float(point[0]), "b": float(point[1]), "c": float(point[2]),
                "ci": {p: _interval(boot[:, i]) for i, p in enumerate("abc")} if len(boot) else None,
                "r2": float(1 - (residual**2).sum() / sst) if sst > 0 else None,
                "residual_df": int(ok.sum() - 3),
                "flat": bool(np.ptp(y[ok]) == 0),
                "budget_range": [int(budgets[ok].min()), int(budgets[ok].max())],
            }
        )  # fmt: skip
        entry["curves"][source] = curve
        params[source] = (point, boot)
    if reference not in params:
        entry["exchange_rates"] = None
        entry["reason"] = f"no fitted curve for the reference source {reference}"
        return entry
    ref_point, ref_boot = params[reference]
    for source in sources:
        if source == reference or source not in params:
            continue
        point, boot = params[source]
        low, high = entry["curves"][source]["budget_range"]
        rates = []
        for budget in [p["budget"] for p in entry["curves"][reference]["points"]]:
            n_needed = float(invert(point, power_law(ref_point, budget))[0])
            rate = {"reference_budget": budget, "examples_needed": _finite_or_none(n_needed), "rate": _finite_or_none(n_needed / budget)}
            if np.isnan(n_needed):
                rate["status"] = f"undefined: {source}'s curve is flat"
            elif np.isinf(n_needed):
                rate["status"] = f"unbounded: {reference}'s score at {budget} is beyond {source}'s asymptote"
            else:
                rate["status"] = "extrapolated" if not low <= n_needed <= high else "defined"
            if len(boot) and len(ref_boot):
                m = min(len(boot), len(ref_boot))
                needed = invert(boot[:m], power_law(ref_boot[:m], budget))
                rate["ci"] = _interval(needed / budget)
                rate["replicates_unbounded"] = float(np.mean(np.isinf(needed)))
            else:
                rate["ci"] = None
            rates.append(rate)
        entry["exchange_rates"][source] = rates
    return entry


def _finite_or_none(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def curves_report(
    runs: Sequence, metrics: list[str], score_table: Callable[[str, list], ScoreTable], n_resamples: int = 2000, seed: int = 0
) -> dict | None:
    """The exchange rates (`rundir.EXCHANGE_RATES`) of the runs' learning curves, or None when they give none."""
    found = find_curves(runs)
    if not found:
        return None
    result: dict = {
        "sources": {s: {str(n): [str(r.run_dir) for r in group] for n, group in budgets.items()} for s, budgets in found.items()},
        "method": "medinject.report.curves",  # whose doc states the curve, the rate and their uncertainty
        "metrics": {},
        "skipped": {},
    }
    for metric in metrics:
        if metric.split("/")[-1] in NOT_SCORES:
            result["skipped"][metric] = "not a score"
            continue
        tables = {(s, n): score_table(metric, group) for s, budgets in found.items() for n, group in budgets.items()}
        items: list[Hashable] = list(dict.fromkeys(key for t in tables.values() for seed_ in sorted(t) for key in t[seed_]))
        curves: dict[str, dict[int, np.ndarray]] = {}
        for (source, n), table in tables.items():
            curves.setdefault(source, {})[n] = score_matrix(table, items)[2] if table else np.full((1, max(1, len(items))), np.nan)
        result["metrics"][metric] = fit_curves(curves, n_resamples, seed)
    return result
