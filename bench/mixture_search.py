"""Replay benchmark of the mixture search: how many runs each strategy needs to find the best mixture.

    python bench/mixture_search.py --record tests/data/mixture_grid_known_answer.json.gz   # trains 66 x 2 runs
    python bench/mixture_search.py --replay tests/data/mixture_grid_known_answer.json.gz
    python bench/mixture_search.py --synthetic tests/data/mixture_grid_planted.json.gz [--kind broad]  # planted, no training
    python bench/mixture_search.py --record tests/data/mixture_grid_sharp.json.gz --experiment known_answer_sharp
    python bench/mixture_search.py --replay tests/data/mixture_grid_sharp.json.gz --initial 7 --per-round 1
    python bench/mixture_search.py --synthetic /tmp/memoriser.json.gz --kind memoriser   # planted=sharp's model, no training

`--record` trains the dense grid through the real CLI: the 66 points of the 0.1 lattice on the three
sources, seeds 1 and 2, on `experiment=known_answer_mixture` (the known-answer data and tiny preset
of experiment=known_answer, mix=weighted; `--experiment known_answer_sharp`: planted=sharp), and
saves every point's per-seed, per-item scores of the planted truth's metric as a compact grid file
(gzipped JSON). Rerunning it skips the runs done.

`--synthetic --kind memoriser` is the grid `planted=sharp` would give a perfect memoriser
(medinject.data.planted's model, drawn item by item from its generated rows): a run knows the facts of
the rows it drew (each source's rows in a seeded order, as mix=weighted takes them; all of them once
its share reaches them) and answers each unseen fact with one letter per run, its prior.

`--replay` replays strategies against a grid without training. A replay draws the test items with
replacement (the same draw for every point) and, for every point, which of the grid's seeds a run of
it gives: a run's score is that seed's mean over the drawn items. Strategies, one seed per point:

* `sequential`: experiment=mixture_search's 10-point design (its first `--initial` points, as
  `mixture.initial` runs them: 7 is the simplex-centroid design of vertices, edge midpoints and
  centroid), then rounds of `--per-round` points
  chosen by expected improvement (medinject.report.search, as `mixture.rounds` does); after each
  round it recommends the best lattice point, taking a point's observed score where it was run and
  the fitted surface's elsewhere;
* `fixed`: the 10-point design alone, recommending as the sequential search does;
* `random`: lattice points in a random order, recommending the best observed so far;
* `sequential-gp` (`--gp`): the sequential search with a Gaussian process in place of the surface,
  for comparison (constant mean, squared-exponential kernel, hyperparameters by marginal likelihood);
* `regmix`: one-shot regression as RegMix does it: n mixtures drawn from a flat Dirichlet (snapped to
  the lattice), the surface fitted to their runs, the recommendation as above; for n = 1, 2, ...

A strategy has found the best mixture when its recommendation's grid score (mean over seeds and all
items) is within one MDE of the grid's best. The MDE is `medinject.report.power.mde` at alpha 0.05
for the grid's seeds, with the variance components of the paired differences of every point from
the best point (their mean), the seed variance pooled over the points as the report pools it. The
table gives each strategy's median runs over the replays and its ratio to `fixed` and `random`
(`>N`: not found within the grid's N points), and the coverage of the sequential search's registered
95% intervals: the share of observed means inside them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from medinject.report.power import Components, mde, pool_seed_variance, variance_components  # noqa: E402
from medinject.report.registered import score_predictions  # noqa: E402
from medinject.report.search import choose_points, fit_surface, register  # noqa: E402

FORMAT = "medinject-mixture-grid/1"
KINDS = {  # --synthetic --kind: planted grids (synthetic_grid's settings)
    "planted": {},  # a quadratic surface, one point within an MDE of the best (tests/data/mixture_grid_planted.json.gz)
    "broad": {"optimum": None, "seed_sd": 0.05, "noise_sd": 0.3},  # complementary sources: many points near the best
    "logit-peak": {"optimum": None, "peak": (0.3, 0.2, 0.5), "seed_sd": 0.1, "noise_sd": 0.5},  # a peak the quadratic misfits
    "binary": {"optimum": None, "seed_sd": 0.15, "noise_sd": 0.5, "binary": True},  # 0/1 items, like the known-answer task
    "sharp-peak": {"optimum": None, "peak": (0.3, 0.2, 0.5), "seed_sd": 0.02, "noise_sd": 0.1},  # misfit, and no design point near it
}
SOURCES = ["native", "synthetic", "translated"]
STEP = 0.1
SEEDS = (1, 2)


# ------------------------------------------------------------------------------------ grid files


def lattice(k: int = 3, steps: int = 10) -> list[tuple[int, ...]]:
    """Compositions of `steps` tenths over k sources, in a fixed order."""
    return [c for c in np.ndindex(*(steps + 1,) * k) if sum(c) == steps]


def write_grid(path: Path, grid: dict) -> None:
    """Gzipped JSON, written beside and renamed into place; the same grid gives the same bytes (no mtime)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as handle:
        handle.write(json.dumps(grid, separators=(",", ":")).encode("utf-8"))
    tmp.replace(path)


def read_grid(path: Path) -> dict:
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        grid = json.load(handle)
    if grid.get("format") != FORMAT:
        raise SystemExit(f"{path}: not a {FORMAT} file")
    return grid


def synthetic_grid(seed: int = 0, n_items: int = 96, seed_sd: float = 0.002, noise_sd: float = 0.01, binary: bool = False,
                   peak: tuple[float, ...] | None = None, optimum: tuple[float, ...] | None = (0.3, 0.2, 0.5)) -> dict:
    """A planted grid: a known surface with an interior optimum: broad (native and translated complement
    each other, synthetic hurts), or, with `peak`, a sharp one at those shares. An item's score is its probability of a right answer on the logit scale
    surface + seed effect (sd `seed_sd`, one per run) + item x run noise (sd `noise_sd`) - difficulty,
    or (`binary`) a 0/1 draw from it. With `optimum` the surface is a quadratic of the scores themselves,
    0.85 - |x - optimum|² / 2, with the seed effect and item noise (their sds now in score units) and
    difficulty / 20 added.
    The truth is the surface, not the draws: `planted_best` is its best lattice point."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 1.0, n_items)

    def surface(x):  # expected score (logit scale) of shares x = (native, synthetic, translated)
        if peak is not None:  # one blend far better than its neighbours (a quadratic on the logit scale)
            return 1.2 - 12.0 * float(np.sum((x - np.asarray(peak)) ** 2))
        n, s, t = x
        return -0.2 + 1.0 * n - 0.6 * s + 0.4 * t + 2.2 * n * t + 0.5 * n * s - 0.8 * s * t - 1.5 * n * n * t

    points = []
    for c in lattice():
        x = np.array(c) / 10
        scores = {}
        for s in SEEDS:
            if optimum is not None:  # a quadratic on the score scale itself, item scores around it
                chance = np.clip(0.85 - 0.5 * float(np.sum((x - np.asarray(optimum)) ** 2)) + rng.normal(0.0, seed_sd)
                                 + rng.normal(0.0, noise_sd, n_items) - 0.05 * difficulty, 0.0, 1.0)  # fmt: skip
            else:
                chance = 1 / (1 + np.exp(-(surface(x) + rng.normal(0.0, seed_sd) + rng.normal(0.0, noise_sd, n_items) - difficulty)))
            scores[str(s)] = (rng.random(n_items) < chance).astype(int).tolist() if binary else chance.round(4).tolist()
        points.append({"lattice": list(c), "shares": dict(zip(SOURCES, x.round(4).tolist())), "scores": scores})
    if optimum is not None:
        truth = [-float(np.sum((np.array(p["lattice"]) / 10 - np.asarray(optimum)) ** 2)) for p in points]
    else:
        truth = [1 / (1 + np.exp(-(surface(np.array(p["lattice"]) / 10) - difficulty))).mean() for p in points]
    return {"format": FORMAT, "metric": "synthetic/em", "components": SOURCES, "step": STEP, "seeds": list(SEEDS),
            "items": [f"item{i}" for i in range(n_items)], "points": points,
            "source": f"synthetic_grid(seed={seed}, n_items={n_items}, seed_sd={seed_sd}, noise_sd={noise_sd}, binary={binary}, peak={peak}, optimum={optimum})",
            "planted_best": points[int(np.argmax(truth))]["shares"]}  # fmt: skip


def memoriser_grid(seed: int = 0) -> dict:
    """planted=sharp's grid for a perfect memoriser: per item, right where the run drew the fact's row
    and its source taught the test's letter, or, for a fact not drawn, where the run's prior letter is
    the answer (the generator balances the letters, so that is chance on average)."""
    from omegaconf import OmegaConf

    from medinject.data.planted import LETTERS, generate, mixture_optimum, params_of

    params = params_of(OmegaConf.load(ROOT / "conf" / "planted" / "sharp.yaml"))
    rows = generate(params)
    test = {r["instruction"]: r["answer"] for r in rows["native/test/mcqu"]}
    items = sorted(test)
    index = {q: i for i, q in enumerate(items)}
    taught = {s: [(index[r["instruction"]], r["answer"] == test[r["instruction"]]) for r in rows[f"{s}/train/mcqu"]] for s in SOURCES}
    answers = np.array([LETTERS.index(test[q]) for q in items])
    points = []
    for c in lattice():
        x = np.array(c) / 10
        scores = {}
        for s in SEEDS:
            rng = np.random.default_rng([seed, s, *c])
            known = np.full(len(items), -1)
            for share, source in zip(x, SOURCES):
                drawn = rng.permutation(len(taught[source]))[: round(share * params.budget)]
                for k in drawn:
                    item, right = taught[source][k]
                    known[item] = int(right)
            prior = (answers == rng.integers(len(LETTERS))).astype(int)
            scores[str(s)] = np.where(known >= 0, known, prior).tolist()
        points.append({"lattice": list(c), "shares": dict(zip(SOURCES, x.round(4).tolist())), "scores": scores})
    return {"format": FORMAT, "metric": "planted-sharp/memoriser/em", "components": SOURCES, "step": STEP, "seeds": list(SEEDS),
            "items": [f"item{i}" for i in range(len(items))], "points": points,
            "source": f"memoriser_grid(seed={seed}) of conf/planted/sharp.yaml", "planted_best": mixture_optimum(params)}  # fmt: skip


def record(out: Path, sweep_dir: Path, extra: list[str], n_points: int | None = None, experiment: str = "known_answer_mixture") -> None:
    """Train the grid through the CLI with `experiment` (completed runs are skipped on a rerun) and save
    its scores; `n_points`: only the first points of the lattice (a smoke test of the recording)."""
    wanted = lattice()[:n_points]
    weights = ",".join("{" + ",".join(f"{s}:{v / 10:g}" for s, v in zip(SOURCES, c)) + "}" for c in wanted)
    command = [sys.executable, "train.py", "-m", f"experiment={experiment}", f"mix.weights={weights}",
               f"seed={','.join(map(str, SEEDS))}", "logger=none", "trainer.enable_progress_bar=false", f"hydra.sweep.dir={sweep_dir}", *extra]  # fmt: skip
    print(f"training the grid: {len(wanted)} points x {len(SEEDS)} seeds -> {sweep_dir}", flush=True)
    done = subprocess.run(command, cwd=ROOT, check=False)
    truth = json.loads((sweep_dir / "truth.json").read_text())
    metric = truth["metric"]
    _, test_set, task, field = metric.split("/")
    summary = json.loads((sweep_dir / "sweep_summary.json").read_text())
    by_point: dict[tuple[int, ...], dict] = {}
    items: list[str] | None = None
    for job in summary["jobs"]:
        if job["status"] not in ("completed", "skipped"):
            continue
        run_dir = Path(job["run_dir"])
        text = next(o for o in job["overrides"] if o.startswith("mix.weights="))
        shares = dict((k, float(v)) for k, v in re.findall(r"(\w+):([0-9.]+)", text))
        key = tuple(round(shares[s] * 10) for s in SOURCES)
        rows = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines() if line.strip()]
        rows = sorted((r for r in rows if r["test_set"] == test_set and r["task"] == task), key=lambda r: str(r["id"]))
        ids = [str(r["id"]) for r in rows]
        if items is None:
            items = ids
        elif ids != items:
            raise SystemExit(f"{run_dir}: scored other items than the first run")
        counts = {s: sum(v.values()) for s, v in json.loads((run_dir / "results.json").read_text())["data"]["counts"].items()}
        total = sum(counts.values())
        point = by_point.setdefault(key, {"lattice": list(key), "shares": {s: round(counts.get(s, 0) / total, 4) for s in SOURCES}, "scores": {}})
        point["scores"][str(job["seed"])] = [float(r[field]) for r in rows]
    points = [by_point[k] for k in wanted if k in by_point and len(by_point[k]["scores"]) == len(SEEDS)]
    grid = {"format": FORMAT, "metric": metric, "components": SOURCES, "step": STEP, "seeds": list(SEEDS), "items": items or [],
            "points": points, "source": f"recorded: {' '.join(command[1:4])} ... in {sweep_dir}", "planted_best": truth.get("optimum")}  # fmt: skip
    write_grid(out, grid)
    print(f"{out}: {len(points)} of {len(wanted)} points with every seed ({metric})")
    if done.returncode != 0 or len(points) < len(wanted):
        sys.exit(1)


# ------------------------------------------------------------------------------------------ replay


def design_points(shares: np.ndarray) -> list[int]:
    """experiment=mixture_search's design (its mix.weights), each point snapped to the nearest grid point."""
    text = (ROOT / "conf" / "experiment" / "mixture_search.yaml").read_text()
    block = text.split("mix.weights:", 1)[1]
    chosen: list[int] = []
    for found in re.findall(r"\{([^}]*)\}", block):
        want = dict((k, float(v)) for k, v in re.findall(r"(\w+):([0-9.]+)", found))
        target = np.array([want[s] for s in SOURCES])
        index = int(np.argmin(np.abs(shares - target).max(axis=1)))
        if index not in chosen:
            chosen.append(index)
    return chosen


class Grid:
    def __init__(self, grid: dict, initial: int | None = None):
        self.components = grid["components"]
        self.shares = np.array([[p["shares"][c] for c in self.components] for p in grid["points"]], dtype=float)
        self.scores = np.array([[p["scores"][str(s)] for s in grid["seeds"]] for p in grid["points"]], dtype=float)  # points x seeds x items
        self.truth = np.nanmean(self.scores, axis=(1, 2))
        self.best = int(np.argmax(self.truth))
        self.fixed = design_points(self.shares)  # the fixed design: all ten
        self.design = self.fixed[:initial]  # the sequential searches' first runs

    def mde(self) -> tuple[float, Components]:
        pool = pool_seed_variance(list(self.scores))
        parts = [variance_components(self.scores[p] - self.scores[self.best], pool) for p in range(len(self.truth)) if p != self.best]
        parts = [c for c in parts if c is not None]
        mean = Components(float(np.mean([c.seed for c in parts])), float(np.mean([c.item for c in parts])),
                          float(np.mean([c.item_seed for c in parts])), parts[0].n_seeds, parts[0].n_items, parts[0].seed_pool)  # fmt: skip
        return mde(mean, mean.n_seeds, 0.05), mean

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One replay's score of a run at each point: a seed drawn per point, its mean over one draw of the items."""
        items = rng.integers(0, self.scores.shape[2], self.scores.shape[2])
        per_seed = np.nanmean(self.scores[:, :, items], axis=2)
        return per_seed[np.arange(len(per_seed)), rng.integers(0, per_seed.shape[1], len(per_seed))]


def _recommend(grid: Grid, run: list[int], observed: np.ndarray) -> int:
    """The best of what was seen and what is predicted where nothing was seen: the observed score at a
    point run, the fitted surface's elsewhere (a misfit surface cannot hide a better point run)."""
    surface, _ = fit_surface(grid.components, grid.shares[run], observed[run])
    if surface is None:
        return run[int(np.argmax(observed[run]))]
    value = surface.mean(grid.shares)
    value[run] = observed[run]
    return int(np.argmax(value))


def sequential(grid: Grid, observed: np.ndarray, per_round: int, registered: list):
    run = list(grid.design)
    steps = [(len(run), _recommend(grid, run, observed))]
    while len(run) < len(grid.truth):
        surface, _ = fit_surface(grid.components, grid.shares[run], observed[run])
        feasible = np.ones(len(grid.truth), dtype=bool)
        feasible[run] = False
        picks = [p["index"] for p in choose_points(surface, grid.shares, grid.shares[run], feasible, per_round, STEP / 2)]
        if not picks:
            break
        for pick, prediction in zip(picks, register(surface, grid.shares[picks], 1)):
            registered.append((prediction["predicted"], prediction["interval"], float(observed[pick])))
        run += picks
        steps.append((len(run), _recommend(grid, run, observed)))
    return steps


class _GP:
    """A Gaussian process on the shares, for comparison only (what BoTorch's default would be): constant
    mean, squared-exponential kernel, lengthscale and noise share chosen by marginal likelihood on a grid."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.mu, self.var = x, float(y.mean()), float(max(y.var(), 1e-12))
        best = None
        for length in (0.1, 0.2, 0.4, 0.8):
            for noise in (0.01, 0.05, 0.2, 0.5):
                k = self._k(x, x, length) + noise * self.var * np.eye(len(x))
                chol = np.linalg.cholesky(k)
                alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, y - self.mu))
                fit = -0.5 * (y - self.mu) @ alpha - np.log(np.diag(chol)).sum()
                if best is None or fit > best[0]:
                    best = (fit, length, noise, k, alpha)
        _, self.length, noise, self.k, self.alpha = best
        self.noise = noise * self.var

    def _k(self, a, b, length=None):
        return self.var * np.exp(-0.5 * ((a[:, None, :] - b[None, :, :]) ** 2).sum(axis=2) / (length or self.length) ** 2)

    def posterior(self, z: np.ndarray, extra: np.ndarray | None = None):
        x = self.x if extra is None else np.vstack([self.x, extra])
        k = self._k(x, x) + np.diag([self.noise] * len(self.x) + [1e-9] * (0 if extra is None else len(extra)))
        cross = self._k(z, x)
        mean = self.mu + self._k(z, self.x) @ self.alpha
        var = self.var - np.einsum("ij,ji->i", cross, np.linalg.solve(k, cross.T))
        return mean, np.sqrt(np.maximum(var, 0.0))


def sequential_gp(grid: Grid, observed: np.ndarray, per_round: int, registered: list):
    """The sequential search with a GP in place of the Scheffé surface (EI, believer batches, the same recommendation)."""
    from medinject.report.search import expected_improvement

    def recommend(gp, run):
        value = gp.posterior(grid.shares)[0]
        value[run] = observed[run]
        return int(np.argmax(value))

    run = list(grid.design)
    gp = _GP(grid.shares[run], observed[run])
    steps = [(len(run), recommend(gp, run))]
    while len(run) < len(grid.truth):
        gp = _GP(grid.shares[run], observed[run])
        best = float(gp.posterior(grid.shares[run])[0].max())
        picks: list[int] = []
        for _ in range(per_round):
            mean, sd = gp.posterior(grid.shares, grid.shares[picks] if picks else None)
            ei = expected_improvement(mean, sd, best)
            ei[run + picks] = -np.inf
            if not np.isfinite(ei).any():
                break
            picks.append(int(np.argmax(ei)))
        mean, sd = gp.posterior(grid.shares[picks])
        half = 1.96 * np.sqrt(sd**2 + gp.noise)
        registered.extend((float(m), [float(m - h), float(m + h)], float(observed[p])) for m, h, p in zip(mean, half, picks))
        run += picks
        steps.append((len(run), recommend(_GP(grid.shares[run], observed[run]), run)))
    return steps


def fixed(grid: Grid, observed: np.ndarray):
    return [(len(grid.fixed), _recommend(grid, list(grid.fixed), observed))]


def random_search(grid: Grid, observed: np.ndarray, rng: np.random.Generator):
    order = rng.permutation(len(grid.truth))
    return [(n, int(order[:n][np.argmax(observed[order[:n]])])) for n in range(1, len(order) + 1)]


def regmix(grid: Grid, observed: np.ndarray, rng: np.random.Generator):
    draws: list[int] = []
    steps = []
    while len(draws) < len(grid.truth):
        x = rng.dirichlet(np.ones(len(grid.components)))
        index = int(np.argmin(np.abs(grid.shares - x).max(axis=1)))
        if index in draws:
            continue
        draws.append(index)
        steps.append((len(draws), _recommend(grid, draws, observed)))
    return steps


def runs_needed(grid: Grid, steps, tolerance: float) -> float:
    goal = grid.truth[grid.best] - tolerance
    return next((float(n) for n, pick in steps if grid.truth[pick] >= goal), math.inf)


def replay(grid: Grid, replays: int = 20, per_round: int = 3, seed: int = 0, gp: bool = False) -> dict:
    tolerance, components = grid.mde()
    rng = np.random.default_rng(seed)
    names = ("sequential", "fixed", "random", "regmix") + (("sequential-gp",) if gp else ())
    needed: dict[str, list[float]] = {name: [] for name in names}
    registered: list = []
    registered_gp: list = []
    for _ in range(replays):
        observed = grid.draw(rng)
        needed["sequential"].append(runs_needed(grid, sequential(grid, observed, per_round, registered), tolerance))
        needed["fixed"].append(runs_needed(grid, fixed(grid, observed), tolerance))
        needed["random"].append(runs_needed(grid, random_search(grid, observed, rng), tolerance))
        needed["regmix"].append(runs_needed(grid, regmix(grid, observed, rng), tolerance))
        if gp:
            needed["sequential-gp"].append(runs_needed(grid, sequential_gp(grid, observed, per_round, registered_gp), tolerance))
    medians = {name: float(np.median(values)) for name, values in needed.items()}
    score = score_predictions(*zip(*registered)) if registered else {}
    return {"n_points": len(grid.truth), "initial": len(grid.design), "best": dict(zip(grid.components, grid.shares[grid.best].round(4).tolist())),
            "best_score": float(grid.truth[grid.best]), "mde": tolerance, "components": components.as_dict(), "replays": replays,
            "per_round": per_round, "runs_needed": needed, "median": medians,
            "ratio_to_fixed": {n: _ratio(m, medians["fixed"]) for n, m in medians.items()},
            "ratio_to_random": {n: _ratio(m, medians["random"]) for n, m in medians.items()},
            "coverage": score.get("coverage"), "registered": score.get("n_points", 0), "mae": score.get("mae"), "spearman": score.get("spearman"),
            "coverage_gp": score_predictions(*zip(*registered_gp))["coverage"] if registered_gp else None}  # fmt: skip


def _ratio(a: float, b: float) -> float | None:
    return a / b if math.isfinite(a) and math.isfinite(b) and b > 0 else None


def _show(result: dict) -> str:
    cap = result["n_points"]
    lines = [f"grid: {cap} points, best {result['best']} scores {result['best_score']:.4f}; one MDE = {result['mde']:.4f} "
             f"(power.mde, alpha 0.05, {result['components']['n_seeds']} seeds, {result['components']['n_items']} items); "
             f"the sequential searches start from {result['initial']} design points, then {result['per_round']} a round",
             f"{'strategy':<13} {'median runs':>11} {'/ fixed':>8} {'/ random':>9} {'found <= 10':>11} {'mean runs':>9}   "
             f"(over {result['replays']} replays; mean: not found counts {cap + 1})"]  # fmt: skip
    for name, median in result["median"].items():
        runs = f"{median:g}" if math.isfinite(median) else f">{cap}"
        fmt = lambda r: "—" if r is None else f"{r:.2f}"  # noqa: E731
        each = np.array(result["runs_needed"][name])
        found, mean = f"{np.mean(each <= 10):.0%}", f"{np.mean(np.where(np.isfinite(each), each, cap + 1)):.1f}"
        lines.append(f"{name:<13} {runs:>11} {fmt(result['ratio_to_fixed'][name]):>8} {fmt(result['ratio_to_random'][name]):>9} {found:>11} {mean:>9}")
    if result["coverage"] is not None:
        lines.append(f"registered 95% intervals of the sequential search: {result['coverage']:.1%} of {result['registered']} observed means inside; "
                     f"mean abs. error {result['mae']:.4f}")  # fmt: skip
    if result.get("coverage_gp") is not None:
        lines.append(f"the GP's 95% intervals (sequential-gp): {result['coverage_gp']:.1%} inside")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--record", type=Path, metavar="OUT", help="train the dense grid and save it here (.json.gz)")
    what.add_argument("--replay", type=Path, metavar="GRID", help="replay the strategies against a grid file")
    what.add_argument("--synthetic", type=Path, metavar="OUT", help="write a planted synthetic grid (no training)")
    parser.add_argument("--points", type=int, default=None, help="--record: only the first N lattice points (a smoke test)")
    parser.add_argument("--kind", choices=sorted([*KINDS, "memoriser"]), default="planted", help="--synthetic: which planted grid")
    parser.add_argument("--experiment", default="known_answer_mixture", help="--record: the experiment that trains it (known_answer_sharp: planted=sharp)")
    parser.add_argument("--sweep-dir", type=Path, default=ROOT / "multirun_outputs" / "mixture_grid", help="--record: where the runs go")
    parser.add_argument("--replays", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=3)
    parser.add_argument("--initial", type=int, default=None, help="--replay: the sequential searches start from the design's first N points")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gp", action="store_true", help="--replay: also the sequential search with a Gaussian process (comparison)")
    parser.add_argument("--json", type=Path, default=None, help="--replay: also write the numbers here")
    args, extra = parser.parse_known_args(argv)
    if extra and not args.record:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.record:
        record(args.record, args.sweep_dir.resolve(), extra, args.points, args.experiment)
    elif args.synthetic:
        write_grid(args.synthetic, memoriser_grid(args.seed) if args.kind == "memoriser" else synthetic_grid(args.seed, **KINDS[args.kind]))
        print(args.synthetic)
    else:
        result = replay(Grid(read_grid(args.replay), args.initial), args.replays, args.per_round, args.seed, args.gp)
        print(_show(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
