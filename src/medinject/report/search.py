"""The sequential mixture search's model and its choice of the next points (`mixture.rounds`).

Surface: the Scheffé polynomial of `medinject.report.mixture` (quadratic when the runs leave it at
least MIN_DF residual degrees of freedom and the design has more distinct points than coefficients,
else linear), fitted by ordinary least squares to the runs' scores, one observation per run (its mean
over the test items). One run per row, not one mean per point, so the residual mean square is the
spread of one run's score about the surface: seed-to-seed noise, the item x mixture interaction and
whatever the polynomial misses. Test items are the same for every run, so an item's difficulty moves
every run alike and is absorbed in the fit, as it should be for predicting a new run on those items.

From the fit, for any shares x (f(x) its Scheffé regressors, A = sum over runs of f f'):
* the fitted mean m(x) and its standard error sd(x) = s sqrt(f(x)' A^-1 f(x)), s² the residual mean
  square with df = runs - coefficients;
* the 95% prediction interval of the observed mean of a new point run with n seeds,
  m(x) ± t(0.975, df) sqrt(s²/n + sd(x)²): the interval registered before a round runs, seed noise in
  it (the s²/n term).

Acquisition: expected improvement of the surface over the incumbent (the best fitted mean among the
points already run), EI(x) = (m - best) Φ(z) + sd φ(z), z = (m - best) / sd: high where the surface
predicts a better score, or where it is unsure. A round of K points is chosen greedily: after each
pick the design is extended by that point as if it had been observed at its fitted mean ("kriging
believer"; for least squares the coefficients stay as they are and only the uncertainty shrinks), so
the next pick goes where the surface is still unsure. Candidates are the points of a lattice over
the simplex of any number of sources that the caller marks feasible (budget, `mix.allow_repeat`) and
that are not within one lattice step of a point already run or chosen. Without a fit (too few runs)
the round fills space instead: each pick is the feasible candidate farthest from every run.

Why this and not BoTorch or Ax: neither is a dependency here (BoTorch brings GPyTorch), the Scheffé
surface is the report's model already, so the predictions registered are the report's own, and every
quantity above is closed-form and exact; `bench/mixture_search.py` measures what it gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from medinject.report.mixture import scheffe_matrix, scheffe_terms, simplex_lattice

CONFIDENCE = 0.95
MIN_DF = 2  # residual degrees of freedom the noise estimate needs (t(0.975, 1) is 12.7: useless)


@dataclass
class Surface:
    components: list[str]
    quadratic: bool
    coef: np.ndarray
    information: np.ndarray  # A = X'X over the runs (one row per run)
    noise: float  # s²: residual mean square of one run's score
    df: int
    n_runs: int
    n_points: int

    def regressors(self, shares) -> np.ndarray:
        return scheffe_matrix(np.atleast_2d(np.asarray(shares, dtype=float)), self.quadratic)

    def mean(self, shares) -> np.ndarray:
        return self.regressors(shares) @ self.coef

    def mean_sd(self, shares, information: np.ndarray | None = None) -> np.ndarray:
        """Standard error of the fitted mean at each row of `shares`."""
        f = self.regressors(shares)
        inverse = np.linalg.pinv(self.information if information is None else information)
        return np.sqrt(np.maximum(0.0, self.noise * np.einsum("ij,jk,ik->i", f, inverse, f)))

    def interval(self, shares, n_seeds: int) -> np.ndarray:
        """Rows of [low, high]: the 95% prediction interval of the observed mean of `n_seeds` new runs."""
        half = stats.t.ppf(0.5 + CONFIDENCE / 2, self.df) * np.sqrt(self.noise / max(1, n_seeds) + self.mean_sd(shares) ** 2)
        centre = self.mean(shares)
        return np.stack([centre - half, centre + half], axis=1)

    def record(self) -> dict:
        return {
            "model": "scheffe_quadratic" if self.quadratic else "scheffe_linear",
            "coefficients": dict(zip(scheffe_terms(self.components, self.quadratic), map(float, self.coef))),
            "residual_variance": float(self.noise),
            "residual_df": int(self.df),
            "n_runs": int(self.n_runs),
            "n_points": int(self.n_points),
        }


def fit_surface(components: list[str], shares, scores) -> tuple[Surface | None, str]:
    """(surface, why this model) from one row of shares and one score per run; (None, why not) when
    even the linear model leaves fewer than MIN_DF residual degrees of freedom."""
    shares = np.atleast_2d(np.asarray(shares, dtype=float))
    scores = np.asarray(scores, dtype=float)
    keep = np.isfinite(scores)
    shares, scores = shares[keep], scores[keep]
    k, n = len(components), len(scores)
    if shares.shape[1] != k:
        raise ValueError(f"shares have {shares.shape[1]} columns for {k} components")
    distinct = len({tuple(np.round(row, 6)) for row in shares})
    n_quadratic = k + k * (k - 1) // 2
    tried = []
    for quadratic, q in ((True, n_quadratic), (False, k)):
        x = scheffe_matrix(shares, quadratic) if n else np.empty((0, q))
        if distinct < q + 1 or n - q < MIN_DF or np.linalg.matrix_rank(x) < q:
            tried.append(f"{'quadratic' if quadratic else 'linear'}: {q} coefficients, {distinct} distinct points, {n} runs")
            continue
        coef, *_ = np.linalg.lstsq(x, scores, rcond=None)
        residual = scores - x @ coef
        df = n - q
        surface = Surface(list(components), quadratic, coef, x.T @ x, float(residual @ residual / df), df, n, distinct)
        why = (f"Scheffé {'quadratic' if quadratic else 'linear'}, {n} runs at {distinct} points, {df} residual df"
               + ("" if quadratic else f" (the quadratic's {n_quadratic} coefficients need more: {tried[0]})"))
        return surface, why
    return None, f"too few runs for a surface with {MIN_DF} residual df ({'; '.join(tried)})"


def candidate_lattice(k: int, step: float) -> np.ndarray:
    """Every composition of k shares in multiples of `step` (1/step must be a whole number)."""
    steps = round(1 / step)
    if steps < 1 or not math.isclose(steps * step, 1.0, abs_tol=1e-9):
        raise ValueError(f"step {step}: 1/step must be a whole number")
    return simplex_lattice(k, steps)


def _distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Largest share difference between each row of a and each row of b (rows of a x rows of b)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if not len(b):
        return np.full((len(a), 1), np.inf)
    return np.abs(a[:, None, :] - b[None, :, :]).max(axis=2)


def expected_improvement(mean: np.ndarray, sd: np.ndarray, best: float) -> np.ndarray:
    gain = mean - best
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(sd > 0, gain / np.where(sd > 0, sd, 1.0), 0.0)
    return np.where(sd > 0, gain * stats.norm.cdf(z) + sd * stats.norm.pdf(z), np.maximum(gain, 0.0))


def choose_points(
    surface: Surface | None,
    candidates: np.ndarray,
    run_shares: np.ndarray,
    feasible: np.ndarray,
    count: int,
    separation: float,
) -> list[dict]:
    """Up to `count` candidates (indices into `candidates`, with why each was chosen): by expected
    improvement with the believer update when there is a surface, else farthest from every run. A
    candidate is eligible when `feasible` and at least `separation` (largest share difference) from
    every run and every earlier pick."""
    candidates = np.atleast_2d(candidates)
    taken = np.atleast_2d(np.asarray(run_shares, dtype=float)).reshape(-1, candidates.shape[1])
    open_ = np.asarray(feasible, dtype=bool) & (_distance(candidates, taken).min(axis=1) >= separation - 1e-9)
    chosen: list[dict] = []
    if surface is not None:
        information = surface.information.copy()
        means = surface.mean(candidates)
        best = float(surface.mean(taken).max()) if len(taken) else float(means.max())
    while len(chosen) < count and open_.any():
        if surface is None:
            spread = _distance(candidates, taken).min(axis=1)
            index = int(np.argmax(np.where(open_, spread, -np.inf)))
            why = f"no surface yet: the feasible point farthest from every run (largest share difference {spread[index]:.3g})"
            entry = {"index": index, "why": why}
        else:
            sd = surface.mean_sd(candidates, information)
            ei = expected_improvement(means, sd, best)
            # ties (EI 0 everywhere a flat surface is certain) go to the least certain point, then the farthest from every run
            spread = _distance(candidates, taken).min(axis=1)
            index = int(np.lexsort((spread, np.where(open_, sd, -np.inf), np.where(open_, ei, -np.inf)))[-1])
            why = (f"expected improvement {ei[index]:.3g} over the best fitted mean of a run point ({best:.4g}): "
                   f"fitted mean {means[index]:.4g}, standard error {sd[index]:.3g}")
            entry = {"index": index, "why": why, "expected_improvement": float(ei[index]), "fitted_mean": float(means[index]),
                     "fitted_sd": float(sd[index])}
            f = surface.regressors(candidates[index])[0]
            information = information + np.outer(f, f)  # as if observed at its fitted mean: only the uncertainty shrinks
            best = max(best, float(means[index]))
        chosen.append(entry)
        taken = np.vstack([taken, candidates[index]])
        open_ &= _distance(candidates, candidates[index]).min(axis=1) >= separation - 1e-9
    return chosen


def register(surface: Surface | None, shares: np.ndarray, n_seeds: int) -> list[dict]:
    """Per point: the fitted mean and the 95% prediction interval of its observed mean over `n_seeds`
    runs (None without a surface)."""
    if surface is None:
        return [{"predicted": None, "interval": None} for _ in np.atleast_2d(shares)]
    means = surface.mean(shares)
    bounds = surface.interval(shares, n_seeds)
    return [{"predicted": float(m), "interval": [float(lo), float(hi)]} for m, (lo, hi) in zip(means, bounds)]


def best_point(surface: Surface | None, candidates: np.ndarray) -> int | None:
    """Index of the candidate with the highest fitted mean (the search's recommendation)."""
    return None if surface is None else int(np.argmax(surface.mean(candidates)))
