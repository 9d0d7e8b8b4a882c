"""The basic statistics behind every accuracy, interval and claim verdict of the pipeline.

Pure functions over plain sequences, no I/O; the report stage calls them on per-problem
correctness and per-example losses and writes their results to JSON, so everything returned is a
plain Python ``float``/``int``/``str`` and every interval (``ci95``) a 2-element list.

- :func:`wilson_interval`: 95 % interval of one accuracy k/n (Wilson score; unlike the normal
  interval it stays inside [0, 1] and is not degenerate at 0/n or n/n).
- :func:`verdict_greater` / :func:`verdict_less` / :func:`verdict_equivalent`: turn an interval
  into "holds", "contradicted" or "inconclusive" for a claim.
- :func:`t975`, :func:`t_interval`, :func:`ci_se`: Student's t quantile, the t-interval of a mean,
  and the standard error an interval stands for.

The rest, by job: two models on the same problems (McNemar, Newcombe, the paired accuracy
difference) in :mod:`cotshape.core.paired_tests`; seeded bootstraps (per-token mean loss, the
dose-response slope) in :mod:`cotshape.core.bootstrap`; one difference over several training runs
(random effects, variance components) in :mod:`cotshape.core.random_effects`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# The 97.5 % quantile of the standard normal, so that "95 %" means the same thing everywhere.
Z95 = 1.959963984540054

HOLDS = "holds"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"


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


# --------------------------------------------------------------------------- verdicts


def ci_bounds(ci95: Sequence[float]) -> tuple[float, float]:
    """``(lo, hi)`` of an interval as floats; not two numbers, or ``lo > hi``: ValueError."""
    if len(ci95) != 2:
        raise ValueError(f"ci95 must be [lo, hi], got {list(ci95)}")
    lo, hi = float(ci95[0]), float(ci95[1])
    if lo > hi:
        raise ValueError(f"ci95 must have lo <= hi, got {list(ci95)}")
    return lo, hi


def verdict_greater(ci95: Sequence[float]) -> str:
    """Verdict on the claim "the difference is > 0": the interval must exclude 0 on the right side."""
    lo, hi = ci_bounds(ci95)
    if lo > 0:
        return HOLDS
    if hi < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def verdict_less(ci95: Sequence[float]) -> str:
    """Verdict on the claim "the difference is < 0" (the mirror of :func:`verdict_greater`)."""
    lo, hi = ci_bounds(ci95)
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
    lo, hi = ci_bounds(ci95)
    if -margin <= lo and hi <= margin:
        return HOLDS
    if hi < -margin or lo > margin:
        return CONTRADICTED
    return INCONCLUSIVE


# --------------------------------------------------------------------------- t quantiles and intervals


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
    lo, hi = ci_bounds(ci95)
    return (hi - lo) / 2 / Z95
