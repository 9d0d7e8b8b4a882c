"""Statistics behind every accuracy, interval and claim verdict of the pipeline.

Pure functions over plain sequences, no I/O; the report stage calls them on per-problem
correctness and per-example losses and writes their results to JSON, so everything returned is a
plain Python ``float``/``int``/``str`` and every interval (``ci95``) a 2-element list.

- :func:`wilson_interval`: 95 % interval of one accuracy k/n (Wilson score; unlike the normal
  interval it stays inside [0, 1] and is not degenerate at 0/n or n/n).
- :func:`mcnemar_exact`: exact two-sided McNemar p-value of two models on the same problems.
- :func:`paired_accuracy_diff`: accuracy difference of two models on the same problems, with a
  paired percentile bootstrap interval and McNemar's p.
- :func:`ratio_mean_ci` / :func:`ratio_diff_ci`: per-token mean loss of a set (a ratio of sums)
  and the difference between two independent sets, with bootstrap intervals over examples.
- :func:`paired_slope`: OLS slope of accuracy on a training level (e.g. the flawed fraction),
  with a bootstrap over problems shared by all levels.
- :func:`verdict_greater` / :func:`verdict_less` / :func:`verdict_equivalent`: turn an interval
  into "holds", "contradicted" or "inconclusive" for a claim.
- :func:`random_effects_difference`: combine one difference over several training runs, the run
  being the unit (Hartung-Knapp-Sidik-Jonkman, never narrower than the t-interval over runs).
- :func:`pooled_difference`: the fixed-effect combination (test-problem noise only): secondary.

Bootstraps draw from ``numpy.random.Generator(PCG64(seed))`` and are vectorised; for a given seed
the result is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np

# The 97.5 % quantile of the standard normal, so that "95 %" means the same thing everywhere.
Z95 = 1.959963984540054

HOLDS = "holds"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"

# Upper bound on the number of resampled indices held in memory at once (int64: 32 MB). The
# bootstrap runs in chunks of resamples so that large sets do not need an n_boot x n matrix.
_MAX_CELLS = 4_000_000


# --------------------------------------------------------------------------- single proportions


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the binomial proportion ``k / n`` (95 % for the default ``z``).

    ``n == 0`` carries no information and yields the whole range ``(0.0, 1.0)``.
    """
    if n < 0 or not 0 <= k <= n:
        raise ValueError(f"wilson_interval needs 0 <= k <= n, got k={k}, n={n}")
    if not z > 0:
        raise ValueError(f"wilson_interval needs z > 0, got z={z}")
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    # At k == 0 (k == n) the lower (upper) bound is exactly 0 (1), which rounding can miss by an ulp.
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return (float(lo), float(hi))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for the discordant counts ``b`` and ``c``.

    Under the null each discordant problem is equally likely to go either way, so
    ``min(b, c) ~ Binomial(b + c, 1/2)`` and ``p = min(1, 2 * P(X <= min(b, c)))``. Up to
    ``b + c = 20000`` the tail is summed in exact integer arithmetic and only the final quotient is
    rounded; above that, the big-integer sum costs O(n^2) bit operations (0.7 s at n = 10^5), so the
    tail is summed in log space instead (relative error ~1e-10, never overflowing).
    """
    if b < 0 or c < 0:
        raise ValueError(f"mcnemar_exact needs non-negative counts, got b={b}, c={c}")
    n = b + c
    m = min(b, c)
    # 2 * P(X <= n/2) >= 1 for a symmetric binomial, so the balanced case needs no sum.
    if n == 0 or 2 * m >= n:
        return 1.0
    if n <= _EXACT_MAX_N:
        return float(min(1.0, 2 * _binom_half_cdf_exact(m, n)))
    return float(min(1.0, math.exp(math.log(2.0) + _binom_half_log_cdf(m, n))))


# Largest n = b + c for which McNemar's tail is summed with exact integers (about 30 ms there).
_EXACT_MAX_N = 20_000


def _binom_half_cdf_exact(m: int, n: int) -> float:
    """P(X <= m) for X ~ Binomial(n, 1/2), summed exactly; only the final division rounds."""
    term = 1  # comb(n, 0); the recurrence C(n, i+1) = C(n, i) (n - i) / (i + 1) stays exact
    tail = 1
    for i in range(m):
        term = term * (n - i) // (i + 1)
        tail += term
    # int / int is correctly rounded even for huge operands; it may underflow to 0.0, never inf.
    return tail / (1 << n)


def _binom_half_log_cdf(m: int, n: int) -> float:
    """log P(X <= m) for X ~ Binomial(n, 1/2) with m < n/2, in floats that cannot overflow.

    Factor out the largest term C(n, m) / 2^n (its log from lgamma) and sum the others relative to
    it, walking down from i = m; they shrink geometrically, so the walk stops once they no longer
    change the sum.
    """
    log_top = math.lgamma(n + 1) - math.lgamma(m + 1) - math.lgamma(n - m + 1) - n * math.log(2.0)
    rel = 1.0
    total = 1.0
    for i in range(m, 0, -1):
        rel *= i / (n - i + 1)  # C(n, i - 1) / C(n, i)
        total += rel
        if rel < 1e-17 * total:
            break
    return log_top + math.log(total)


# --------------------------------------------------------------------------- bootstrap core


def _check_n_boot(n_boot: int) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")


def _resample_chunks(rng: np.random.Generator, n: int, n_boot: int) -> Iterator[np.ndarray]:
    """Yield index matrices (rows = resamples of ``range(n)`` with replacement) totalling n_boot rows."""
    rows = max(1, _MAX_CELLS // n)
    done = 0
    while done < n_boot:
        size = min(rows, n_boot - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """The mean of ``values`` over each of ``n_boot`` resamples."""
    return np.concatenate(
        [values[idx].mean(axis=1) for idx in _resample_chunks(rng, len(values), n_boot)]
    )


def _bootstrap_ratios(
    num: np.ndarray, den: np.ndarray, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    """``sum(num) / sum(den)`` over each of ``n_boot`` resamples of the examples (NaN if the
    resample's denominator is 0, which only examples with zero tokens make possible)."""
    out = []
    for idx in _resample_chunks(rng, len(num), n_boot):
        d = den[idx].sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(d > 0, num[idx].sum(axis=1) / d, np.nan))
    return np.concatenate(out)


def _percentile_ci(boot: np.ndarray) -> list[float]:
    # nanpercentile: resamples without a defined value (zero-token ratio) carry no information.
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return [float(lo), float(hi)]


def _rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


# --------------------------------------------------------------------------- paired accuracy


def _as_bools(x: Sequence[bool], name: str) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of booleans, got shape {arr.shape}")
    return arr.astype(bool)


def newcombe_paired_interval(both: int, a_only: int, b_only: int, neither: int,
                             z: float = 1.959963984540054) -> list[float]:
    """95 % interval of ``acc_b - acc_a`` for paired binary outcomes: Newcombe's hybrid score
    method (method 10 of Newcombe 1998, *Stat Med* 17:2635), built from the Wilson intervals of
    the two accuracies and their correlation.

    Unlike a bootstrap it does not collapse to ``[0, 0]`` when no problem is discordant: 0 of 12
    discordant problems is weak evidence, 0 of 200 strong, and the interval says so.
    """
    n = both + a_only + b_only + neither
    if n <= 0 or min(both, a_only, b_only, neither) < 0:
        raise ValueError(f"newcombe_paired_interval needs non-negative counts with n >= 1, got "
                         f"{(both, a_only, b_only, neither)}")
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = wilson_interval(both + a_only, n, z)
    l2, u2 = wilson_interval(both + b_only, n, z)
    den = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    phi = (both * neither - a_only * b_only) / math.sqrt(den) if den > 0 else 0.0
    # interval of d = p1 - p2, then mirrored to b - a
    dl = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    du = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    d = p1 - p2
    return [float(max(-1.0, -(d + du))), float(min(1.0, -(d - dl)))]


def paired_accuracy_diff(
    a: Sequence[bool], b: Sequence[bool], *, n_boot: int = 10000, seed: int = 0, method: str = "newcombe"
) -> dict:
    """Accuracy difference ``acc_b - acc_a`` of two models scored on the same problems, in order.

    ``ci95`` is, by default, Newcombe's paired score interval (:func:`newcombe_paired_interval`);
    ``method="bootstrap"`` gives a paired percentile bootstrap instead (one resample of problem
    indices applied to both models; seeded by ``seed``, ``n_boot`` resamples), which collapses to
    ``[0, 0]`` when the two models agree on every problem. ``a_only``/``b_only`` are the
    discordant counts (a right and b wrong, and the reverse), ``p_mcnemar`` the exact test on them.
    """
    if method not in ("newcombe", "bootstrap"):
        raise ValueError(f"method must be 'newcombe' or 'bootstrap', got {method!r}")
    _check_n_boot(n_boot)
    xa, xb = _as_bools(a, "a"), _as_bools(b, "b")
    if len(xa) != len(xb):
        raise ValueError(
            f"a and b must score the same problems: len(a)={len(xa)} != len(b)={len(xb)}"
        )
    if len(xa) == 0:
        raise ValueError("paired_accuracy_diff needs at least one problem")
    n = len(xa)
    d = xb.astype(np.float64) - xa.astype(np.float64)
    a_only = int(np.sum(xa & ~xb))
    b_only = int(np.sum(xb & ~xa))
    both = int(np.sum(xa & xb))
    if method == "bootstrap":
        ci = _percentile_ci(_bootstrap_means(d, n_boot, _rng(seed)))
    else:
        ci = newcombe_paired_interval(both, a_only, b_only, n - both - a_only - b_only)
    acc_a, acc_b = float(xa.mean()), float(xb.mean())
    return {
        "n": n,
        "acc_a": acc_a,
        "acc_b": acc_b,
        "diff": float(d.mean()),
        "ci95": ci,
        "ci_method": method,
        "a_only": a_only,
        "b_only": b_only,
        "p_mcnemar": mcnemar_exact(a_only, b_only),
    }


# --------------------------------------------------------------------------- per-token mean loss


def _ratio_arrays(
    num: Sequence[float], den: Sequence[float], name: str
) -> tuple[np.ndarray, np.ndarray]:
    xn = np.asarray(num, dtype=np.float64)
    xd = np.asarray(den, dtype=np.float64)
    if xn.ndim != 1 or xd.ndim != 1 or len(xn) != len(xd):
        raise ValueError(
            f"{name}: num and den must be 1-D and of equal length, got {xn.shape} and {xd.shape}"
        )
    if len(xn) == 0:
        raise ValueError(f"{name}: needs at least one example")
    if not (np.all(np.isfinite(xn)) and np.all(np.isfinite(xd))):
        raise ValueError(f"{name}: num and den must be finite")
    if np.any(xd < 0) or xd.sum() <= 0:
        raise ValueError(f"{name}: token counts (den) must be >= 0 with a positive total")
    return xn, xd


def ratio_mean_ci(
    num: Sequence[float], den: Sequence[float], *, n_boot: int = 10000, seed: int = 0
) -> dict:
    """Per-token mean ``sum(num) / sum(den)`` of a set, with a bootstrap interval over examples.

    ``num[i]`` is example i's summed NLL and ``den[i]`` its token count. The example (not the
    token) is the resampling unit because tokens of one completion are not independent.
    """
    _check_n_boot(n_boot)
    xn, xd = _ratio_arrays(num, den, "ratio_mean_ci")
    boot = _bootstrap_ratios(xn, xd, n_boot, _rng(seed))
    return {"mean": float(xn.sum() / xd.sum()), "ci95": _percentile_ci(boot), "n": len(xn)}


def ratio_diff_ci(
    num_a: Sequence[float],
    den_a: Sequence[float],
    num_b: Sequence[float],
    den_b: Sequence[float],
    *,
    n_boot: int = 10000,
    seed: int = 0,
) -> dict:
    """Difference ``mean_a - mean_b`` of the per-token means of two independent sets.

    Each set is resampled on its own (the sets share no examples, so there is nothing to pair).
    """
    _check_n_boot(n_boot)
    na, da = _ratio_arrays(num_a, den_a, "ratio_diff_ci (set a)")
    nb, db = _ratio_arrays(num_b, den_b, "ratio_diff_ci (set b)")
    rng = _rng(seed)
    boot = _bootstrap_ratios(na, da, n_boot, rng) - _bootstrap_ratios(nb, db, n_boot, rng)
    mean_a, mean_b = float(na.sum() / da.sum()), float(nb.sum() / db.sum())
    return {
        "diff": mean_a - mean_b,
        "ci95": _percentile_ci(boot),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "n_a": len(na),
        "n_b": len(nb),
    }


# --------------------------------------------------------------------------- dose-response slope


def paired_slope(
    correct: Sequence[Sequence[bool]], xs: Sequence[float], *, n_boot: int = 10000, seed: int = 0
) -> dict:
    """OLS slope of accuracy on ``xs``, where ``correct[i][j]`` says whether the model trained at
    level ``xs[i]`` solved test problem ``j`` (the same problems at every level).

    The slope is linear in the accuracies, ``slope = sum_i w_i acc_i`` with
    ``w_i = (x_i - mean x) / sum (x - mean x)^2``, hence the mean over problems of the per-problem
    contrast ``s_j = sum_i w_i correct[i][j]``. Bootstrapping that mean resamples problems once
    for all levels (the pairing) at the cost of one vector.
    """
    _check_n_boot(n_boot)
    table = np.asarray(correct)
    x = np.asarray(xs, dtype=np.float64)
    if table.ndim != 2:
        raise ValueError(f"correct must be a levels x problems table, got shape {table.shape}")
    if x.ndim != 1 or len(x) != table.shape[0]:
        raise ValueError(
            f"xs must give one level per row of correct: {len(x)} levels for {table.shape[0]} rows"
        )
    if len(np.unique(x)) < 2:
        raise ValueError(f"paired_slope needs at least 2 distinct xs, got {x.tolist()}")
    if table.shape[1] == 0:
        raise ValueError("paired_slope needs at least one problem")
    table = table.astype(np.float64)
    centred = x - x.mean()
    w = centred / np.sum(centred**2)
    contrast = w @ table
    boot = _bootstrap_means(contrast, n_boot, _rng(seed))
    return {
        "slope": float(contrast.mean()),
        "ci95": _percentile_ci(boot),
        "accuracies": [float(v) for v in table.mean(axis=1)],
        "xs": [float(v) for v in x],
        "n": int(table.shape[1]),
    }


# --------------------------------------------------------------------------- verdicts


def _bounds(ci95: Sequence[float]) -> tuple[float, float]:
    if len(ci95) != 2:
        raise ValueError(f"ci95 must be [lo, hi], got {list(ci95)}")
    lo, hi = float(ci95[0]), float(ci95[1])
    if lo > hi:
        raise ValueError(f"ci95 must have lo <= hi, got {list(ci95)}")
    return lo, hi


def verdict_greater(ci95: Sequence[float]) -> str:
    """Verdict on the claim "the difference is > 0": the interval must exclude 0 on the right side."""
    lo, hi = _bounds(ci95)
    if lo > 0:
        return HOLDS
    if hi < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def verdict_less(ci95: Sequence[float]) -> str:
    """Verdict on the claim "the difference is < 0" (the mirror of :func:`verdict_greater`)."""
    lo, hi = _bounds(ci95)
    if hi < 0:
        return HOLDS
    if lo > 0:
        return CONTRADICTED
    return INCONCLUSIVE


def verdict_equivalent(ci95: Sequence[float], margin: float) -> str:
    """Verdict on the claim "the difference is within +-margin of 0".

    Absence of a significant difference is not equivalence: the claim holds only when the whole
    interval lies inside the margin, and is contradicted only when the whole interval lies outside.
    """
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    lo, hi = _bounds(ci95)
    if -margin <= lo and hi <= margin:
        return HOLDS
    if hi < -margin or lo > margin:
        return CONTRADICTED
    return INCONCLUSIVE


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
    bounds = [_bounds(ci) for ci in cis]
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


# --------------------------------------------------------------------------- runs as the unit

# The 97.5 % quantile of Student's t for 1..30 degrees of freedom (beyond: Cornish-Fisher from Z95).
_T975 = (12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851,
         2.364624252, 2.306004135, 2.262157163, 2.228138852, 2.200985160, 2.178812830,
         2.160368656, 2.144786688, 2.131449546, 2.119905299, 2.109815578, 2.100922040,
         2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
         2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (exact to 1e-9 up to
    30; above, the Cornish-Fisher expansion, off by < 1e-6)."""
    if df < 1:
        raise ValueError(f"t975 needs df >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, v = Z95, float(df)
    return (z + (z**3 + z) / (4 * v) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * v**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * v**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * v**4))


def t_interval(values: Sequence[float]) -> list[float] | None:
    """95 % t-interval of the mean of ``values`` (sample sd, ddof 1); None for fewer than 2."""
    k = len(values)
    if k < 2:
        return None
    m = math.fsum(values) / k
    sd = math.sqrt(math.fsum((x - m) ** 2 for x in values) / (k - 1))
    h = t975(k - 1) * sd / math.sqrt(k)
    return [float(m - h), float(m + h)]


def ci_se(ci95: Sequence[float]) -> float:
    """The standard error a 95 % interval stands for (half-width / 1.96; an asymmetric
    bootstrap interval is averaged over its two sides)."""
    lo, hi = _bounds(ci95)
    return (hi - lo) / 2 / Z95


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
