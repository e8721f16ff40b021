"""Power, minimum detectable effects and "no optimum from noise", against planted truths (numpy only,
no training: the report layer is fed per-item scores drawn from known variance components).

* the variance components of a planted seeds x items matrix are recovered;
* over 200+ simulated sweeps the seed-aware paired test finds a planted difference as often as
  `power.power` predicts (within 5 points), at the MDE about 80% of the time;
* with flat truths (every config scores alike, seeds shifting whole test sets), 100+ replicates of the
  report's statistics: no comparison significant after Holm and no mixture optimum in >= 95% of them;
* a planted interior optimum with seeds is stated; the same surface with one seed is descriptive only,
  until a pilot's seed variance is given."""

import math
from pathlib import Path

import numpy as np
import pytest

from medinject.report import power
from medinject.report.cells import report_statistics
from medinject.report.runs import Run
from medinject.report.mixture import fit_mixture
from medinject.report.stats import paired_difference

SOURCES = ("native", "synthetic", "translated")
CONFIGS = {  # the seven provenance configurations as compositions of 90 examples
    "native": (90, 0, 0), "synthetic": (0, 90, 0), "translated": (0, 0, 90), "native+synthetic": (45, 45, 0),
    "native+translated": (45, 0, 45), "synthetic+translated": (0, 45, 45), "native+synthetic+translated": (30, 30, 30),
}  # fmt: skip
METRICS = ("eval/native/mcqu/em", "eval/translated/mcqu/em")


def _table(matrix: np.ndarray) -> dict[int, dict[str, float]]:
    return {s + 1: {f"q{i}": float(v) for i, v in enumerate(row)} for s, row in enumerate(matrix)}


def _differences(rng, delta: float, seeds: int, items: int, c: dict) -> tuple[np.ndarray, np.ndarray]:
    """(config, baseline) seeds x items scores whose paired differences have the planted components."""
    shared = rng.normal(0, 0.3, items)  # item difficulty, common to both: cancels in the differences
    baseline = 0.5 + shared[None, :] + rng.normal(0, 0.1, (seeds, items))
    diff = delta + rng.normal(0, math.sqrt(c["seed"]), (seeds, 1)) + rng.normal(0, math.sqrt(c["item"]), (1, items))
    diff = diff + rng.normal(0, math.sqrt(c["item_seed"]), (seeds, items))
    return baseline + diff, baseline


PLANTED = {"seed": 0.0004, "item": 0.01, "item_seed": 0.02}


def test_variance_components_of_a_planted_matrix_are_recovered():
    rng = np.random.default_rng(0)
    estimates = []
    for _ in range(20):
        config, baseline = _differences(rng, 0.0, 30, 400, PLANTED)
        estimates.append(power.variance_components(config - baseline))
    for name, truth in PLANTED.items():
        mean = np.mean([getattr(e, name) for e in estimates])
        assert mean == pytest.approx(truth, rel=0.15), name
    # and a corpus-level metric: one column, the seeds are the only replicates
    c = power.variance_components(rng.normal(0, 0.2, (200, 1)))
    assert c.item is None and c.seed == pytest.approx(0.04, rel=0.2)


def test_more_seeds_shrink_the_mde_and_more_items_cannot_replace_them():
    c = power.Components(seed=0.0004, item=0.01, item_seed=0.02, n_seeds=3, n_items=200)
    by_seeds = [power.mde(c, n, 0.05) for n in (2, 3, 5, 10)]
    assert all(a > b for a, b in zip(by_seeds, by_seeds[1:]))
    # with 3 seeds, 100x the items leave the seed term: the MDE cannot fall below what it implies
    floor = (1.96 + 0.84) * math.sqrt(c.seed / 3)
    assert power.mde(c, 3, 0.05, n_items=20000) > floor
    needed = power.seeds_needed(by_seeds[2], c, 0.05)
    assert needed == 5 and power.power(by_seeds[2], c, 5, 0.05) == pytest.approx(0.8, abs=1e-6)
    assert power.seeds_needed(1e-4, c, 0.05) is None  # below what the item terms allow at any seed count


@pytest.mark.parametrize("seeds,delta_in_mde,pooled", [(3, 1.0, 1), (3, 0.6, 1), (5, 0.8, 1), (3, 0.7, 7)])
def test_empirical_power_matches_the_prediction_over_simulated_sweeps(seeds, delta_in_mde, pooled):
    """600 simulated sweeps per case, each tested by the report's paired comparison (with the seed
    variance pooled over `pooled` configs' own runs where > 1); the share of them with p < alpha is
    the empirical power."""
    items, alpha, sweeps = 150, 0.05 / 6, 600  # alpha: Holm's first threshold for a family of 6; sd of the rate <= 2 points
    truth = power.Components(n_seeds=seeds, n_items=items, seed_pool=pooled, **PLANTED)
    delta = delta_in_mde * power.mde(truth, seeds, alpha)
    predicted = power.power(delta, truth, seeds, alpha)
    rng = np.random.default_rng(seeds * 100 + int(delta_in_mde * 10))
    hits = 0
    for k in range(sweeps):
        config, baseline = _differences(rng, delta, seeds, items, PLANTED)
        pool = None
        if pooled > 1:  # each config's own runs: half the differences' seed and item x seed variance
            own = [rng.normal(0, math.sqrt(PLANTED["seed"] / 2), (seeds, 1)) + rng.normal(0, math.sqrt(PLANTED["item_seed"] / 2), (seeds, items))
                   for _ in range(pooled)]  # fmt: skip
            pool = power.pool_seed_variance(own)
            assert pool.df == pooled * (seeds - 1)
        hits += paired_difference(_table(config), _table(baseline), n_resamples=20, seed=k, seed_pool=pool).p_value < alpha
    assert abs(hits / sweeps - predicted) <= 0.05, (hits / sweeps, predicted)
    if pooled > 1:  # what pooling buys: the same power needs a smaller difference than with one config's seeds
        assert power.mde(truth, seeds, alpha) < power.mde(power.Components(n_seeds=seeds, n_items=items, **PLANTED), seeds, alpha)


def _runs(rng, means: dict[str, float], seeds=(1, 2, 3), items=120, seed_sd=0.04) -> list[Run]:
    """Completed runs of the seven configs with planted per-item exact-match scores: item difficulty
    shared by every run, a seed shift of the whole test set per run, Bernoulli draws per item."""
    difficulty = {m: rng.normal(0, 1.0, items) for m in METRICS}
    runs = []
    for config, counts in CONFIGS.items():
        for seed in seeds:
            metrics, records = {}, {}
            for metric in METRICS:
                _, test_set, task, name = metric.split("/")
                logit = math.log(means[config] / (1 - means[config])) + difficulty[metric] + rng.normal(0, seed_sd / 0.25)
                scores = (rng.random(items) < 1 / (1 + np.exp(-logit))).astype(float)
                records[test_set, task] = [{"id": f"q{i}", name: float(v)} for i, v in enumerate(scores)]
                metrics[metric] = float(scores.mean())
            run = Run(Path(f"/planted/{config}-s{seed}"), config, seed, "completed", metrics=metrics, items=records)
            run.composition = dict(zip(SOURCES, counts))
            runs.append(run)
    return runs


def _significant(cells, mixture) -> tuple[bool, bool]:
    comparison = any(c.p_holm is not None and c.p_holm < 0.05 for c in cells.values())
    optimum = any(e.get("optimum") is not None for e in mixture["metrics"].values())
    return comparison, optimum


def test_flat_truth_gives_no_finding_in_at_least_95_percent_of_report_replicates():
    """Every config has the same true score; seeds shift whole test sets. 120 replicates of the
    report's statistics (comparisons with native, Holm over the family, the mixture fit)."""
    rng = np.random.default_rng(20)
    replicates, clean, optima = 120, 0, 0
    for k in range(replicates):
        runs = _runs(rng, {c: 0.5 for c in CONFIGS})
        cells, mixture, size = report_statistics(runs, list(CONFIGS), list(METRICS), "native", 40, k, with_power=False)
        assert size == 6 * len(METRICS) + len(METRICS)  # comparisons and flatness tests: one family
        comparison, optimum = _significant(cells, mixture)
        clean += not (comparison or optimum)
        optima += optimum
        for entry in mixture["metrics"].values():
            assert entry["optimum"] is not None or entry["no_optimum"] == "flat"
    assert clean / replicates >= 0.95, (clean, optima)


def test_a_planted_difference_twice_the_mde_is_found_after_holm():
    rng = np.random.default_rng(4)
    means = {c: 0.5 for c in CONFIGS}
    means["native+translated"] = 0.9
    runs = _runs(rng, means, seeds=tuple(range(1, 9)), items=300, seed_sd=0.01)
    cells, mixture, size = report_statistics(runs, list(CONFIGS), list(METRICS), "native", 100, 0)
    for metric in METRICS:
        cell = cells["native+translated", metric]
        assert cell.power["mde"] is not None and cell.comparison.diff > 2 * cell.power["mde"]
        assert cell.p_holm < 0.05 and cell.power["verdict"] == "significant"
        assert set(cell.power["mde_by_seeds"]) == {"1", "3", "5", "8", "10"}  # 1, 3, 5, 10 and the seeds run
        assert cell.power["alpha"] == pytest.approx(0.05 / size)
        others = [cells[c, metric].power["verdict"] for c in CONFIGS if c not in ("native", "native+translated")]
        assert "significant" not in others
        by_seeds = [cell.power["mde_by_seeds"][n] for n in ("1", "3", "5", "10")]
        assert all(a > b for a, b in zip(by_seeds[1:], by_seeds[2:]))  # from 3 seeds up, more seeds detect smaller differences
    for cell in cells.values():  # the rule itself: a difference of twice the MDE or more is significant
        if cell.power and abs(cell.comparison.diff) >= 2 * cell.power["mde"]:
            assert cell.p_holm < 0.05


def test_verdict_tells_too_little_power_from_no_effect():
    assert power.verdict(-0.01, 0.01, 0.9, 0.05) == "no effect >= MDE"  # the CI rules out +-0.05
    assert power.verdict(-0.08, 0.09, 0.9, 0.05) == "too little power"  # it does not
    assert power.verdict(0.02, 0.09, 0.01, 0.05) == "significant"
    assert power.verdict(-0.01, 0.01, 0.9, None) == "too little power"  # one seed: unknown MDE


DESIGN = np.array(
    [[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3], [0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6]]
)


def _point_scores(rng, truth: np.ndarray, seeds: int, items: int = 100, seed_sd: float = 0.03) -> list[np.ndarray]:
    shared = rng.normal(0, 0.1, items)
    return [t + shared[None, :] + rng.normal(0, seed_sd, (seeds, 1)) + rng.normal(0, 0.1, (seeds, items)) for t in truth]


def test_a_flat_mixture_with_seed_noise_states_no_optimum_at_the_nominal_rate():
    """The point means differ only by seed noise, which an item-only interval would mistake for a
    surface. The flatness F test is exact here (normal noise): an optimum in 5% of the draws, within
    three binomial standard deviations."""
    rng = np.random.default_rng(1)
    draws = 300
    entries = [fit_mixture(list(SOURCES), DESIGN, _point_scores(rng, np.full(len(DESIGN), 0.5), 2), n_resamples=50, seed=k) for k in range(draws)]
    stated = sum(e["optimum"] is not None for e in entries)
    assert stated / draws <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / draws), stated
    assert all(e["optimum"] is not None or (e["no_optimum"] == "flat" and e["descriptive_best"]) for e in entries)


def test_one_seed_gives_a_descriptive_best_only_until_a_pilot_variance_is_given():
    rng = np.random.default_rng(2)
    truth = 0.6 - ((DESIGN - [0.5, 0.2, 0.3]) ** 2).sum(axis=1)
    matrices = _point_scores(rng, truth, 1)
    entry = fit_mixture(list(SOURCES), DESIGN, matrices, n_resamples=100)
    assert entry["optimum"] is None and entry["no_optimum"] == "one_seed" and "optimum_region" not in entry
    assert entry["descriptive_best"]["note"].startswith("the fitted surface's best point: descriptive only")
    best = np.array([entry["descriptive_best"]["shares"][s] for s in SOURCES])
    assert best.sum() == pytest.approx(1.0)
    run_sd = math.sqrt(0.03**2 + 0.1**2 / 100)  # what a pilot sweep would measure between seeds
    tested = fit_mixture(list(SOURCES), DESIGN, matrices, n_resamples=100, seed_variance=(run_sd**2, 20))
    assert tested["optimum"] is not None and tested["flatness"]["p_value"] < 0.05
    assert np.abs(np.array([tested["optimum"][s] for s in SOURCES]) - [0.5, 0.2, 0.3]).max() < 0.15
    with_seeds = fit_mixture(list(SOURCES), DESIGN, _point_scores(rng, truth, 2), n_resamples=100)
    assert with_seeds["optimum"] is not None and with_seeds["flatness"]["df"] == [5, 20 - 6]


def test_too_few_points_say_so():
    entry = fit_mixture(list(SOURCES), DESIGN[:2], [np.full((2, 5), 0.4), np.full((2, 5), 0.6)])
    assert entry["optimum"] is None and entry["no_optimum"] == "too_few_points"


def test_the_paired_test_keeps_its_level_when_seeds_dominate(monkeypatch):
    """3 seeds whose shifts dominate the differences, at a Holm-sized alpha: plain Satterthwaite
    degrees of freedom reject several times too often here; the test's must not."""
    from scipy.stats import chi2

    alpha, draws = 0.05 / 14, 4000
    planted = {"seed": 0.01, "item": 0.01, "item_seed": 0.16}
    bound = alpha + 3 * math.sqrt(alpha * (1 - alpha) / draws)

    def rate() -> float:
        rng = np.random.default_rng(9)
        return sum(power.paired_t(np.subtract(*_differences(rng, 0.0, 3, 120, planted)))[1] < alpha for _ in range(draws)) / draws

    assert rate() <= bound
    monkeypatch.setattr(power, "SEED_LIMIT", chi2.cdf(2, 2))  # the limit at MS_seed itself: plain Satterthwaite
    assert rate() > 2.5 * alpha


def test_the_dry_run_power_plan_uses_assumed_or_pilot_components(tmp_path):
    import json

    from omegaconf import OmegaConf

    from medinject.sweep.plan import power_plan

    plan = {"seed_variance": 1e-4, "item_variance": 0.05, "item_seed_variance": 0.1, "pilot": None, "tests_per_config": 30}
    sizes = {"native": {"mcqu": 14629}}  # the study's native test set, as one task
    assumed = power_plan(OmegaConf.create({"plan": plan}), sizes, n_configs=7, n_seeds=1)
    assert "0.05 / 180 tests" in assumed and "native/mcqu (14,629 items)" in assumed
    c = power.Components(1e-4, 0.05, 0.1, 2, 14629, seed_pool=7)
    assert f"3 seeds {power.mde(c, 3, 0.05 / 180):.3f}" in assumed
    noisy = {"seed": 0.004, "item": 0.05, "item_seed": 0.1, "n_seeds": 3, "n_items": 200, "seed_pool": 7}
    (tmp_path / "power.json").write_text(json.dumps({"comparisons": [{"metric": "eval/native/mcqu/em", "components": noisy}]}))
    piloted = power_plan(OmegaConf.create({"plan": {**plan, "pilot": str(tmp_path)}}), sizes, n_configs=7, n_seeds=1)
    assert "a pilot's" in piloted
    c = power.Components(0.004, 0.05, 0.1, 2, 14629, seed_pool=7)
    assert f"3 seeds {power.mde(c, 3, 0.05 / 180):.3f}" in piloted and piloted != assumed


def test_a_one_seed_design_gets_its_optimum_from_a_pilot_sweep(tmp_path):
    """The report CLI path: one seed per point states no optimum; `--pilot` (a sweep with 2 seeds per
    config) supplies the seed variance, and the planted interior optimum is stated."""
    import json

    from test_mixture import DESIGN as POINTS, counts_of, draws, surface, write_run

    from medinject.report.cli import main

    rng = np.random.default_rng(12)
    items = rng.normal(0, 0.1, 150)
    sweep, pilot = tmp_path / "sweep", tmp_path / "pilot"
    for k, shares in enumerate(POINTS):
        write_run(sweep / f"point-{k}", 1, counts_of(shares), draws(rng, surface(shares)[0], items, 1)[0])
    for config, shares in (("native", (1, 0, 0)), ("synthetic", (0, 1, 0)), ("translated", (0, 0, 1))):
        for seed in (1, 2, 3):
            write_run(pilot / f"{config}-{seed}", seed, counts_of(shares), draws(rng, 0.4, items, 1)[0], config=config)
    main([str(sweep), "--resamples", "200"])
    entry = json.loads((sweep / "mixture.json").read_text())["metrics"]["eval/native/mcq/hamming"]
    assert entry["optimum"] is None and entry["no_optimum"] == "one_seed" and entry["descriptive_best"]
    main([str(sweep), "--resamples", "200", "--pilot", str(pilot)])
    mixture = json.loads((sweep / "mixture.json").read_text())
    entry = mixture["metrics"]["eval/native/mcq/hamming"]
    assert entry["optimum"] is not None and "pilot" in entry["flatness"]["noise"] and entry["flatness"]["df"][1] == 6
    assert np.abs(np.array([entry["optimum"][s] for s in SOURCES]) - [0.5, 0.2, 0.3]).max() < 0.1
    assert mixture["family"]["size"] == 1  # one metric tested, no baseline comparisons
