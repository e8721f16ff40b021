"""Rounds of the mixture search in one command: `python train.py -m experiment=mixture_search
mixture.rounds=R mixture.per_round=K`.

The sweep first runs its design (the `mix.weights` points of `hydra.sweeper.params`), then R times:
fit the surface to every completed run so far, choose K new points (`medinject.report.search`:
expected improvement, over a lattice of shares, among the points the budget and `mix.allow_repeat`
can train), register their predictions, run them with every seed (and other swept value) of the
design through the same launcher as the design (local, submitit, SLURM), and score the predictions.

In the sweep dir, each round N leaves (written atomically):
* `round<N>.json`: the metric, the fit the points were chosen on, each point (its shares as it will
  train them, its `mix.weights`, why it was chosen, its jobs), then the round's status and, once it
  ended, its observed means and the score of its predictions; round 0 is the design;
* `predictions_round<N>.json` (N >= 1): the predicted scores and 95% prediction intervals, written
  before the round's first job starts and never rewritten (`medinject.report.registered`).

Resuming: a round whose record exists reruns exactly its recorded points, with the command's other
settings and seeds as the design is rerun; their completed runs are skipped (`skip_completed`), as
every rerun of a sweep skips them, and a finished round's score is kept. So a sweep killed during round 2 continues round 2 when the command is run again; round 1 is
neither chosen again nor trained again.
"""

from __future__ import annotations

import datetime
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medinject.data.mix import _split_evenly, _weighted_quotas
from medinject.report.mixture import order_components
from medinject.report.registered import PREDICTIONS, ROUND, score_predictions
from medinject.report.search import CONFIDENCE, candidate_lattice, choose_points, fit_surface, register
from medinject.util import rundir
from medinject.util.errors import UserError
from medinject.util.io import read_json, write_json_atomic

WEIGHTS = "mix.weights="
DONE = ("completed", "skipped")
ACQUISITION = ("expected improvement on the Scheffé surface fitted to every completed run before the round, "
               "greedy with the believer update (medinject.report.search)")


def initial_design(batches: list[list], initial: int | None, rounds: int) -> list[list]:
    """The design's batches keeping only the jobs of its first `initial` distinct mix.weights points
    (`mixture.initial`; None keeps them all); the order and the other swept values stay."""
    if initial is None:
        return batches
    weights = list(dict.fromkeys(_weights_of(job) for batch in batches for job in batch))
    if rounds == 0:
        raise UserError(f"mixture.initial={initial}: it sets the design the rounds start from, so it needs mixture.rounds >= 1")
    if not 1 <= initial <= len(weights) or "" in weights:
        raise UserError(f"mixture.initial: {initial!r} is out of range; allowed: 1 to the {len(weights)} mix.weights points the sweep lists")
    kept = set(weights[:initial])
    filtered = [[job for job in batch if _weights_of(job) in kept] for batch in batches]
    return [batch for batch in filtered if batch]


class SearchRounds:
    """The rounds of one sweep; built before anything is launched, so a bad setting stops it at once."""

    def __init__(self, sweeper, design: list[list[str]]):
        cfg = sweeper.config
        self.sweeper = sweeper
        search = cfg.mixture
        for key, value, ok, allowed in (
            ("mixture.rounds", search.rounds, search.rounds >= 0, "an integer >= 0"),
            ("mixture.per_round", search.per_round, search.per_round >= 1, "an integer >= 1"),
            ("mixture.step", search.step, 0 < search.step <= 0.5 and math.isclose(round(1 / search.step) * search.step, 1, abs_tol=1e-9),
             "a share 1/n for a whole n >= 2, e.g. 0.05 or 0.1"),
        ):  # fmt: skip
            if not ok:
                raise UserError(f"{key}: {value!r} is out of range; allowed: {allowed}")
        self.rounds, self.per_round, self.step = int(search.rounds), int(search.per_round), float(search.step)
        self.metric = search.metric
        self.design = [_strip(job) for job in design]
        if not self.design or not all(map(_weights_of, self.design)):
            raise UserError(f"mixture.rounds={self.rounds}: the rounds choose mix.weights, so the sweep's design must sweep "
                            "mix.weights (e.g. experiment=mixture_search)")  # fmt: skip
        job = sweeper._job_config(self.design[0])
        if getattr(job.mix.strategy, "value", job.mix.strategy) != "weighted":
            raise UserError(f"mixture.rounds={self.rounds}: needs mix=weighted (mix.strategy is {job.mix.strategy})")
        self.components = order_components(str(k) for k in job.mix.weights)
        self.budget = int(job.mix.budget)
        self.allow_repeat = bool(job.mix.allow_repeat)
        self.balanced = getattr(job.mix.task_balance, "value", job.mix.task_balance) == "balanced"
        # every other swept value (seeds, ...) of the design, once each: a new point runs with each of them
        self.variants = list(dict.fromkeys(tuple(o for o in job if not o.startswith(WEIGHTS)) for job in self.design))

    def dry_run_note(self) -> str:
        return (f"then {self.rounds} round(s) of the mixture search, {self.per_round} point(s) each x {len(self.variants)} run(s) per point, "
                "chosen when the runs before them have ended: not planned here")  # fmt: skip

    # ------------------------------------------------------------------------------------ the loop

    def run(self, sweep_dir: Path, jobs: list[dict], returns: list, save_summary: Callable[[list[dict]], object]) -> None:
        """Every round after the design (whose job entries `jobs` holds); `save_summary(jobs)` after each."""
        metric = self._metric(sweep_dir, jobs)
        if not (sweep_dir / ROUND.format(n=0)).is_file():
            design = {"round": 0, "status": "finished", "metric": metric, "components": self.components, "budget": self.budget,
                      "fit": None, "fit_reason": "the initial design: no run before it",
                      "points": [{"weights": w, "why": "the initial design (hydra.sweeper.params mix.weights)"}
                                 for w in dict.fromkeys(map(_weights_of, self.design))]}  # fmt: skip
            write_json_atomic(sweep_dir / ROUND.format(n=0), design)
        for number in range(1, self.rounds + 1):
            path = sweep_dir / ROUND.format(n=number)
            record = read_json(path) if path.is_file() else None
            if record is None:
                record = self._plan(number, metric, jobs)
                if record["points"]:
                    write_json_atomic(sweep_dir / PREDICTIONS.format(n=number), _registration(record))
                write_json_atomic(path, record)  # after the predictions: a round on record always has them
            else:
                _say(f"round {number} on record ({record.get('status')}): its {len(record.get('points', []))} point(s) rerun, completed runs skipped")
            if not record["points"]:
                _say(f"round {number} has no point to run ({record.get('note')}); the search stops")
                break
            # the recorded points with this command's other settings and seeds (the design's, as rerun now)
            point_jobs = [[_with_weights(variant, point["weights"]) for variant in self.variants] for point in record["points"]]
            round_jobs = [job for jobs_of_point in point_jobs for job in jobs_of_point]
            first = len(jobs)
            _say(f"round {number} of {self.rounds}: {len(record['points'])} point(s), {len(round_jobs)} job(s); "
                 f"fit before it: {record.get('fit_reason')}; predictions in {PREDICTIONS.format(n=number)}")
            self.sweeper.overrides = self.sweeper.batches(round_jobs)
            self.sweeper.launch_batches(sweep_dir, jobs, returns)
            ended = jobs[first:]
            if record.get("status") != "finished":
                record = self._score(record, ended, point_jobs)
                write_json_atomic(path, record)
                score = record["score"]
                _say(f"round {number} scored: {score['n_points']} point(s), Spearman {_fmt(score['spearman'])}, "
                     f"{_fmt(score['coverage'])} inside the 95% intervals, mean abs. error {_fmt(score['mae'])}")
            save_summary(jobs)  # sweep_summary.json as far as the sweep got

    def _plan(self, number: int, metric: str, jobs: list[dict]) -> dict:
        shares, scores, trained, rows, by_type = self._observations(jobs, metric)
        surface, why = fit_surface(self.components, shares, scores)
        lattice = candidate_lattice(len(self.components), self.step)
        quotas, trains, new, realized = candidates(lattice, self.components, self.budget, rows, self.allow_repeat, trained,
                                                   by_type if self.balanced else None)  # fmt: skip
        picks = choose_points(surface, realized, shares, trains & new, self.per_round, self.step / 2)
        n_seeds = len(self.variants)
        registered = register(surface, realized[[p["index"] for p in picks]], n_seeds) if picks else []
        points = []
        for pick, prediction in zip(picks, registered):
            weights = _weights_text(self.components, lattice[pick["index"]])
            point = {"shares": dict(zip(self.components, map(float, realized[pick["index"]]))), "weights": weights,
                     "counts": quotas[pick["index"]], **{k: v for k, v in pick.items() if k != "index"}, **prediction, "n_seeds": n_seeds,
                     "jobs": [_with_weights(variant, weights) for variant in self.variants]}  # fmt: skip
            points.append(point)
        record = {"round": number, "status": "planned", "metric": metric, "components": self.components, "budget": self.budget,
                  "planned_at": _now(), "fit": surface.record() if surface else None, "fit_reason": why,
                  "acquisition": ACQUISITION if surface else "space filling: no surface to fit yet", "step": self.step,
                  "candidates": {"lattice": int(len(lattice)), "trainable": int(trains.sum()), "not_run": int((trains & new).sum())},
                  "points": points}  # fmt: skip
        if not points:
            record["note"] = (f"no lattice point of step {self.step} is both new and trainable at mix.budget={self.budget} "
                              f"(mix.allow_repeat={str(self.allow_repeat).lower()})")  # fmt: skip
        return record

    def _score(self, record: dict, ended: list[dict], point_jobs: list[list[list[str]]]) -> dict:
        by_job = {tuple(_strip(e["overrides"])): e for e in ended}
        observed = []
        for jobs_of_point in point_jobs:
            values = [_run_score(by_job.get(tuple(job)), record["metric"]) for job in jobs_of_point]
            values = [v for v in values if v is not None]
            observed.append(float(np.mean(values)) if values else None)
        score = score_predictions([p.get("predicted") for p in record["points"]], [p.get("interval") for p in record["points"]], observed)
        return {**record, "status": "finished", "finished_at": _now(), "observed": observed, "score": score}

    # ------------------------------------------------------------------------------------ reading

    def _observations(self, jobs: list[dict], metric: str):
        """(shares per run, score per run, compositions trained, rows per source, rows per source and task
        type) of the completed runs."""
        shares, scores, trained, rows, by_type = [], [], set(), {}, {}
        for entry in jobs:
            results = _results(entry)
            if results is None:
                continue
            counts = {s: sum(by_type.values()) for s, by_type in ((results.get("data") or {}).get("counts") or {}).items()}
            total = sum(counts.values())
            value = (results.get("metrics") or {}).get(metric)
            if not total or value is None:
                continue
            trained.add(tuple(counts.get(s, 0) for s in self.components))
            shares.append([counts.get(s, 0) / total for s in self.components])
            scores.append(float(value))
            manifest = _read(Path(entry["run_dir"]) / "manifest.json") or {}
            for source, info in (manifest.get("sources") or {}).items():
                if isinstance(info, dict) and isinstance(info.get("rows"), int):
                    rows[source] = info["rows"]
                if isinstance(info, dict) and isinstance(info.get("by_type"), dict):
                    by_type[source] = {str(t): int(n) for t, n in info["by_type"].items()}
        return np.array(shares, dtype=float).reshape(-1, len(self.components)), np.array(scores, dtype=float), trained, rows, by_type

    def _metric(self, sweep_dir: Path, jobs: list[dict]) -> str:
        """`mixture.metric`, else the planted truth's metric (truth.json), else the first main metric every
        completed run has."""
        found = [set((r.get("metrics") or {})) for r in map(_results, jobs) if r is not None]
        if not found:
            raise UserError("mixture.rounds: no run of the design completed; nothing to fit the first round on")
        common = set.intersection(*found)
        if self.metric:
            if self.metric not in common:
                raise UserError(f"mixture.metric: {self.metric!r} is not a metric of every completed run; found: "
                                f"{', '.join(sorted(m for m in common if m.startswith('eval/')))}")  # fmt: skip
            return str(self.metric)
        truth = _read(sweep_dir / "truth.json")
        if isinstance(truth, dict) and truth.get("metric") in common:
            return truth["metric"]
        from medinject.report.cells import MAIN_METRICS

        evals = sorted(m for m in common if m.startswith("eval/") and len(m.split("/")) == 4)
        for main in MAIN_METRICS:
            for name in evals:
                if name.endswith("/" + main):
                    return name
        raise UserError(f"mixture.metric: none given and no main metric ({', '.join(MAIN_METRICS)}) in the runs; set mixture.metric=eval/<set>/<task>/<metric>")


def candidates(lattice: np.ndarray, components: list[str], budget: int, rows: dict[str, int], allow_repeat: bool, trained: set,
               by_type: dict[str, dict[str, int]] | None = None):  # fmt: skip
    """For each lattice point (shares in `components` order): the examples per source it trains (the
    quotas `mix=weighted` draws), whether the sources have them (each source's `rows`; any number with
    `allow_repeat`), whether no run trained that composition yet (`trained`: tuples of counts), and its
    shares as trained (quotas / budget). With `by_type` (`mix.task_balance=balanced`: each source's rows
    per task type) a source's quota is split evenly over its types as the mix splits it, and each part
    must fit its type."""

    def fits(source: str, quota: int) -> bool:
        if by_type is not None and by_type.get(source):
            types = by_type[source]
            return all(part <= types[t] for t, part in _split_evenly(quota, sorted(types)).items())
        return quota <= rows.get(source, math.inf)

    quotas = [_weighted_quotas(dict(zip(components, map(float, w))), sorted(components), budget) for w in lattice]
    trains = np.array([allow_repeat or all(fits(s, q[s]) for s in components) for q in quotas], dtype=bool)
    new = np.array([tuple(q[s] for s in components) not in trained for q in quotas], dtype=bool)
    realized = np.array([[q[s] / budget for s in components] for q in quotas], dtype=float)
    return quotas, trains, new, realized


def _registration(record: dict) -> dict:
    return {
        "round": record["round"], "metric": record["metric"], "registered_at": record["planned_at"], "confidence": CONFIDENCE,
        "interval": "95% prediction interval of the point's observed mean over its n_seeds runs: the fitted mean's standard error "
                    "and one run's residual variance (seed-to-seed noise, item x mixture interaction, lack of fit) / n_seeds, t quantile",
        "fit": record["fit"],
        "points": [{k: p[k] for k in ("shares", "weights", "n_seeds", "predicted", "interval")} for p in record["points"]],
    }  # fmt: skip


def _weights_of(job) -> str:
    """A job's `mix.weights=` override, or "" where it has none."""
    return next((str(o) for o in job if str(o).startswith(WEIGHTS)), "")


def _strip(job) -> list[str]:
    """A job's overrides without the GPUs the local launcher's plan gave it."""
    return [str(o) for o in job if not str(o).startswith("trainer.local_gpus=")]


def _weights_text(components: list[str], shares) -> str:
    return WEIGHTS + "{" + ",".join(f"{c}:{round(float(v), 6):g}" for c, v in zip(components, shares)) + "}"


def _with_weights(variant: tuple[str, ...], weights: str) -> list[str]:
    return [weights, *variant]


def _read(path: Path):
    try:
        return read_json(path)
    except UserError:
        return None


def _results(entry: dict | None) -> dict | None:
    if entry is None or entry.get("status") not in DONE:
        return None
    results = _read(Path(entry["run_dir"]) / rundir.RESULTS)
    return results if isinstance(results, dict) and results.get("status") == "completed" else None


def _run_score(entry: dict | None, metric: str) -> float | None:
    results = _results(entry)
    value = ((results or {}).get("metrics") or {}).get(metric)
    return None if value is None else float(value)


def _say(line: str) -> None:
    """A line on stderr, beside the sweep's progress lines (Hydra's logging of the sweeper process is quiet)."""
    print(f"mixture search: {line}", file=sys.stderr, flush=True)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3g}"


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

