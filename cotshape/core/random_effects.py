"""One difference (or accuracy) over several training runs, the run being the unit: the
random-effects combination (truncated HKSJ, never narrower than the t-interval over runs), its
fixed-effect counterpart (test-problem noise only, secondary), the split of a run-level number's
variance into data draw, SFT seed and test problems, the runs x problems interval, and its
analogue for data draws that share their test problems.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cotshape.core.stats import Z95, ci_bounds, t975, t_interval


def pooled_difference(
    diffs: Sequence[float], cis: Sequence[Sequence[float]], ns: Sequence[int]
) -> dict:
    """Combine one paired difference measured in several independent experiments (e.g. seeds).

    A normal approximation: each experiment's standard error is its CI half-width / 1.96 (a
    bootstrap percentile interval need not be symmetric; the half-width averages its two sides),
    the pooled estimate is the n-weighted mean ``sum (n_i / N) d_i`` and, the experiments being
    independent, its standard error is ``sqrt(sum (n_i / N)^2 se_i^2)``; the interval is the
    estimate +- 1.96 pooled se.
    """
    if not (len(diffs) == len(cis) == len(ns)):
        raise ValueError(
            f"diffs, cis and ns must have equal lengths, got {len(diffs)}, {len(cis)}, {len(ns)}"
        )
    if len(diffs) == 0:
        raise ValueError("pooled_difference needs at least one experiment")
    if any(n <= 0 for n in ns):
        raise ValueError(f"every n must be > 0, got {list(ns)}")
    bounds = [ci_bounds(ci) for ci in cis]
    total = int(sum(ns))
    weights = [n / total for n in ns]
    estimate = math.fsum(w * d for w, d in zip(weights, diffs, strict=True))
    se = math.sqrt(
        math.fsum(
            (w * (hi - lo) / 2 / Z95) ** 2 for w, (lo, hi) in zip(weights, bounds, strict=True)
        )
    )
    return {
        "diff": float(estimate),
        "ci95": [float(estimate - Z95 * se), float(estimate + Z95 * se)],
        "k": len(diffs),
        "n": total,
    }


def random_effects_difference(diffs: Sequence[float], ses: Sequence[float] | None = None) -> dict:
    """Combine one paired difference measured in ``k`` independent training runs, the run being
    the unit of replication (each run: its own SFT, evaluated on the test problems).

    With each run's standard error (``ses``, from its paired interval: :func:`ci_se`), the
    between-run variance tau^2 is the DerSimonian-Laird estimate, the runs are weighted
    ``1 / (se_i^2 + tau^2)`` and the interval is Hartung-Knapp-Sidik-Jonkman's (a t-interval on
    ``k - 1`` degrees of freedom with the weighted spread of the runs about the estimate), in its
    truncated form (the spread factor is at least 1: Jackson et al. 2017, Roever et al. 2015).
    ``ci95`` is the hull of that interval and the plain t-interval over the ``k`` run-level
    differences, so it is never narrower than the spread of the runs says. Without ``ses`` it is
    the t-interval alone (tau and I^2 are then unknown: None).

    Returns ``diff`` (the weighted estimate; the mean without ``ses``), ``ci95``, ``k``,
    ``mean``, ``sd`` (over the runs), ``tau``, ``i2`` (the share of the variation between runs
    not explained by their own test-problem noise) and ``t_ci95``; for ``k = 1``: ``ci95`` None
    and ``reason`` (one run says nothing about the spread of runs).
    """
    k = len(diffs)
    if k == 0:
        raise ValueError("random_effects_difference needs at least one run")
    if ses is not None and len(ses) != k:
        raise ValueError(f"diffs and ses must have equal lengths, got {k} and {len(ses)}")
    d = [float(x) for x in diffs]
    mean = math.fsum(d) / k
    out: dict = {"k": k, "mean": mean, "diff": mean, "tau": None, "i2": None}
    if k == 1:
        out.update(ci95=None, t_ci95=None, sd=None,
                   reason="one training run: no run-level interval (the spread of runs is unknown)")
        return out
    out["sd"] = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (k - 1))
    t_ci = t_interval(d)
    out["t_ci95"] = t_ci
    out["ci95"] = t_ci
    if ses is None:
        return out
    s2 = [max(float(s), 1e-12) ** 2 for s in ses]
    w0 = [1 / v for v in s2]
    fe = math.fsum(w * x for w, x in zip(w0, d, strict=True)) / math.fsum(w0)
    q = math.fsum(w * (x - fe) ** 2 for w, x in zip(w0, d, strict=True))
    c = math.fsum(w0) - math.fsum(w * w for w in w0) / math.fsum(w0)
    tau2 = max(0.0, (q - (k - 1)) / c) if c > 0 else 0.0
    w = [1 / (v + tau2) for v in s2]
    est = math.fsum(wi * x for wi, x in zip(w, d, strict=True)) / math.fsum(w)
    # the truncated (modified) HKSJ factor: never below 1, so runs that happen to agree more
    # closely than their own noise allows do not shrink the interval below the runs' own se
    spread = math.fsum(wi * (x - est) ** 2 for wi, x in zip(w, d, strict=True)) / (k - 1)
    var = max(1.0, spread) / math.fsum(w)
    h = t975(k - 1) * math.sqrt(var)
    out.update(diff=est, tau=math.sqrt(tau2), i2=max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0,
               hksj_ci95=[est - h, est + h],
               ci95=[min(est - h, t_ci[0]), max(est + h, t_ci[1])])
    return out


def variance_components(groups: Sequence[Sequence[float]],
                        binomial_vars: Sequence[Sequence[float]]) -> dict:
    """Where the variance of a run-level number (an accuracy, a paired difference) comes from.

    ``groups[d][r]`` is the number from training run ``r`` on data draw ``d`` (draws: the teacher
    samples and the G/W draw of one data seed; runs: SFT seeds on that draw), every run scored on
    the same test problems; ``binomial_vars`` has the same shape and holds each run's squared
    standard error from its test problems (the Wilson / Newcombe interval: :func:`ci_se`
    squared). Method of moments, each part truncated at 0:

    * ``binomial``: the mean squared test-problem se: what another draw of test problems would move
      one run's number. The runs share their test problems, so this noise is *not* in the spread
      between them;
    * ``sft``: the pooled within-draw variance of the runs (another SFT seed on the same data,
      scored on the same problems);
    * ``data``: the variance of the draw means minus what the within-draw spread puts into a mean
      of R runs (another data seed); None with one draw.

    Returns each part's variance (``var``), sd and share of their sum, plus ``within`` (the pooled
    within-draw variance), ``draws`` and ``runs`` (per draw). Needs two runs in some draw."""
    if len(groups) != len(binomial_vars) or any(
            len(g) != len(b) for g, b in zip(groups, binomial_vars, strict=True)):
        raise ValueError("groups and binomial_vars must have the same shape")
    ss = math.fsum((x - math.fsum(g) / len(g)) ** 2 for g in groups if g for x in g)
    df = sum(len(g) - 1 for g in groups if g)
    if df < 1:
        raise ValueError("variance_components needs two training runs on one data draw")
    within = ss / df
    all_b = [float(v) for b in binomial_vars for v in b]
    binom = math.fsum(all_b) / len(all_b)
    parts: dict[str, float | None] = {"binomial": binom, "sft": within, "data": None}
    draws = [g for g in groups if g]
    if len(draws) >= 2:
        means = [math.fsum(g) / len(g) for g in draws]
        grand = math.fsum(means) / len(means)
        between = math.fsum((m - grand) ** 2 for m in means) / (len(means) - 1)
        r_harm = len(draws) / math.fsum(1 / len(g) for g in draws)  # runs per draw (harmonic mean)
        parts["data"] = max(0.0, between - within / r_harm)
    total = math.fsum(v for v in parts.values() if v is not None)
    return {
        "draws": len(draws), "runs": [len(g) for g in draws], "within": within,
        "parts": {k: None if v is None else {"var": v, "sd": math.sqrt(v), "share": v / total if total > 0 else 0.0}
                  for k, v in parts.items()},
    }


def runs_by_problems_interval(table: Sequence[Sequence[float]]) -> dict:
    """The mean of a runs x problems table and its 95 % interval with both as random draws.

    ``table[r][i]`` is what training run ``r`` scored on test problem ``i``: 0/1 correctness (an
    accuracy), ``b - a`` in {-1, 0, 1} (a paired difference: run r of B against run r of A, or
    against the one run of an untrained A), or a per-problem contrast (the mixture slope). All runs
    answered the same problems, so the test problems' noise is shared by the runs and does not
    shrink with more runs; the SFT seed's does. Two-way random effects (problems, runs):
    ``var(mean) = var(problem means) / n + var(run means) / R``, which counts the run x problem
    interaction twice (conservative). Satterthwaite's degrees of freedom (rounded down) set the
    t quantile, and ``ci95`` is hulled with the t-interval over the run means, so it is never
    narrower than the spread of the runs. One run: ``ci95`` None and ``reason`` (the SFT seed's
    spread is unknown).

    Returns ``mean``, ``ci95``, ``se``, ``se_test`` (the problems' part), ``se_runs`` (the runs'
    part), ``df``, ``k`` (runs), ``n`` (problems), ``run_means``, ``sd`` (of the run means) and
    ``t_ci95`` (the t-interval over the run means)."""
    x = np.asarray(table, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"runs_by_problems_interval needs a runs x problems table, got shape {x.shape}")
    k, n = x.shape
    run_means = x.mean(axis=1)
    mean = float(x.mean())
    var_test = float(x.mean(axis=0).var(ddof=1)) / n if n > 1 else 0.0
    out: dict = {"mean": mean, "k": k, "n": n, "run_means": [float(v) for v in run_means],
                 "se_test": math.sqrt(var_test)}
    if k == 1:
        out.update(ci95=None, se=None, se_runs=None, df=None, sd=None, t_ci95=None,
                   reason="one training run: no run-level interval (the spread of runs is unknown)")
        return out
    var_runs = float(run_means.var(ddof=1)) / k
    var = var_test + var_runs
    parts = (var_test ** 2 / (n - 1) if n > 1 else 0.0) + var_runs ** 2 / (k - 1)
    df = var ** 2 / parts if parts > 0 else float(k - 1)
    h = t975(max(1, math.floor(df))) * math.sqrt(var)
    t_ci = t_interval(run_means)
    out.update(se=math.sqrt(var), se_runs=math.sqrt(var_runs), df=df, sd=float(run_means.std(ddof=1)),
               t_ci95=t_ci, ci95=[min(mean - h, t_ci[0]), max(mean + h, t_ci[1])])
    return out


def draws_sharing_problems_interval(diffs: Sequence[float], ses_test: Sequence[float], n: int) -> dict:
    """One difference over ``k`` data draws that were all scored on the *same* ``n`` test
    problems (only ``base.data_seed`` differs), the draw being the unit.

    ``diffs[d]`` is draw d's run-level difference (the mean over its training runs and the test
    problems) and ``ses_test[d]`` the test-problem part of its standard error (``se_test`` of
    :func:`runs_by_problems_interval`). The draws share their test problems, so that noise is in
    none of the spread between them and does not shrink with more draws: ``var(mean) =
    mean(se_test^2) + var(draw diffs) / k``, the draws x problems analogue of
    :func:`runs_by_problems_interval` (the mean of the draws' test variances bounds the variance of
    their mean, so this is conservative). Treating each draw's whole se as independent (HKSJ)
    would shrink the problems' part by 1/k. Satterthwaite's degrees of freedom (rounded down) set
    the t quantile; ``ci95`` is hulled with the t-interval over the draws. One draw: ``ci95`` None
    and ``reason``.

    Returns ``diff`` (the mean), ``ci95``, ``k``, ``se``, ``se_test``, ``se_draws``, ``df``, ``sd``
    and ``t_ci95``."""
    k = len(diffs)
    if k == 0 or len(ses_test) != k:
        raise ValueError(f"draws_sharing_problems_interval needs one se_test per draw, got {k} diffs and {len(ses_test)}")
    if n < 2:
        raise ValueError(f"draws_sharing_problems_interval needs at least 2 test problems, got n={n}")
    d = [float(x) for x in diffs]
    mean = math.fsum(d) / k
    var_test = math.fsum(float(s) ** 2 for s in ses_test) / k
    out: dict = {"diff": mean, "k": k, "se_test": math.sqrt(var_test)}
    if k == 1:
        out.update(ci95=None, se=None, se_draws=None, df=None, sd=None, t_ci95=None,
                   reason="one data draw: no draw-level interval (the spread of draws is unknown)")
        return out
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (k - 1))
    var_draws = sd ** 2 / k
    var = var_test + var_draws
    parts = var_test ** 2 / (n - 1) + var_draws ** 2 / (k - 1)
    df = var ** 2 / parts if parts > 0 else float(k - 1)
    h = t975(max(1, math.floor(df))) * math.sqrt(var)
    t_ci = t_interval(d)
    out.update(se=math.sqrt(var), se_draws=math.sqrt(var_draws), df=df, sd=sd, t_ci95=t_ci,
               ci95=[min(mean - h, t_ci[0]), max(mean + h, t_ci[1])])
    return out
