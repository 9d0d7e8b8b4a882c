"""Tests for cotshape.core.stats, paired_tests, bootstrap and random_effects: intervals, exact
McNemar, seeded bootstraps, slope and verdicts.

Expected values are derived by hand from the formulas (noted next to each), not from the code.
"""

from __future__ import annotations

import json
import math

import pytest

from cotshape.core import random_effects
from cotshape.core import stats as stats_mod
from cotshape.core.bootstrap import paired_slope, ratio_diff_ci, ratio_mean_ci
from cotshape.core.paired_tests import (
    binom_half_cdf_exact,
    binom_half_log_cdf,
    mcnemar_exact,
    newcombe_paired_interval,
    paired_accuracy_diff,
)
from cotshape.core.random_effects import pooled_difference
from cotshape.core.stats import (
    verdict_equivalent,
    verdict_greater,
    verdict_less,
    wilson_interval,
)

# Two models on the same 20 problems: A solves 12, B solves 16; A-only 1 (problem 0), B-only 5.
A = [True, True, True, True, True, True, True, True, True, True,
     True, True, False, False, False, False, False, False, False, False]  # fmt: skip
B = [False, True, True, True, True, True, True, True, True, True,
     True, True, True, True, True, True, True, False, False, False]  # fmt: skip

# --------------------------------------------------------------------------- Wilson


def test_wilson_zero_successes():
    # k = 0: lower 0, upper z^2 / (n + z^2) = 3.841459 / 13.841459
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(0.277533, abs=1e-4)


def test_wilson_half():
    # p = 1/2: centre 1/2, half-width z sqrt(1/40 + z^2/400) / (1 + z^2/10) = 0.263407
    lo, hi = wilson_interval(5, 10)
    assert lo == pytest.approx(0.236593, abs=1e-4)
    assert hi == pytest.approx(0.763407, abs=1e-4)


def test_wilson_all_successes():
    # k = n: lower n / (n + z^2) = 10 / 13.841459, upper 1
    lo, hi = wilson_interval(10, 10)
    assert lo == pytest.approx(0.722467, abs=1e-4)
    assert hi == 1.0


def test_wilson_asymmetric():
    # 40/50: centre (0.8 + z^2/100) / (1 + z^2/50) = 0.778596, half-width 0.108967
    lo, hi = wilson_interval(40, 50)
    assert lo == pytest.approx(0.669629, abs=1e-4)
    assert hi == pytest.approx(0.887562, abs=1e-4)


def test_wilson_empty_is_whole_range():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_wilson_rejects_k_above_n():
    with pytest.raises(ValueError, match="0 <= k <= n"):
        wilson_interval(11, 10)


# --------------------------------------------------------------------------- McNemar


def test_mcnemar_all_one_way():
    # 2 * P(X <= 0 | Bin(5, 1/2)) = 2 / 32
    assert mcnemar_exact(0, 5) == 0.0625


def test_mcnemar_one_against_nine_is_symmetric():
    # 2 * (1 + 10) / 1024
    assert mcnemar_exact(1, 9) == 0.021484375
    assert mcnemar_exact(9, 1) == 0.021484375


def test_mcnemar_balanced_is_one():
    assert mcnemar_exact(7, 7) == 1.0


def test_mcnemar_no_discordant_pairs_is_one():
    assert mcnemar_exact(0, 0) == 1.0


def test_mcnemar_large_table_stays_finite_and_matches_normal():
    # n = 10^5: the continuity-corrected normal approximation, z = 199 / sqrt(10^5) = 0.6293,
    # gives p = 0.529; the exact binomial agrees to well under 0.01 at this n.
    p = mcnemar_exact(49_900, 50_100)
    assert math.isfinite(p)
    assert p == pytest.approx(0.529, abs=0.01)


def test_mcnemar_extreme_large_table_is_finite():
    p = mcnemar_exact(40_000, 60_000)
    assert math.isfinite(p)
    assert 0.0 <= p < 1e-100


def test_mcnemar_log_space_tail_agrees_with_exact_sum():
    # The path used above n = 20000 checked against the exact integer sum where both apply.
    for m, n in [(3, 40), (130, 300), (1400, 3000), (4950, 10000)]:
        assert math.exp(binom_half_log_cdf(m, n)) == pytest.approx(
            binom_half_cdf_exact(m, n), rel=1e-9
        )


# --------------------------------------------------------------------------- paired accuracy


def test_paired_diff_counts_and_point_estimate():
    r = paired_accuracy_diff(A, B, n_boot=2000)
    assert r["n"] == 20
    assert r["acc_a"] == 0.6
    assert r["acc_b"] == 0.8
    assert r["diff"] == pytest.approx(0.2)
    assert (r["a_only"], r["b_only"]) == (1, 5)
    assert r["p_mcnemar"] == 0.21875  # 2 * (1 + 6) / 64


def test_paired_diff_same_seed_same_ci():
    r1 = paired_accuracy_diff(A, B, seed=3, method="bootstrap")
    assert r1["ci95"] == paired_accuracy_diff(A, B, seed=3, method="bootstrap")["ci95"]


def test_paired_diff_different_seed_different_ci():
    assert (
        paired_accuracy_diff(A, B, n_boot=500, seed=0, method="bootstrap")["ci95"]
        != paired_accuracy_diff(A, B, n_boot=500, seed=1, method="bootstrap")["ci95"]
    )


def test_paired_diff_default_is_newcombe_and_seed_free():
    r = paired_accuracy_diff(A, B, seed=0)
    assert r["ci_method"] == "newcombe"
    assert r["ci95"] == paired_accuracy_diff(A, B, seed=1)["ci95"]


def test_newcombe_matches_the_normal_approximation_on_a_large_table():
    # 50 both right, 5 only a, 25 only b, 120 neither: d = +0.10; the normal approximation of the
    # paired difference gives 0.10 ± 1.96 * sqrt(30/200**2 - 20**2/200**3) = [0.0481, 0.1519]
    lo, hi = newcombe_paired_interval(50, 5, 25, 120)
    assert lo == pytest.approx(0.0481, abs=2e-3) and hi == pytest.approx(0.1519, abs=2e-3)


def test_newcombe_interval_does_not_collapse_without_discordant_pairs():
    # two students that agree on all 12 problems (both wrong): the interval is the Wilson upper
    # bound of 0/12 on each side, not [0, 0]
    lo, hi = newcombe_paired_interval(0, 0, 0, 12)
    assert lo == pytest.approx(-0.2425, abs=1e-4) and hi == pytest.approx(0.2425, abs=1e-4)
    # the same agreement on 200 problems is strong evidence of a small difference
    lo, hi = newcombe_paired_interval(40, 0, 0, 160)
    assert -0.02 < lo < 0 < hi < 0.02


def test_paired_diff_ci_contains_estimate():
    r = paired_accuracy_diff(A, B)
    lo, hi = r["ci95"]
    assert lo <= r["diff"] <= hi


def test_paired_diff_identical_models_bootstrap_has_zero_ci():
    r = paired_accuracy_diff(A, A, method="bootstrap")
    assert r["ci95"] == [0.0, 0.0]
    assert r["p_mcnemar"] == 1.0
    lo, hi = paired_accuracy_diff(A, A)["ci95"]
    assert lo < 0 < hi


def test_paired_diff_is_json_serialisable():
    r = paired_accuracy_diff(A, B, n_boot=200)
    assert json.loads(json.dumps(r)) == r
    assert all(type(r[k]) is float for k in ("acc_a", "acc_b", "diff", "p_mcnemar"))


def test_paired_diff_rejects_length_mismatch():
    with pytest.raises(ValueError, match="same problems"):
        paired_accuracy_diff([True, False], [True])


# --------------------------------------------------------------------------- per-token mean loss


def test_ratio_mean_is_ratio_of_sums():
    # (2 + 6 + 1 + 9) / (1 + 3 + 2 + 12) = 1.0; the mean of per-example ratios would be 1.3125.
    r = ratio_mean_ci([2.0, 6.0, 1.0, 9.0], [1.0, 3.0, 2.0, 12.0], n_boot=1000)
    assert r["mean"] == pytest.approx(1.0)
    assert r["n"] == 4
    lo, hi = r["ci95"]
    assert lo <= r["mean"] <= hi


def test_ratio_mean_rejects_empty():
    with pytest.raises(ValueError, match="at least one example"):
        ratio_mean_ci([], [])


def test_ratio_diff_separated_sets():
    # Set a: per-token loss 2.0 (+-0.1), set b: 1.0 (+-0.1); the difference is near 1, far from 0.
    num_a, den_a = [21.0, 19.0, 20.5, 39.0, 10.0], [10.0, 10.0, 10.0, 20.0, 5.0]
    num_b, den_b = [11.0, 9.0, 10.0, 5.5, 20.0], [10.0, 10.0, 10.0, 5.0, 20.0]
    r = ratio_diff_ci(num_a, den_a, num_b, den_b, n_boot=2000)
    assert r["mean_a"] == pytest.approx(109.5 / 55.0)
    assert r["mean_b"] == pytest.approx(55.5 / 55.0)
    assert r["diff"] == pytest.approx(54.0 / 55.0)
    assert (r["n_a"], r["n_b"]) == (5, 5)
    assert r["ci95"][0] > 0.8


# --------------------------------------------------------------------------- slope

XS = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_slope_decreasing_table():
    # Level i solves the first 9, 7, 5, 3, 1 of 10 problems: accuracy 0.9 .. 0.1, slope -0.8.
    table = [[j < k for j in range(10)] for k in (9, 7, 5, 3, 1)]
    r = paired_slope(table, XS, n_boot=2000)
    assert r["slope"] == pytest.approx(-0.8)
    assert r["accuracies"] == pytest.approx([0.9, 0.7, 0.5, 0.3, 0.1])
    assert r["ci95"][1] < 0
    assert r["n"] == 10


def test_slope_flat_table_ci_contains_zero():
    # Every level solves 5 of 10 problems, a different five each time: slope 0.
    table = [[(j + shift) % 10 < 5 for j in range(10)] for shift in range(5)]
    r = paired_slope(table, XS, n_boot=2000)
    assert r["slope"] == pytest.approx(0.0)
    lo, hi = r["ci95"]
    assert lo < 0 < hi


def test_slope_needs_two_distinct_levels():
    with pytest.raises(ValueError, match="2 distinct xs"):
        paired_slope([[True, False], [False, True]], [0.5, 0.5])


# --------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    "ci, expected",
    [([0.01, 0.2], "holds"), ([-0.2, -0.01], "contradicted"), ([-0.05, 0.1], "inconclusive")],
)
def test_verdict_greater(ci, expected):
    assert verdict_greater(ci) == expected


@pytest.mark.parametrize(
    "ci, expected",
    [([-0.2, -0.01], "holds"), ([0.01, 0.2], "contradicted"), ([-0.1, 0.05], "inconclusive")],
)
def test_verdict_less(ci, expected):
    assert verdict_less(ci) == expected


@pytest.mark.parametrize(
    "ci, expected",
    [([-0.02, 0.03], "holds"), ([0.06, 0.12], "contradicted"), ([-0.02, 0.08], "inconclusive")],
)
def test_verdict_equivalent(ci, expected):
    assert verdict_equivalent(ci, margin=0.05) == expected


def test_verdict_rejects_reversed_interval():
    with pytest.raises(ValueError, match="lo <= hi"):
        verdict_greater([0.2, 0.1])


# --------------------------------------------------------------------------- pooling


def test_pooled_difference_by_hand():
    # Weights 100/400 and 300/400: estimate 0.25 * 0.10 + 0.75 * 0.04 = 0.055. The 1.96 cancels:
    # pooled half-width sqrt((0.25 * 0.08)^2 + (0.75 * 0.06)^2) = sqrt(0.002425) = 0.0492443.
    r = pooled_difference([0.10, 0.04], [[0.02, 0.18], [-0.02, 0.10]], [100, 300])
    assert r["diff"] == pytest.approx(0.055)
    assert r["ci95"] == pytest.approx([0.055 - 0.0492443, 0.055 + 0.0492443], abs=1e-6)
    assert (r["k"], r["n"]) == (2, 400)


def test_pooled_difference_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="equal lengths"):
        pooled_difference([0.1, 0.2], [[0.0, 0.2]], [10, 10])


# ---- runs as the unit of replication ---------------------------------------------------------

def test_t975_matches_scipy():
    ss = pytest.importorskip("scipy.stats")
    for df in [*range(1, 31), 31, 45, 100, 1000]:
        assert stats_mod.t975(df) == pytest.approx(float(ss.t.ppf(0.975, df)), abs=1e-6)
    with pytest.raises(ValueError):
        stats_mod.t975(0)


def test_t_interval_by_hand():
    # mean 2, sd 1, k 3: 2 +- 4.302653 / sqrt 3
    lo, hi = stats_mod.t_interval([1.0, 2.0, 3.0])
    assert (lo, hi) == pytest.approx((2 - 4.302652730 / math.sqrt(3), 2 + 4.302652730 / math.sqrt(3)))
    assert stats_mod.t_interval([1.0]) is None


SE6 = 0.06 / 1.959963984540054  # a run's paired interval of +-6 points


def test_random_effects_runs_that_agree_keep_about_the_per_run_width():
    r = random_effects.random_effects_difference([0.10, 0.11, 0.09], [SE6] * 3)
    lo, hi = r["ci95"]
    assert r["diff"] == pytest.approx(0.10) and r["tau"] == 0.0 and r["i2"] == 0.0
    # truncated HKSJ: 4.303 x 0.0306 / sqrt 3 = 0.076, about the runs' own +-0.06 (not the 0.025
    # the three close values alone would give)
    assert (hi - lo) / 2 == pytest.approx(4.302652730 * SE6 / math.sqrt(3))
    assert 0.05 < (hi - lo) / 2 < 0.09
    assert r["ci95"][0] <= r["t_ci95"][0] and r["t_ci95"][1] <= r["ci95"][1]


def test_random_effects_runs_that_disagree_widen_the_interval():
    diffs = [0.17, 0.125, 0.015]  # the committed G - H per seed
    r = random_effects.random_effects_difference(diffs, [SE6] * 3)
    fixed = pooled_difference(diffs, [[d - 0.06, d + 0.06] for d in diffs], [200] * 3)
    width = r["ci95"][1] - r["ci95"][0]
    assert width > 0.12 and width > fixed["ci95"][1] - fixed["ci95"][0]
    assert r["ci95"][0] < 0 < r["ci95"][1]  # inconclusive, while the fixed-effect interval is above 0
    assert fixed["ci95"][0] > 0
    assert r["tau"] > 0.05 and r["i2"] > 0.8
    assert r["ci95"] == pytest.approx(stats_mod.t_interval(diffs))  # here the t-interval is the wider
    assert stats_mod.verdict_greater(r["ci95"]) == "inconclusive"


def test_random_effects_one_run_has_no_interval():
    r = random_effects.random_effects_difference([0.2], [SE6])
    assert r["ci95"] is None and "one training run" in r["reason"] and r["k"] == 1


def test_random_effects_without_ses_is_the_t_interval():
    r = random_effects.random_effects_difference([0.1, 0.2, 0.3])
    assert r["ci95"] == stats_mod.t_interval([0.1, 0.2, 0.3]) and r["tau"] is None
    with pytest.raises(ValueError):
        random_effects.random_effects_difference([0.1, 0.2], [SE6])
    with pytest.raises(ValueError):
        random_effects.random_effects_difference([])


def test_variance_components_split_runs_into_test_problems_and_sft():
    from cotshape.core.random_effects import variance_components

    # four runs on one draw, spread sd 4.4 points, each run's own se 3 points
    vc = variance_components([[0.10, 0.20, 0.15, 0.12]], [[0.03 ** 2] * 4])
    assert vc["within"] == pytest.approx(0.0018916667)
    assert vc["parts"]["binomial"]["var"] == pytest.approx(0.0009)
    # the runs share their test problems: their whole spread is the SFT seed's
    assert vc["parts"]["sft"]["var"] == pytest.approx(0.0018916667)
    assert vc["parts"]["data"] is None and vc["draws"] == 1 and vc["runs"] == [4]
    assert variance_components([[0.5, 0.5]], [[0.01, 0.01]])["parts"]["sft"]["var"] == 0.0
    # three draws far apart: most of the variance is the data draw's
    vc = variance_components([[0.1, 0.2], [0.3, 0.35], [0.0, 0.05]], [[0.0009] * 2] * 3)
    assert vc["parts"]["data"]["var"] == pytest.approx(0.0214583333)
    assert vc["parts"]["data"]["share"] > 0.85
    assert sum(p["share"] for p in vc["parts"].values()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two training runs"):
        variance_components([[0.1], [0.2]], [[0.01], [0.01]])
    with pytest.raises(ValueError, match="same shape"):
        variance_components([[0.1, 0.2]], [[0.01]])


def test_runs_by_problems_interval_counts_shared_test_problems_once_and_the_runs_spread():
    from cotshape.core.random_effects import runs_by_problems_interval
    from cotshape.core.stats import t975

    n = 200
    same = [[1.0 if i < 60 else 0.0 for i in range(n)]] * 4  # four runs with identical answers
    iv = runs_by_problems_interval(same)
    # identical runs: no SFT spread; the test problems' noise is that of one run (it does not
    # shrink with the number of runs, since they share the problems): se = sd / sqrt(n)
    p = 0.3
    assert iv["se_runs"] == 0.0 and iv["se_test"] == pytest.approx(math.sqrt(p * (1 - p) * n / (n - 1) / n))
    assert iv["ci95"] == pytest.approx([p - t975(n - 1) * iv["se_test"], p + t975(n - 1) * iv["se_test"]])
    # runs that disagree: wider than the test problems alone, never narrower than the t-interval
    spread = [[1.0 if i < k else 0.0 for i in range(n)] for k in (40, 60, 80, 100)]
    iv2 = runs_by_problems_interval(spread)
    assert iv2["ci95"][1] - iv2["ci95"][0] > iv["ci95"][1] - iv["ci95"][0]
    assert iv2["ci95"][0] <= iv2["t_ci95"][0] and iv2["ci95"][1] >= iv2["t_ci95"][1]
    assert iv2["mean"] == pytest.approx(0.35) and iv2["k"] == 4 and iv2["n"] == n
    # one run: no run-level interval
    one = runs_by_problems_interval(same[:1])
    assert one["ci95"] is None and "one training run" in one["reason"]
    with pytest.raises(ValueError, match="runs x problems"):
        runs_by_problems_interval([1.0, 0.0])


def test_draws_sharing_problems_keep_the_test_part_and_need_two_draws():
    from cotshape.core.random_effects import draws_sharing_problems_interval

    agree = draws_sharing_problems_interval([0.10, 0.10, 0.10, 0.10], [0.03] * 4, 200)
    assert agree["se_draws"] == 0.0 and agree["se"] == pytest.approx(0.03)  # not 0.03 / 2
    one = draws_sharing_problems_interval([0.10], [0.03], 200)
    assert one["ci95"] is None and "one data draw" in one["reason"]
    with pytest.raises(ValueError, match="one se_test per draw"):
        draws_sharing_problems_interval([0.1, 0.2], [0.03], 200)
