"""Known answers for medinject.report.stats: bootstrap CIs over seeds and items, paired sign-flip comparisons."""

import math

import numpy as np
import pytest

from medinject.report.stats import bootstrap_ci, paired_difference, paired_differences, score_matrix, sign_flip_pvalue


def _table(matrix: np.ndarray, seeds=None) -> dict[int, dict[str, float]]:
    """{seed: {item id: score}} from a seeds x items matrix."""
    seeds = seeds or list(range(1, len(matrix) + 1))
    return {seed: {f"item{i}": float(v) for i, v in enumerate(row)} for seed, row in zip(seeds, matrix)}


def _width(estimate) -> float:
    return estimate.high - estimate.low


def test_identical_predictions_give_zero_difference_and_p_one():
    scores = (np.random.default_rng(0).random((3, 40)) > 0.5).astype(float)
    result = paired_difference(_table(scores), _table(scores))
    assert result.diff == 0 and result.low == 0 and result.high == 0
    assert result.p_value == pytest.approx(1.0)
    assert (result.n_seeds, result.n_items) == (3, 40)


def test_a_planted_difference_is_found_in_either_direction():
    rng = np.random.default_rng(1)
    baseline = (rng.random((3, 200)) < 0.3).astype(float)
    better = baseline.copy()
    better[:, :60] = 1.0  # 60 of 200 items now always right: +0.3 minus those already right
    planted = float((better - baseline).mean())
    up = paired_difference(_table(better), _table(baseline))
    assert up.diff == pytest.approx(planted) and planted > 0.15
    assert up.p_value < 0.05
    assert up.low > 0 and up.low < planted < up.high
    down = paired_difference(_table(baseline), _table(better))
    assert down.diff == pytest.approx(-planted) and down.p_value < 0.05 and down.high < 0


def test_no_difference_beyond_noise_is_not_significant():
    rng = np.random.default_rng(2)
    a, b = (rng.random((3, 100)) < 0.5).astype(float), (rng.random((3, 100)) < 0.5).astype(float)
    result = paired_difference(_table(a), _table(b))
    assert result.p_value > 0.05 and result.low < 0 < result.high


def test_ci_shrinks_as_items_grow():
    rng = np.random.default_rng(3)
    widths = [_width(bootstrap_ci((rng.random((2, n)) < 0.5).astype(float))) for n in (20, 200, 2000)]
    assert widths[0] > widths[1] > widths[2] > 0
    assert widths[2] < widths[0] / 5  # ~1/sqrt(n): 100x the items, ~10x narrower


def test_ci_of_a_constant_metric_has_zero_width():
    for value in (0.0, 0.1, 0.7, 1.0):
        estimate = bootstrap_ci(np.full((3, 25), value))
        assert estimate.mean == pytest.approx(value)
        assert estimate.low == estimate.high == estimate.mean


def test_seeds_that_disagree_widen_the_ci():
    items = np.random.default_rng(4).normal(size=100)
    agree = np.vstack([items, items, items])
    disagree = np.vstack([items + 0.5, items, items - 0.5])
    a, b = bootstrap_ci(agree), bootstrap_ci(disagree)
    assert a.mean == pytest.approx(b.mean)
    assert _width(b) > 1.5 * _width(a)


def test_repeating_a_seed_does_not_narrow_the_ci():
    """Seeds are scored on the same items: five identical seeds are as informative as one."""
    items = np.random.default_rng(5).normal(size=80)
    one, five = bootstrap_ci(items[None, :]), bootstrap_ci(np.tile(items, (5, 1)))
    assert _width(five) == pytest.approx(_width(one), rel=0.15)


def test_a_single_number_has_no_ci():
    estimate = bootstrap_ci(np.array([[0.42]]))
    assert estimate.mean == 0.42 and math.isnan(estimate.low) and math.isnan(estimate.high)


def test_sign_flip_is_exact_for_few_items():
    assert sign_flip_pvalue(np.array([1.0, 1.0, 1.0])) == pytest.approx(2 / 8)  # only all + or all - are as extreme
    assert sign_flip_pvalue(np.ones(5)) == pytest.approx(2 / 32)
    assert sign_flip_pvalue(np.zeros(7)) == 1.0
    assert sign_flip_pvalue(np.array([])) == 1.0


def test_monte_carlo_p_value_is_never_zero_and_is_reproducible():
    d = np.full(300, 0.5)
    p = sign_flip_pvalue(d, n_resamples=999, seed=3)
    assert p == pytest.approx(1 / 1000)
    noisy = np.random.default_rng(6).normal(0.05, 1, size=300)
    assert sign_flip_pvalue(noisy, seed=7) == sign_flip_pvalue(noisy, seed=7)


def test_items_match_by_key_and_seed():
    config = {1: {"a": 1.0, "b": 1.0, "c": 0.0}, 2: {"a": 1.0, "b": 0.0, "c": 0.0}}
    baseline = {1: {"b": 0.0, "a": 0.0, "z": 1.0}, 2: {"a": 1.0, "b": 0.0}, 3: {"a": 0.0, "b": 0.0}}
    differences, matched = paired_differences(config, baseline)
    assert matched == 2  # seed 3 has no partner
    # items a and b only (c and z are not scored by both); row = seed, by key not by position
    assert differences.tolist() == [[1.0, 1.0], [0.0, 0.0]]


def test_without_a_shared_seed_items_are_averaged_over_seeds():
    config = {1: {"a": 1.0, "b": 0.0}, 2: {"a": 0.0, "b": 0.0}}
    baseline = {7: {"a": 0.0, "b": 1.0}}
    differences, matched = paired_differences(config, baseline)
    assert matched == 0
    assert differences.tolist() == [[0.5, -1.0]]
    assert paired_difference(config, baseline).n_seeds == 0


def test_missing_scores_are_left_out_not_counted_as_zero():
    seeds, items, matrix = score_matrix({1: {"a": 1.0, "b": math.nan}, 2: {"a": 1.0}})
    assert seeds == [1, 2] and items == ["a", "b"]
    assert np.isnan(matrix[:, 1]).all()
    assert bootstrap_ci(matrix).mean == 1.0


def test_run_level_metric_pairs_seeds():
    """A corpus-level metric has one value per seed: the seeds are the units of a paired t test."""
    from scipy.stats import ttest_rel

    noise = np.array([0.02, -0.01, 0.03, 0.0, -0.02])
    config = {s: {"run": 0.5 + 0.01 * s + noise[s - 1]} for s in range(1, 6)}
    baseline = {s: {"run": 0.2 + 0.01 * s} for s in range(1, 6)}
    result = paired_difference(config, baseline)
    assert result.diff == pytest.approx(0.3 + noise.mean())
    expected = ttest_rel([config[s]["run"] for s in range(1, 6)], [baseline[s]["run"] for s in range(1, 6)]).pvalue
    assert result.p_value == pytest.approx(expected)
    assert (result.n_seeds, result.n_items) == (5, 1)
    one_seed = paired_difference({1: config[1]}, {1: baseline[1]})  # nothing to test with: a single sign flip
    assert one_seed.p_value == 1.0


def test_results_are_deterministic_for_a_seed():
    scores = np.random.default_rng(8).random((3, 30))
    assert bootstrap_ci(scores, seed=11) == bootstrap_ci(scores, seed=11)
    assert bootstrap_ci(scores, seed=11) != bootstrap_ci(scores, seed=12)


# Standard statistics come from libraries (statsmodels, scipy, scikit-learn): pinned to them on the same
# inputs, and to hand-computed values, so a wrapper that reorders, drops or mis-scales shows.


def test_holm_and_bh_are_statsmodels_multipletests_on_the_finite_entries():
    from statsmodels.stats.multitest import multipletests

    from medinject.report.stats import adjust_pvalues

    rng = np.random.default_rng(3)
    p = rng.random(25) ** 3
    p[[4, 11]] = np.nan  # a comparison with no p-value: not counted in the family, NaN in the output
    p[7] = p[2]  # a tie
    finite = np.isfinite(p)
    for ours, theirs in (("holm", "holm"), ("bh", "fdr_bh")):
        adjusted = adjust_pvalues(p, ours)
        assert np.isnan(adjusted[~finite]).all()
        assert np.allclose(adjusted[finite], multipletests(p[finite], method=theirs)[1])
    assert np.allclose(adjust_pvalues([0.01, 0.04, 0.03], "holm"), [0.03, 0.06, 0.06])  # by hand
    assert np.isnan(adjust_pvalues([np.nan, np.nan], "bh")).all()
    with pytest.raises(ValueError, match="unknown multiplicity correction 'bonferroni'"):
        adjust_pvalues([0.1], "bonferroni")


def test_cohen_kappa_is_scikit_learns_and_the_hand_formula():
    from sklearn.metrics import cohen_kappa_score

    from medinject.report.review import cohen_kappa

    rng = np.random.default_rng(5)
    for _ in range(20):
        a = rng.integers(0, 2, 30).tolist()
        b = [x if rng.random() < 0.7 else 1 - x for x in a]
        observed = np.mean(np.array(a) == np.array(b))
        pa, pb = np.mean(a), np.mean(b)
        expected = pa * pb + (1 - pa) * (1 - pb)
        assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
        assert cohen_kappa(a, b) == pytest.approx((observed - expected) / (1 - expected))
    assert cohen_kappa([1, 1, 1], [1, 1, 1]) == 1.0  # one rating everywhere, agreed: perfect, not 0 / 0
    assert cohen_kappa([1, 1, 1], [0, 0, 0]) == pytest.approx(0.0)


def test_spearman_is_scipys_with_ties_and_none_when_a_side_is_constant():
    from scipy.stats import rankdata, spearmanr

    from medinject.report.review import spearman

    x = [0.2, 0.5, 0.5, 0.1, 0.9, 0.5, 0.3]
    y = [0, 1, 1, 0, 1, 0, 1]
    by_hand = np.corrcoef(rankdata(x), rankdata(y))[0, 1]  # Pearson on mean ranks
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic) == pytest.approx(by_hand)
    assert spearman([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert spearman([0.4, 0.4, 0.4], [0, 1, 1]) is None and spearman([1.0, 2.0], [1, 1]) is None
