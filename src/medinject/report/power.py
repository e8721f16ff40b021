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
term dominates whatever the test-set size. `paired_t` tests delta = 0 with t = mean / sqrt(V) and
Satterthwaite's degrees of freedom for the mean squares V is made of (a seed variance estimated from S
seeds has S - 1 of them, so with 2 or 3 seeds the test is honest and weak). Power at a true delta is
that of the two-sided t test: P(|T| > t_crit) with T noncentral t (df, delta / sqrt(V)). The MDE is the
delta with 80% power at a given alpha; for a report's family of m comparisons the alpha is Holm's
first (smallest) threshold, alpha / m, so a true difference of the MDE is found after Holm with at
least that power. For one seed, V is taken as if `seed` were known (from a pilot sweep): a one-seed
sweep cannot estimate it, and its item-level test leaves it out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import optimize, stats

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


def variance_components(matrix: np.ndarray) -> Components | None:
    """Components of a seeds x items matrix (NaN cells drop their item); None with fewer than 2 seeds,
    or, for a many-item metric, fewer than 2 items scored by every seed."""
    d = _complete(matrix)
    s, i = d.shape
    if s < 2 or i < 1:
        return None
    if i == 1:  # a corpus-level metric: seeds are the only replicates
        return Components(float(np.var(d[:, 0], ddof=1)), None, None, s, 1)
    ms_seed, ms_item, ms_res = _mean_squares(d)
    return Components(max(0.0, (ms_seed - ms_res) / i), max(0.0, (ms_item - ms_res) / s), ms_res, s, i)


def mean_variance(c: Components, n_seeds: int, n_items: int | None = None) -> float:
    """V(S, I) of the module doc: the variance of a mean difference over `n_seeds` seeds and `n_items` items."""
    if c.item is None:
        return c.seed / n_seeds
    n_items = n_items or c.n_items
    return c.seed / n_seeds + c.item / n_items + c.item_seed / (n_seeds * n_items)


def degrees_of_freedom(c: Components, n_seeds: int, n_items: int | None = None) -> float:
    """Satterthwaite's degrees of freedom of V(S, I) estimated from a sweep of `n_seeds` seeds and
    `n_items` items with these (true) components; inf for one seed (the seed variance taken as known)."""
    if n_seeds < 2:
        return math.inf
    if c.item is None:
        return float(n_seeds - 1)
    n_items = n_items or c.n_items
    s, i = n_seeds, n_items
    # V = a_s MS_seed + a_i MS_item + a_e MS_res, with the expected mean squares of that design
    ms = {"seed": c.item_seed + i * c.seed, "item": c.item_seed + s * c.item, "res": c.item_seed}
    dof = {"seed": s - 1, "item": i - 1, "res": (s - 1) * (i - 1)}
    coef = {"seed": 1 / (s * i), "item": 1 / (s * i), "res": -1 / (s * i)}
    total = sum(coef[k] * ms[k] for k in ms)
    spread = sum((coef[k] * ms[k]) ** 2 / dof[k] for k in ms if dof[k] > 0)
    return float(total**2 / spread) if spread > 0 else math.inf


def paired_t(matrix: np.ndarray) -> tuple[float, float, Components] | None:
    """(mean, two-sided p-value, components) of the test of a zero mean difference (module doc) on a
    seeds x items matrix of paired differences; None with fewer than 2 seeds."""
    c = variance_components(matrix)
    if c is None:
        return None
    d = _complete(matrix)
    mean = float(d.mean())
    if c.item is None:
        variance, df = c.seed / c.n_seeds, float(c.n_seeds - 1)
    else:
        s, i = d.shape
        ms_seed, ms_item, ms_res = _mean_squares(d)
        # the truncated components' V, written in mean squares, for Satterthwaite
        a_seed = 1.0 if c.seed > 0 else 0.0
        a_item = 1.0 if c.item > 0 else 0.0
        parts = [(a_seed * ms_seed, s - 1), (a_item * ms_item, i - 1), ((1 - a_seed - a_item) * ms_res, (s - 1) * (i - 1))]
        variance = sum(p for p, _ in parts) / (s * i)
        spread = sum(p**2 / k for p, k in parts if k > 0) / (s * i) ** 2
        df = variance**2 / spread if spread > 0 else math.inf
    if variance <= 0:
        return mean, (1.0 if mean == 0 else 0.0), c
    t = mean / math.sqrt(variance)
    return mean, float(2 * stats.t.sf(abs(t), df)), c


def power(delta: float, c: Components, n_seeds: int, alpha: float, n_items: int | None = None) -> float:
    """Power of the two-sided paired test at a true difference `delta`."""
    variance = mean_variance(c, n_seeds, n_items)
    if variance <= 0:
        return 1.0 if delta != 0 else alpha
    df = degrees_of_freedom(c, n_seeds, n_items)
    shift = abs(delta) / math.sqrt(variance)
    if df < 1e5:
        t = stats.t.isf(alpha / 2, df)
        upper, lower = float(stats.nct.sf(t, df, shift)), float(stats.nct.cdf(-t, df, shift))
        if math.isfinite(upper):  # the far tail (against the shift) is NaN in scipy where it is ~0
            return min(1.0, upper + (lower if math.isfinite(lower) else 0.0))
    z = stats.norm.isf(alpha / 2)  # a known variance (or so many df that t is normal)
    return float(stats.norm.sf(z - shift) + stats.norm.cdf(-z - shift))


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
    return float(optimize.brentq(lambda d: power(d, c, n_seeds, alpha, n_items) - target, 0.0, high, xtol=1e-9 * scale))


def seeds_needed(delta: float, c: Components, alpha: float, target: float = POWER, n_items: int | None = None) -> int | None:
    """The fewest seeds (2 or more: seed noise must be estimable) whose test finds `delta` with
    probability `target`; None when even MAX_SEEDS do not (the item terms alone are too wide)."""
    for n in range(2, MAX_SEEDS + 1):
        if power(delta, c, n, alpha, n_items) >= target:
            return n
    return None


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
