"""Two models scored on the same problems: the exact McNemar test on their discordant counts,
Newcombe's paired score interval of their accuracy difference, and :func:`paired_accuracy_diff`
(the difference with its interval, a paired bootstrap on request, and McNemar's p).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from cotshape.core.bootstrap import bootstrap_means, check_n_boot, percentile_ci, seeded_rng
from cotshape.core.stats import wilson_interval

# --------------------------------------------------------------------------- exact McNemar


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
        return float(min(1.0, 2 * binom_half_cdf_exact(m, n)))
    return float(min(1.0, math.exp(math.log(2.0) + binom_half_log_cdf(m, n))))


# Largest n = b + c for which McNemar's tail is summed with exact integers (about 30 ms there).
_EXACT_MAX_N = 20_000


def binom_half_cdf_exact(m: int, n: int) -> float:
    """P(X <= m) for X ~ Binomial(n, 1/2), summed exactly; only the final division rounds."""
    term = 1  # comb(n, 0); the recurrence C(n, i+1) = C(n, i) (n - i) / (i + 1) stays exact
    tail = 1
    for i in range(m):
        term = term * (n - i) // (i + 1)
        tail += term
    # int / int is correctly rounded even for huge operands; it may underflow to 0.0, never inf.
    return tail / (1 << n)


def binom_half_log_cdf(m: int, n: int) -> float:
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
    check_n_boot(n_boot)
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
        ci = percentile_ci(bootstrap_means(d, n_boot, seeded_rng(seed)))
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
