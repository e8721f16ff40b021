"""Power over test items and training seeds: variance components, the paired test they give, the
minimum detectable effect (MDE) and the seeds a difference needs.

The paired differences of a config against the baseline form a seeds x items matrix D (the same items
for every seed, the seeds matched). Its cells are modelled as crossed random effects,

    D[s, i] = delta + seed[s] + item[i] + e[s, i],

with variances `seed` (a training seed shifts the whole test set), `item` (an item the two configs
treat differently, the same for every seed) and `item_seed` (the rest: this seed on this item). The
components are the method-of-moments (ANOVA) estimates of the two-way layout without replication,
truncated at 0: E[MS_seed] = item_seed + I seed, E[MS_item] = item_seed + S item, E[MS_res] = item_seed.

The mean difference over S seeds and I items then has variance

    V(S, I) = seed / S + item / I + item_seed / (S I),

so more items shrink only the item terms and more seeds only the seed terms: with few seeds the seed
term dominates whatever the test-set size. `paired_t` tests delta = 0 with t = mean / sqrt(V^), V^ =
(MS_seed + MS_item - MS_res) / (S I) (never below max(MS_seed, MS_item) / (S I), which the true V never
is either). Its degrees of freedom are Satterthwaite's for that sum, but with MS_seed at its upper 95%
confidence limit: MS_seed has only S - 1 degrees of freedom, and plain Satterthwaite, which takes a
small MS_seed at its word, rejected 2-5 times too often at Holm's small alphas with 2-5 seeds in our
simulations (seed-dominated differences); with the limit it stayed at or below about its level there (`tests/test_power.py`),
and pays for it in power where the seeds turn out not to matter. With 2 or 3 seeds the test is
honest and weak; the MDE says how weak.

Power at a true delta is computed for that test exactly as run: the mean is independent of the mean
squares, which are scaled chi-squares, so power = E[P(|mean| > t_crit(df^) sqrt(V^))] over draws of
the mean squares (a fixed set of draws, so it is smooth in delta). The MDE is the delta with 80% power
at a given alpha; for a report's family of m tests the alpha is Holm's first (smallest) threshold,
alpha / m, so a true difference of the MDE is found after Holm with at least that power. For one
seed, V is taken as known (the seed variance from a pilot sweep) and the test as normal: a one-seed
sweep cannot estimate the seed variance, and its item-level test leaves it out.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, special, stats

ALPHA = 0.05  # family-wise level
POWER = 0.8
SEED_COUNTS = (1, 3, 5, 10)
MAX_SEEDS = 100  # `seeds_needed` looks no further


@dataclass(frozen=True)
class Components:
    """Variance components of a seeds x items matrix (see the module doc), and the design they came from.
    `item` and `item_seed` are None for a corpus-level metric (one number per run)."""

    seed: float
    item: float | None
    item_seed: float | None
    n_seeds: int
    n_items: int
    seed_pool: int = 1  # configs the seed mean square was pooled over: it has seed_pool x (n_seeds - 1) df

    def seed_df(self, n_seeds: int | None = None) -> int:
        return self.seed_pool * ((n_seeds or self.n_seeds) - 1)

    def as_dict(self) -> dict:
        return asdict(self)


def _complete(matrix: np.ndarray) -> np.ndarray:
    """The items every seed scored (a crossed layout needs every cell)."""
    matrix = np.atleast_2d(np.asarray(matrix, dtype=float))
    matrix = matrix[~np.isnan(matrix).all(axis=1)]
    return matrix[:, ~np.isnan(matrix).any(axis=0)]


def _mean_squares(d: np.ndarray) -> tuple[float, float, float]:
    s, i = d.shape
    grand = d.mean()
    rows, cols = d.mean(axis=1), d.mean(axis=0)
    ms_seed = i * float(((rows - grand) ** 2).sum()) / (s - 1)
    ms_item = s * float(((cols - grand) ** 2).sum()) / (i - 1)
    residual = d - rows[:, None] - cols[None, :] + grand
    ms_res = float((residual**2).sum()) / ((s - 1) * (i - 1))
    return ms_seed, ms_item, ms_res


def variance_components(matrix: np.ndarray, seed_pool: SeedPool | None = None) -> Components | None:
    """Components of a seeds x items matrix (NaN cells drop their item); None with fewer than 2 seeds,
    or, for a many-item metric, fewer than 2 items scored by every seed. With `seed_pool` the seed
    mean square is the pooled one (`pool_seed_variance`)."""
    d = _complete(matrix)
    s, i = d.shape
    if s < 2 or i < 1:
        return None
    pool = seed_pool.configs if seed_pool else 1
    if i == 1:  # a corpus-level metric: seeds are the only replicates
        seed = seed_pool.row_variance if seed_pool else float(np.var(d[:, 0], ddof=1))
        return Components(seed, None, None, s, 1, pool)
    ms_seed, ms_item, ms_res = _mean_squares(d)
    if seed_pool:
        ms_seed = seed_pool.row_variance * i
    return Components(max(0.0, (ms_seed - ms_res) / i), max(0.0, (ms_item - ms_res) / s), ms_res, s, i, pool)


@dataclass(frozen=True)
class SeedPool:
    """The seed mean square of a difference from the configs' own runs: the variance of a run's mean
    score between seeds (`row_variance`, over the same items), pooled over `configs` data configs with
    `df` degrees of freedom in all, doubled for a difference of two configs."""

    row_variance: float
    df: int
    configs: int


def pool_seed_variance(matrices: list[np.ndarray]) -> SeedPool | None:
    """From each config's seeds x items matrix (2+ seeds), the pooled between-seed variance of a run's
    mean score, doubled (the variance of a difference of two independently trained configs); None when
    no config has 2 seeds. Seeds scatter training alike whatever the data, so pooling over the configs
    buys the seed variance the degrees of freedom one config's 2 or 3 seeds cannot give; where two
    configs' matched seeds move together the difference varies less, and the test is conservative."""
    squares, df, configs = 0.0, 0, 0
    for matrix in matrices:
        d = _complete(matrix)
        if d.shape[0] >= 2 and d.shape[1] >= 1:
            rows = d.mean(axis=1)
            squares += float(((rows - rows.mean()) ** 2).sum())
            df += d.shape[0] - 1
            configs += 1
    return SeedPool(2 * squares / df, df, configs) if df else None


def mean_variance(c: Components, n_seeds: int, n_items: int | None = None) -> float:
    """V(S, I) of the module doc: the variance of a mean difference over `n_seeds` seeds and `n_items` items."""
    if c.item is None:
        return c.seed / n_seeds
    n_items = n_items or c.n_items
    return c.seed / n_seeds + c.item / n_items + c.item_seed / (n_seeds * n_items)


SEED_LIMIT = 0.05  # df are Satterthwaite's at the seed mean square's upper (1 - SEED_LIMIT) confidence limit
_DRAWS = 2000  # mean-square draws of the power prediction (fixed, so the prediction is smooth in delta)


def _test_parts(ms_seed, ms_item, ms_res, n_seeds: int, n_items: int, seed_df: int | None = None):
    """(V, df) of the test from its mean squares (scalars or arrays of draws): V = (MS_seed + MS_item -
    MS_res) / (S I), never below max(MS_seed, MS_item) / (S I), which the true V is never below either
    (E[MS_seed] and E[MS_item] are both >= E[MS_res]); df by Satterthwaite with MS_seed at its upper
    confidence limit (module doc)."""
    s, i = n_seeds, n_items
    k = seed_df or s - 1
    cells = s * i
    variance = np.maximum(ms_seed + ms_item - ms_res, np.maximum(ms_seed, ms_item)) / cells
    upper = ms_seed * k / stats.chi2.ppf(SEED_LIMIT, k)
    numerator = np.maximum(upper + ms_item - ms_res, np.maximum(upper, ms_item))
    spread = upper**2 / k + ms_item**2 / (i - 1) + ms_res**2 / ((s - 1) * (i - 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(spread > 0, numerator**2 / np.where(spread > 0, spread, 1.0), np.inf)
    return variance, df


def paired_t(matrix: np.ndarray, seed_pool: SeedPool | None = None) -> tuple[float, float, Components] | None:
    """(mean, two-sided p-value, components) of the test of a zero mean difference (module doc) on a
    seeds x items matrix of paired differences; None with fewer than 2 seeds. For one column (a
    corpus-level metric) it is the paired t test over seeds. `seed_pool`: the seed mean square pooled
    over the report's configs (`pool_seed_variance`) instead of this matrix's own."""
    c = variance_components(matrix, seed_pool)
    if c is None:
        return None
    d = _complete(matrix)
    mean = float(d.mean())
    if c.item is None:
        variance, df = c.seed / c.n_seeds, float(seed_pool.df if seed_pool else c.n_seeds - 1)
    else:
        ms_seed, ms_item, ms_res = _mean_squares(d)
        if seed_pool:
            ms_seed = seed_pool.row_variance * d.shape[1]
        variance, df = (float(v) for v in _test_parts(ms_seed, ms_item, ms_res, *d.shape, seed_pool.df if seed_pool else None))
    if variance <= 0:
        return mean, (1.0 if mean == 0 else 0.0), c
    return mean, float(2 * stats.t.sf(abs(mean) / math.sqrt(variance), df)), c


@functools.lru_cache(maxsize=256)
def _reach(c: Components, n_seeds: int, n_items: int, alpha: float) -> tuple[np.ndarray, float]:
    """(|mean| beyond which the test rejects, per draw of its mean squares; sd of the mean) of a design."""
    sd = math.sqrt(mean_variance(c, n_seeds, n_items))
    if n_seeds < 2:
        return np.array([stats.norm.isf(alpha / 2) * sd]), sd
    s, i = n_seeds, n_items
    k = c.seed_df(s)
    rng = np.random.default_rng(0)
    seed_draws = rng.chisquare(k, _DRAWS) / k
    if c.item is None:
        v_hat, df = c.seed * seed_draws / s, np.full(_DRAWS, float(k))
    else:
        expected = (c.item_seed + i * c.seed, c.item_seed + s * c.item, c.item_seed)
        dof = (s - 1, i - 1, (s - 1) * (i - 1))
        draws = [seed_draws] + [rng.chisquare(n, _DRAWS) / n for n in dof[1:]]
        v_hat, df = _test_parts(*(e * w for e, w in zip(expected, draws)), s, i, k)
    return -special.stdtrit(df, alpha / 2) * np.sqrt(v_hat), sd  # stdtrit: t's inverse CDF (stats.t.isf, fast)


def power(delta: float, c: Components, n_seeds: int, alpha: float, n_items: int | None = None) -> float:
    """Power of the two-sided paired test at a true difference `delta` with `n_seeds` seeds and
    `n_items` items, the components taken as true: for 2+ seeds the mean, over draws of the mean
    squares from their (scaled chi-square) distributions, of the exact rejection probability given
    them (the mean is independent of the mean squares); for one seed the normal test with V known
    (a pilot's seed variance)."""
    if mean_variance(c, n_seeds, n_items) <= 0:
        return 1.0 if delta != 0 else alpha
    reach, sd = _reach(c, n_seeds, n_items or c.n_items, alpha)
    return float(np.mean(special.ndtr((abs(delta) - reach) / sd) + special.ndtr((-reach - abs(delta)) / sd)))


def mde(c: Components, n_seeds: int, alpha: float, target: float = POWER, n_items: int | None = None) -> float:
    """The smallest |delta| the test finds with probability `target` at level `alpha`."""
    variance = mean_variance(c, n_seeds, n_items)
    if variance <= 0:
        return 0.0
    scale = math.sqrt(variance)
    high = scale
    while power(high, c, n_seeds, alpha, n_items) < target:
        high *= 2
        if high > 1e6 * scale:
            return math.inf
    return float(optimize.brentq(lambda d: power(d, c, n_seeds, alpha, n_items) - target, 0.0, high, xtol=1e-4 * scale))


def seeds_needed(delta: float, c: Components, alpha: float, target: float = POWER, n_items: int | None = None) -> int | None:
    """The fewest seeds (2 or more: seed noise must be estimable) whose test finds `delta` with
    probability `target`; None when even MAX_SEEDS do not (the item terms alone are too wide). Power
    grows with the seeds, so a bisection finds it."""
    if power(delta, c, MAX_SEEDS, alpha, n_items) < target:
        return None
    low, high = 1, MAX_SEEDS  # power(low) < target <= power(high)
    if power(delta, c, 2, alpha, n_items) >= target:
        return 2
    low = 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if power(delta, c, middle, alpha, n_items) >= target else (middle, high)
    return high


def power_entry(c: Components | None, alpha: float, family_size: int, delta: float | None = None) -> dict:
    """What the report says about one comparison's power: components, MDE at the family's Holm alpha
    for the seeds run and for 1, 3, 5 and 10 seeds, and the seeds `delta` needs."""
    if c is None:
        return {"components": None, "why": "one seed: seed-to-seed variance cannot be estimated (run seed=1,2,3)"}
    level = alpha / max(1, family_size)
    counts = sorted({c.n_seeds, *SEED_COUNTS})
    entry = {
        "components": c.as_dict(),
        "alpha": level,
        "alpha_why": f"Holm's smallest threshold, {alpha:g} / {family_size} comparisons",
        "power": POWER,
        "mde": mde(c, c.n_seeds, level),
        "mde_by_seeds": {str(n): mde(c, n, level) for n in counts},
    }
    if delta is not None and delta != 0:
        entry["seeds_needed"] = {"delta": abs(delta), "seeds": seeds_needed(delta, c, level)}
    return entry


def verdict(low: float, high: float, p_holm: float | None, mde_value: float | None, alpha: float = 0.05) -> str:
    """One phrase for a comparison: `significant` (Holm p < alpha); `no effect >= MDE` when it is not and
    its CI lies inside (-MDE, MDE), so a difference of the MDE would have shown; otherwise `too little
    power` (the CI reaches differences of the MDE or more, or the MDE is unknown): not "no effect"."""
    if p_holm is not None and p_holm < alpha:
        return "significant"
    if mde_value is None or not math.isfinite(mde_value) or not (math.isfinite(low) and math.isfinite(high)):
        return "too little power"
    return "no effect >= MDE" if -mde_value < low and high < mde_value else "too little power"
