"""Statistics for comparing data configurations across seeds and test items.

The unit of data is a score matrix per (config, metric): one row per seed, one column per test item
(test set, task, item id), NaN where a seed has no score for an item (e.g. an unreadable judge
verdict). A metric that exists only per run (BLEU, ROUGE, BERTScore are corpus-level) is a matrix with
a single column. `score_matrix` builds one from `{seed: {item key: score}}`.

* `bootstrap_ci`: mean and percentile CI by a two-level bootstrap. Each replicate draws the seeds with
  replacement, then the items with replacement, and averages the drawn cells. The item draw is shared
  by the drawn seeds of a replicate because every seed is scored on the same test items (seeds and
  items are crossed, not nested): drawing items afresh for each seed would treat one test set as S
  independent ones and make the CI too narrow as seeds are added.
* `paired_difference`: a config against a baseline on the same items. Cells are matched by item key
  and by seed where both configs have that seed; with no seed in common, each item's score is first
  averaged over each config's seeds. Reported: difference of means, its CI (the same bootstrap on
  the matrix of differences) and a two-sided p-value. With two or more matched seeds the p-value is
  `power.paired_t`'s: a t test whose noise is the seed, item and item x seed variance components of
  the differences, so a seed that shifts the whole test set is noise, not an effect (for a run-level
  metric, one column, the paired t test over seeds); the report pools the seed variance over its
  configs (`seed_pool`); the same model gives the report's minimum detectable effects. Otherwise (one seed, or no seed in common) it comes from a sign-flip
  permutation test over items (`sign_flip_pvalue`): under the null hypothesis each item's
  (seed-averaged) difference is as likely to have either sign. That test cannot include seed-to-seed
  noise: it asks whether these two trained models differ on this test distribution, not whether
  their data configs do.

* `bootstrap_point_means`: the same two-level bootstrap for several design points at once (the runs of a
  mixture design or of a learning curve), so that a model fitted to the points can be refitted per
  replicate. Items are drawn once per replicate and shared by every point (all runs are scored on the
  same test items, so a hard item is hard for every point); seeds are drawn within each point (each
  point's runs are separate trainings).
* `adjust_pvalues`: a family of p-values corrected for multiplicity (the same values as statsmodels'
  `multipletests`), by Holm's step-down method (family-wise error rate, valid under any dependence between the tests)
  or Benjamini-Hochberg's step-up method (false discovery rate, valid for independent or positively
  dependent tests).

Every function is deterministic for a given `seed` (numpy `default_rng`) and vectorised over
replicates; replicates are drawn in chunks only to bound memory.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from scipy.stats import false_discovery_control

from medinject.report.power import SeedPool, paired_t

ScoreTable = Mapping[int, Mapping[Hashable, float]]
"""Scores of one config and metric: {seed: {item key: score}}; NaN or a missing key means no score."""

_CHUNK_CELLS = 4_000_000  # floats drawn at once by a bootstrap (~32 MB)


@dataclass(frozen=True)
class Estimate:
    """Mean over observed (seed, item) cells, with its bootstrap CI."""

    mean: float
    low: float
    high: float
    n_seeds: int
    n_items: int


@dataclass(frozen=True)
class Comparison:
    """Config minus baseline. `n_seeds` counts the matched seeds (0: no seed in common, so per-item
    means over each config's seeds were compared); `n_items` the items scored by both."""

    diff: float
    low: float
    high: float
    p_value: float
    n_seeds: int
    n_items: int


def score_matrix(table: ScoreTable, items: list[Hashable] | None = None) -> tuple[list[int], list[Hashable], np.ndarray]:
    """(seeds, item keys, matrix seeds x items) from {seed: {item: score}}; NaN where a score is absent.
    Items default to every key seen, in first-seen order."""
    seeds = sorted(table)
    if items is None:
        items = list(dict.fromkeys(key for seed in seeds for key in table[seed]))
    matrix = np.full((len(seeds), len(items)), np.nan)
    for row, seed in enumerate(seeds):
        scores = table[seed]
        matrix[row] = [scores.get(key, np.nan) for key in items]
    return seeds, items, matrix


def _as_matrix(scores: np.ndarray) -> np.ndarray:
    matrix = np.asarray(scores, dtype=float)
    if matrix.ndim == 1:
        matrix = matrix[None, :]
    if matrix.ndim != 2:
        raise ValueError(f"scores must be a seeds x items matrix, got shape {matrix.shape}")
    observed = ~np.isnan(matrix)
    return matrix[observed.any(axis=1)][:, observed.any(axis=0)]  # drop seeds and items with no score


def bootstrap_means(scores: np.ndarray, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Means of `n_resamples` two-level bootstrap replicates of a seeds x items matrix (module doc)."""
    matrix = _as_matrix(scores)
    n_seeds, n_items = matrix.shape
    if matrix.size == 0:
        return np.full(n_resamples, np.nan)
    rng = np.random.default_rng(seed)
    observed = ~np.isnan(matrix)
    values = np.where(observed, matrix, 0.0)
    means = np.empty(n_resamples)
    chunk = max(1, _CHUNK_CELLS // (n_seeds * n_items))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        rows = rng.integers(0, n_seeds, size=(size, n_seeds))[:, :, None]
        cols = rng.integers(0, n_items, size=(size, n_items))[:, None, :]
        total = values[rows, cols].sum(axis=(1, 2))
        count = observed[rows, cols].sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start : start + size] = total / count  # NaN when a replicate drew only empty cells
    return means


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    finite = replicates[np.isfinite(replicates)]
    if finite.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_ci(scores: np.ndarray, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> Estimate:
    """Mean of a seeds x items matrix (a 1-D array is one seed) and its percentile bootstrap CI
    (NaN bounds when there is a single score: one run of a corpus-level metric has no known spread)."""
    matrix = _as_matrix(scores)
    if matrix.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, 0)
    mean = float(np.nanmean(matrix))
    if np.count_nonzero(~np.isnan(matrix)) == 1:  # one number says nothing about its spread
        return Estimate(mean, float("nan"), float("nan"), *matrix.shape)
    if np.nanmin(matrix) == np.nanmax(matrix):  # exact, without the float noise of resampled sums
        return Estimate(mean, mean, mean, *matrix.shape)
    low, high = _interval(bootstrap_means(matrix, n_resamples, seed), confidence)
    return Estimate(mean, low, high, *matrix.shape)


def sign_flip_pvalue(differences: np.ndarray, n_resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value of a zero mean for paired differences, by flipping each difference's sign.

    Exact (every sign pattern) when 2**n <= n_resamples, otherwise Monte Carlo with the +1 correction
    (p = (1 + #{|T*| >= |T|}) / (1 + n_resamples)), so p is never 0. NaNs are ignored; no data gives 1."""
    d = np.asarray(differences, dtype=float).ravel()
    d = d[np.isfinite(d)]
    n = d.size
    if n == 0:
        return 1.0
    observed = abs(d.mean())
    threshold = observed - 1e-12 * max(1.0, observed)  # ties count as extreme, whatever the rounding
    if 2**n <= n_resamples:
        patterns = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1) * 2.0 - 1.0
        return float(np.mean(np.abs(patterns @ d) / n >= threshold))
    rng = np.random.default_rng(seed)
    extreme = 0
    chunk = max(1, _CHUNK_CELLS // n)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        signs = rng.integers(0, 2, size=(size, n)) * 2.0 - 1.0
        extreme += int(np.count_nonzero(np.abs(signs @ d) / n >= threshold))
    return (1 + extreme) / (1 + n_resamples)


def paired_differences(config: ScoreTable, baseline: ScoreTable) -> tuple[np.ndarray, int]:
    """(matrix of config - baseline differences, number of matched seeds); see the module doc."""
    in_baseline = {key for scores in baseline.values() for key in scores}
    items = [key for key in dict.fromkeys(k for s in sorted(config) for k in config[s]) if key in in_baseline]
    common = sorted(set(config) & set(baseline))
    if common:
        _, _, a = score_matrix({s: config[s] for s in common}, items)
        _, _, b = score_matrix({s: baseline[s] for s in common}, items)
        return a - b, len(common)
    _, _, a = score_matrix(config, items)
    _, _, b = score_matrix(baseline, items)
    with _quiet_empty_means():
        return (np.nanmean(a, axis=0) - np.nanmean(b, axis=0))[None, :], 0


def paired_difference(
    config: ScoreTable,
    baseline: ScoreTable,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    n_permutations: int = 10000,
    seed: int = 0,
    seed_pool: SeedPool | None = None,
) -> Comparison:
    """Config minus baseline on the items both scored: mean difference, bootstrap CI, p-value (module
    doc). `seed_pool`: the between-seed variance pooled over the report's configs (`power.pool_seed_variance`)."""
    differences, n_matched = paired_differences(config, baseline)
    matrix = _as_matrix(differences)
    if matrix.size == 0:
        return Comparison(float("nan"), float("nan"), float("nan"), float("nan"), n_matched, 0)
    estimate = bootstrap_ci(matrix, confidence, n_resamples, seed)
    tested = paired_t(matrix, seed_pool) if n_matched >= 2 else None
    if tested is not None:  # seeds matched: a test whose noise includes the seed-to-seed spread
        p_value = tested[1]
    else:
        units = np.nanmean(matrix, axis=0) if matrix.shape[1] > 1 else matrix[:, 0]
        p_value = sign_flip_pvalue(units, n_permutations, seed)
    return Comparison(estimate.mean, estimate.low, estimate.high, p_value, n_matched, matrix.shape[1])


def bootstrap_point_means(matrices: list[np.ndarray], n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Replicates x points: the mean of each point's seeds x items matrix in each two-level bootstrap
    replicate (module doc). The matrices must share their item columns (same items, same order; NaN
    where a point has no score); an all-NaN replicate of a point is NaN."""
    if not matrices:
        return np.empty((n_resamples, 0))
    shapes = {np.asarray(m).shape[-1] for m in matrices}
    if len(shapes) != 1:
        raise ValueError(f"the points' matrices must share their item columns, got widths {sorted(shapes)}")
    rng = np.random.default_rng(seed)
    n_items = shapes.pop()
    out = np.full((n_resamples, len(matrices)), np.nan)
    largest = max(np.atleast_2d(m).shape[0] for m in matrices)
    chunk = max(1, _CHUNK_CELLS // max(1, largest * n_items))
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        cols = rng.integers(0, n_items, size=(size, n_items))[:, None, :]  # shared by every point
        for point, scores in enumerate(matrices):
            matrix = np.atleast_2d(np.asarray(scores, dtype=float))
            matrix = matrix[~np.isnan(matrix).all(axis=1)]  # a seed that scored nothing is no seed
            if matrix.size == 0:
                continue
            observed = ~np.isnan(matrix)
            values = np.where(observed, matrix, 0.0)
            rows = rng.integers(0, matrix.shape[0], size=(size, matrix.shape[0]))[:, :, None]
            total = values[rows, cols].sum(axis=(1, 2))
            count = observed[rows, cols].sum(axis=(1, 2))
            with np.errstate(invalid="ignore", divide="ignore"):
                out[start : start + size, point] = total / count
    return out


def adjust_pvalues(p_values, method: str = "holm") -> np.ndarray:
    """Multiplicity-adjusted p-values of one family (module doc), in the input order; NaN entries stay
    NaN and are not counted in the family. `method`: `holm` or `bh` (Benjamini-Hochberg, scipy's
    `false_discovery_control`). Holm is the two lines below rather than statsmodels' `multipletests`,
    which runs `gc.collect()` on every Holm call (statsmodels 0.15, stats/multitest.py): a tenth of a
    second each in a process holding a model; tests/test_stats.py pins both to statsmodels."""
    if method not in ("holm", "bh"):
        raise ValueError(f"unknown multiplicity correction {method!r} (holm or bh)")
    p = np.asarray(p_values, dtype=float).ravel()
    adjusted = np.full(p.shape, np.nan)
    present = np.flatnonzero(np.isfinite(p))
    if present.size == 0:
        return adjusted
    if method == "bh":
        adjusted[present] = false_discovery_control(p[present], method="bh")
        return adjusted
    order = present[np.argsort(p[present], kind="stable")]
    m = present.size  # p_(i) * (m - i + 1), made non-decreasing
    adjusted[order] = np.minimum(np.maximum.accumulate(p[order] * (m - np.arange(m))), 1.0)
    return adjusted


@contextmanager
def _quiet_empty_means() -> Iterator[None]:
    """A per-item mean over seeds that scored nothing is NaN by design: no numpy warning for it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        yield
