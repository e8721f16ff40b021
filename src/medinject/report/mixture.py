"""Which shares of the sources to train on: a mixture model fitted to the runs of a simplex design.

The runs of a sweep form a mixture design when, at one training budget (examples in total), they
trained on at least three different compositions of two or more sources, one of them a blend. A
run's shares are what it trained on, the per-source counts of its run record (`data.counts`), never
its name or its requested weights. The provenance sweep's seven configurations are such a design
(the simplex-centroid design: vertices, edge midpoints, centroid); `experiment=mixture_search` adds
interior points.

Model: a Scheffé quadratic polynomial, y(x) = sum_i b_i x_i + sum_{i<j} b_ij x_i x_j, over the shares x
(summing to 1, so there is no intercept), fitted by least squares to each point's mean score
(over its seeds and the test items). Why this one and not a data mixing law (Ye et al., 2024,
y = c + k exp(sum_i t_i x_i)): the exponential of a linear function of the shares is monotone along
every line through the simplex, so its best mixture is always a single source; a quadratic can put
the optimum inside (a blend better than each of its parts, which is what "native and translated
complement each other" means), it is linear in its coefficients, so every bootstrap replicate is
refitted exactly and fast, and its 6 coefficients (3 sources) are estimable from the 7-point
simplex-centroid design. With fewer distinct points than coefficients + 1 the linear Scheffé model
(b_i only) is fitted instead, and said so. The linear model's fit is always reported beside the
chosen one so a reader sees what the curvature buys.

Uncertainty: `stats.bootstrap_point_means` (test items drawn once per replicate and shared by all
points, seeds drawn within each point), the model refitted to every replicate. From the replicates:
a percentile CI for each coefficient and for the predicted score at the optimum; the optimum's
confidence region, the smallest set of cells of a 0.05 lattice that holds the optima of 95% of the
replicates; and the points worth running next (see `_next_points`). With one seed per point the
intervals carry item noise only, not seed-to-seed noise: the output says so.

The optimum is the best point of a 0.01 lattice over the simplex (exact enough for shares, and the
same search for every replicate). Scores are maximised; metrics that are not scores (answer
length) are left out.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from medinject.report.stats import ScoreTable, adjust_pvalues, bootstrap_point_means, score_matrix

ORDER = ("native", "synthetic", "translated")  # the study's sources first, any other after, by name
NOT_SCORES = ("answer_words_mean", "answer_words_median")  # describe answers; nothing to maximise
CONFIDENCE = 0.95
ALPHA = 0.05  # family-wise level of the flatness tests (Holm over the report's family)
FINE = 100  # lattice steps per unit share for the optimum search
COARSE = 20  # lattice steps per unit share for the confidence region and the next points
NEAR_RUN = 0.1  # a suggested point is at least this far (largest share difference) from every run


@dataclass
class DesignPoint:
    """The runs that trained on one composition at the design's budget."""

    shares: tuple[float, ...]  # in the order of the design's components
    runs: list  # report.runs.Run objects (duck-typed: config, seed, run_dir, composition)


def composition_shares(composition: dict[str, int]) -> dict[str, float]:
    total = sum(composition.values())
    return {source: n / total for source, n in composition.items()} if total else {}


def order_components(names) -> list[str]:
    return sorted(set(names), key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s))


def find_design(runs: Sequence) -> tuple[int, list[str], list[DesignPoint]] | None:
    """(budget, components, points) of the largest mixture design among the completed runs, or None."""
    by_budget: dict[int, list] = {}
    for run in runs:
        if run.status == "completed" and getattr(run, "composition", None):
            by_budget.setdefault(sum(run.composition.values()), []).append(run)
    best = None
    for budget, group in by_budget.items():
        components = order_components(s for run in group for s, n in run.composition.items() if n > 0)
        points: dict[tuple[float, ...], list] = {}
        for run in group:
            shares = composition_shares(run.composition)
            points.setdefault(tuple(round(shares.get(c, 0.0), 6) for c in components), []).append(run)
        blends = sum(1 for shares in points if sum(s > 0 for s in shares) > 1)
        if len(components) >= 2 and len(points) >= 3 and blends and (best is None or len(points) > len(best[2])):
            ordered = sorted(points.items(), key=lambda kv: tuple(-share for share in kv[0]))  # independent of run order
            best = (budget, components, [DesignPoint(shares, group) for shares, group in ordered])
    return best


def scheffe_terms(components: list[str], quadratic: bool) -> list[str]:
    names = list(components)
    if quadratic:
        names += [f"{a}*{b}" for a, b in itertools.combinations(components, 2)]
    return names


def scheffe_matrix(shares: np.ndarray, quadratic: bool) -> np.ndarray:
    """Rows of shares -> the Scheffé model's regressors (x_i, then x_i x_j for i < j)."""
    shares = np.atleast_2d(shares)
    columns = [shares]
    if quadratic:
        pairs = list(itertools.combinations(range(shares.shape[1]), 2))
        columns.append(np.stack([shares[:, i] * shares[:, j] for i, j in pairs], axis=1) if pairs else np.empty((len(shares), 0)))
    return np.concatenate(columns, axis=1)


@functools.lru_cache(maxsize=8)
def _lattice(k: int, steps: int) -> np.ndarray:
    rows = [c for c in itertools.product(range(steps + 1), repeat=k - 1) if sum(c) <= steps]
    lattice = np.array([[*c, steps - sum(c)] for c in rows], dtype=float) / steps
    lattice.flags.writeable = False
    return lattice


def simplex_lattice(k: int, steps: int) -> np.ndarray:
    """Every composition of k shares that are multiples of 1/steps, as rows."""
    return _lattice(k, steps)


def _fit_quality(x: np.ndarray, y: np.ndarray) -> dict:
    """R², leave-one-out RMSE (from the hat matrix; null when a point decides its own fit) and residual df."""
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    residual = y - x @ coef
    sst = float(np.sum((y - y.mean()) ** 2))
    hat = np.diag(x @ np.linalg.pinv(x))
    loo = None
    if np.all(hat < 1 - 1e-8):
        loo = float(np.sqrt(np.mean((residual / (1 - hat)) ** 2)))
    return {
        "r2": float(1 - np.sum(residual**2) / sst) if sst > 0 else None,
        "loo_rmse": loo,
        "residual_df": int(len(y) - np.linalg.matrix_rank(x)),
        "rmse": float(np.sqrt(np.mean(residual**2))),
    }


def _interval(values: np.ndarray) -> list[float] | None:
    finite = values[np.isfinite(values)]
    if finite.size < 2:
        return None
    tail = (1 - CONFIDENCE) / 2
    return [float(v) for v in np.quantile(finite, [tail, 1 - tail])]


def _as_shares(components: list[str], row) -> dict[str, float]:
    return {c: round(float(v), 4) for c, v in zip(components, row)}


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest share difference between each row of a and each row of b."""
    return np.abs(np.atleast_2d(a)[:, None, :] - np.atleast_2d(b)[None, :, :]).max(axis=2)


def fit_mixture(
    components: list[str],
    shares: np.ndarray,
    matrices: list[np.ndarray],
    n_resamples: int = 2000,
    seed: int = 0,
    seed_variance: tuple[float, float] | None = None,
    alpha: float = ALPHA,
    settle: bool = True,
) -> dict:
    """The fitted mixture model of one metric: `shares` (points x components) and, per point, its seeds
    x items score matrix (columns aligned across points). Returns the `mixture.json` entry, its optimum
    settled by its own flatness test (a family of one); `settle=False` leaves that to the caller
    (`settle_optimum` with the family's Holm p), the candidate optimum in place."""
    shares = np.asarray(shares, dtype=float)
    means = np.array([np.nanmean(m) if np.isfinite(m).any() else np.nan for m in matrices])
    keep = np.isfinite(means)
    shares, means, matrices = shares[keep], means[keep], [m for m, k in zip(matrices, keep) if k]
    k = len(components)
    n_quadratic = k + k * (k - 1) // 2
    quadratic = len(means) >= n_quadratic + 1
    x = scheffe_matrix(shares, quadratic)
    terms = scheffe_terms(components, quadratic)
    points = [
        {"shares": _as_shares(components, s), "mean": float(m), "n_seeds": int(np.atleast_2d(mat).shape[0]), "n_items": int(np.atleast_2d(mat).shape[1])}
        for s, m, mat in zip(shares, means, matrices)
    ]
    entry: dict = {
        "model": "scheffe_quadratic" if quadratic else "scheffe_linear",
        "why": "estimable" if quadratic else "too_few_points_for_quadratic",  # the module doc (and the report's notes) say why
        "terms": terms,
        "points": points,
    }
    if len(means) < k or np.linalg.matrix_rank(x) < len(terms):
        reason = f"too few points: {len(means)} design points with scores cannot determine the {len(terms)} coefficients"
        return {**entry, "optimum": None, "no_optimum": "too_few_points", "reason": reason}
    if np.ptp(means) == 0:
        return {**entry, "optimum": None, "no_optimum": "flat", "reason": f"flat: every design point scored {means[0]:.6g}; no mixture is better than another"}

    coef, *_ = np.linalg.lstsq(x, means, rcond=None)
    entry["coefficients"] = dict(zip(terms, map(float, coef)))
    entry["fit"] = {**_fit_quality(x, means), "n_points": int(len(means)), "n_runs": int(sum(p["n_seeds"] for p in points))}
    entry["linear_fit"] = _fit_quality(scheffe_matrix(shares, False), means)

    fine = simplex_lattice(k, FINE if k <= 3 else COARSE)
    surface = scheffe_matrix(fine, quadratic)
    best = int(np.argmax(surface @ coef))
    entry["optimum"] = _as_shares(components, fine[best])
    entry["predicted"] = float(surface[best] @ coef)

    single = all(np.atleast_2d(m).shape[0] == 1 for m in matrices)
    entry["flatness"] = flatness_test(shares, matrices, quadratic, seed_variance)
    if entry["flatness"]["p_value"] is None or entry["flatness"]["p_value"] >= alpha:  # Holm's p is never smaller
        entry = {**entry, "ci": None, "optimum_region": None, "next_points": []}
        return settle_optimum(entry, entry["flatness"]["p_value"], alpha, family_size=1) if settle else entry
    replicates = bootstrap_point_means(matrices, n_resamples, seed)
    replicates = replicates[np.isfinite(replicates).all(axis=1)]
    coefs = replicates @ np.linalg.pinv(x).T  # least squares refitted to every replicate
    entry["coefficient_ci"] = {t: _interval(coefs[:, i]) for i, t in enumerate(terms)}
    entry["ci"] = _interval(coefs @ surface[best])

    coarse = simplex_lattice(k, COARSE)
    optima = _argmax_rows(coefs, surface)
    cell = np.argmin(_distance(fine[optima], coarse), axis=1)  # each replicate's optimum -> nearest coarse cell
    counts = np.bincount(cell, minlength=len(coarse))
    order = np.argsort(-counts, kind="stable")
    taken = order[: int(np.searchsorted(np.cumsum(counts[order]), CONFIDENCE * len(cell)) + 1)]
    region = coarse[taken]
    entry["optimum_region"] = {
        "confidence": CONFIDENCE,
        "lattice_step": 1 / COARSE,
        "share_ranges": {c: [float(region[:, i].min()), float(region[:, i].max())] for i, c in enumerate(components)},
        "points": [_as_shares(components, r) for r in region],
    }
    spread = (coefs @ scheffe_matrix(region, quadratic).T).std(axis=0)
    entry["next_points"] = _next_points(components, shares, fine[best], region, spread)
    entry["uncertainty"] = (
        f"two-level bootstrap, {len(coefs)} replicates: test items drawn once per replicate and shared by all points, "
        "seeds drawn within each point; the model refitted to each"
        + ("; one seed per point, so the intervals leave out seed-to-seed noise (the test used the pilot's seed variance)" if single else "")
    )
    return settle_optimum(entry, entry["flatness"]["p_value"], alpha, family_size=1) if settle else entry


def flatness_test(shares: np.ndarray, matrices: list[np.ndarray], quadratic: bool, seed_variance: tuple[float, float] | None = None) -> dict:
    """F test that every non-constant term of the Scheffé model is zero (the surface is flat), fitted to
    the runs' mean scores (one per seed and point), so that its noise is the seed-to-seed spread of a
    run's score (item x seed noise included; the items are the same for every point, so a hard item
    moves every point alike and cancels). The noise variance is the full model's residual mean square
    when some point has 2 or more seeds; with one seed per point it is a pilot sweep's `seed_variance`
    (variance of one run's score between seeds, and its degrees of freedom; inf: taken as known), and
    without one there is no test (`p_value` None, `why` says so)."""
    rows, means = [], []
    for point, matrix in zip(shares, matrices):
        for run in np.atleast_2d(np.asarray(matrix, dtype=float)):
            if np.isfinite(run).any():
                rows.append(point)
                means.append(float(np.nanmean(run)))
    y = np.array(means)
    x = scheffe_matrix(np.array(rows), quadratic)
    n, rank = len(y), int(np.linalg.matrix_rank(x))
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    rss_full = float(np.sum((y - x @ coef) ** 2))
    rss_flat = float(np.sum((y - y.mean()) ** 2))
    q = rank - 1  # the constant is the model's only term under "flat" (the shares sum to 1)
    test: dict = {"test": "F test of the non-constant Scheffé terms on the runs' mean scores", "n_runs": n, "df": None, "F": None, "p_value": None}
    replicated = n > len({tuple(r) for r in rows})
    if q < 1:
        return {**test, "why": "too_few_points", "reason": f"too few points: {len(shares)} compositions leave no non-constant term to test"}
    if replicated:
        if n - rank < 1:
            return {**test, "why": "too_few_points", "reason": f"too few points: {n} runs for {rank} coefficients leave no residual to estimate the noise"}
        noise, df2, source = rss_full / (n - rank), float(n - rank), "the residual mean square of this sweep's runs (seeds included)"
    elif seed_variance is not None:
        noise, df2 = float(seed_variance[0]), float(seed_variance[1])
        source = f"a pilot sweep's seed variance {noise:.4g} ({df2:g} df)"
    else:
        return {**test, "why": "one_seed", "reason": "one seed per point: seed-to-seed noise cannot be estimated (run seed=1,2 or more, or give --pilot)"}
    if noise <= 0:
        f_value = math.inf if rss_flat - rss_full > 0 else 0.0
    else:
        f_value = (rss_flat - rss_full) / q / noise
    p_value = float(stats.chi2.sf(q * f_value, q) if math.isinf(df2) else stats.f.sf(f_value, q, df2))
    return {**test, "F": float(f_value), "df": [q, df2], "p_value": p_value, "noise": source}


def settle_optimum(entry: dict, p_holm: float | None, alpha: float = ALPHA, family_size: int = 1) -> dict:
    """State the optimum only where the flatness test rejects at the family's Holm-corrected level;
    otherwise move the surface's best point to `descriptive_best` and say why there is no optimum."""
    flatness = entry.get("flatness") or {}
    if flatness.get("p_value") is not None:
        entry["flatness"] = {**flatness, "p_holm": p_holm, "alpha": alpha, "family_size": family_size}
    if p_holm is not None and p_holm < alpha:
        return entry
    best = {"shares": entry.pop("optimum"), "predicted": entry.pop("predicted")}
    for key in ("ci", "optimum_region", "next_points"):
        entry.pop(key, None)
    if flatness.get("p_value") is None:
        why, reason = flatness.get("why", "too_few_points"), flatness.get("reason", "no test")
    else:
        why = "flat"
        reason = f"flat: the surface is not distinguishable from flat (F {flatness['F']:.3g}, Holm p {p_holm:.3g} over {family_size} tests, alpha {alpha:g})"
    note = "the fitted surface's best point: descriptive only, not an optimum (" + reason + ")"
    return {**entry, "optimum": None, "no_optimum": why, "reason": reason, "descriptive_best": {**best, "note": note}}


def _argmax_rows(coefs: np.ndarray, surface: np.ndarray, chunk: int = 500) -> np.ndarray:
    return np.concatenate([np.argmax(coefs[i : i + chunk] @ surface.T, axis=1) for i in range(0, len(coefs), chunk)]) if len(coefs) else np.array([], int)


def _next_points(components, run_shares, optimum, region, spread, most: int = 3) -> list[dict]:
    """Points worth running next: the predicted optimum when no run is near it (it checks the
    prediction), then the points of the optimum's confidence region where the surface is least certain,
    each at least NEAR_RUN from every run and every earlier suggestion (they narrow the region most)."""
    chosen: list[dict] = []
    taken = np.atleast_2d(run_shares)
    if _distance(optimum, taken).min() >= NEAR_RUN / 2:
        chosen.append({"shares": _as_shares(components, optimum), "why": "the predicted optimum, not run yet: checks the prediction"})
        taken = np.vstack([taken, optimum])
    if region is None:
        return chosen
    for index in np.argsort(-spread, kind="stable"):
        if len(chosen) >= most:
            break
        if _distance(region[index], taken).min() >= NEAR_RUN:
            chosen.append(
                {"shares": _as_shares(components, region[index]), "why": f"in the optimum's {CONFIDENCE:.0%} region, prediction spread {spread[index]:.3g}"}
            )
            taken = np.vstack([taken, region[index]])
    return chosen


def mixture_report(
    runs: Sequence,
    metrics: list[str],
    score_table: Callable[[str, list], ScoreTable],
    n_resamples: int = 2000,
    seed: int = 0,
    family: Sequence[float] = (),
    seed_variances: dict[str, tuple[float, float]] | None = None,
    alpha: float = ALPHA,
) -> dict | None:
    """`mixture.json` for the runs' mixture design, or None when they form none. `score_table(metric,
    runs)` gives {seed: {item: score}} of runs that trained on one composition. The flatness tests of
    every metric are one family with the report's other tests (`family`: their raw p-values): an
    optimum is stated where the Holm-corrected p over that whole family is below `alpha`.
    `seed_variances`: per metric, a pilot sweep's (variance, df) of a run's score between seeds
    (`pilot_seed_variances`), used where every point has one seed."""
    design = find_design(runs)
    if design is None:
        return None
    budget, components, points = design
    shares = np.array([p.shares for p in points])
    result: dict = {
        "budget": budget,
        "components": components,
        "design": [
            {"shares": _as_shares(components, p.shares), "runs": [str(r.run_dir) for r in p.runs], "seeds": sorted(r.seed for r in p.runs if r.seed is not None)}
            for p in points
        ],
        "method": "medinject.report.mixture",  # whose doc states the model and its uncertainty
        "metrics": {},
        "skipped": {},
    }
    for metric in metrics:
        if metric.split("/")[-1] in NOT_SCORES:
            result["skipped"][metric] = "not a score: nothing to maximise"
            continue
        tables = [score_table(metric, p.runs) for p in points]
        items: list[Hashable] = list(dict.fromkeys(key for t in tables for s in sorted(t) for key in t[s]))
        matrices = [score_matrix(t, items)[2] if t else np.full((1, max(1, len(items))), np.nan) for t in tables]
        pilot = (seed_variances or {}).get(metric)
        result["metrics"][metric] = fit_mixture(components, shares, matrices, n_resamples, seed, pilot, alpha, settle=False)
    tested = [m for m, e in result["metrics"].items() if (e.get("flatness") or {}).get("p_value") is not None]
    raw = [*family, *(result["metrics"][m]["flatness"]["p_value"] for m in tested)]
    holm = dict(zip(tested, adjust_pvalues(raw, "holm")[len(family) :])) if raw else {}
    size = int(np.isfinite(np.asarray(raw, dtype=float)).sum())
    for metric, entry in result["metrics"].items():
        if "optimum" in entry and entry.get("coefficients") is not None:
            result["metrics"][metric] = settle_optimum(entry, float(holm[metric]) if metric in holm else None, alpha, size)
    result["family"] = {
        "size": size,
        "alpha": alpha,
        "what": "the flatness test of every metric here"
        + (f" and the report's {len(family)} comparisons with the baseline" if family else "")
        + ", Holm-corrected together: an optimum is stated only where the surface is distinguishable from flat",
    }
    return result


def flatness_pvalues(mixture: dict | None) -> list[float]:
    """The raw flatness p-values of a `mixture_report` (for the report's family of tests)."""
    if not mixture:
        return []
    return [e["flatness"]["p_value"] for e in mixture["metrics"].values() if (e.get("flatness") or {}).get("p_value") is not None]


def pilot_seed_variances(runs: Sequence, metrics: list[str]) -> dict[str, tuple[float, float]]:
    """Per metric, the pooled variance of a run's score between seeds of one composition (and its
    degrees of freedom) over a pilot sweep's completed runs (`run.metrics`, `run.composition`);
    metrics with no composition run twice are left out."""
    groups: dict[tuple, list] = {}
    for run in runs:
        if run.status == "completed":
            key = tuple(sorted(composition_shares(run.composition).items())) if run.composition else (run.config,)
            groups.setdefault(key, []).append(run)
    out: dict[str, tuple[float, float]] = {}
    for metric in metrics:
        squares, df = 0.0, 0
        for group in groups.values():
            values = np.array([r.metrics[metric] for r in group if metric in r.metrics], dtype=float)
            values = values[np.isfinite(values)]
            if values.size >= 2:
                squares += float(((values - values.mean()) ** 2).sum())
                df += values.size - 1
        if df:
            out[metric] = (squares / df, float(df))
    return out


def surface_grid(entry: dict, components: list[str], steps: int = 60) -> tuple[np.ndarray, np.ndarray] | None:
    """(lattice shares, fitted values) of a metric's fitted model, for plotting; None without a fit."""
    if not entry.get("coefficients"):
        return None
    quadratic = entry["model"] == "scheffe_quadratic"
    grid = simplex_lattice(len(components), steps)
    coef = np.array([entry["coefficients"][t] for t in scheffe_terms(components, quadratic)])
    return grid, scheffe_matrix(grid, quadratic) @ coef
