"""Seeded, vectorised bootstrap intervals: the resampling core, the per-token mean loss of a set
and the difference of two sets (a ratio of sums, the example as the unit), and the OLS slope of
accuracy on a training level (the problems resampled once for all levels).

Bootstraps draw from ``numpy.random.Generator(PCG64(seed))``; for a given seed the result is
deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

# Upper bound on the number of resampled indices held in memory at once (int64: 32 MB). The
# bootstrap runs in chunks of resamples so that large sets do not need an n_boot x n matrix.
_MAX_CELLS = 4_000_000


# --------------------------------------------------------------------------- bootstrap core


def check_n_boot(n_boot: int) -> None:
    """ValueError unless ``n_boot >= 1``."""
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


def bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
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


def percentile_ci(boot: np.ndarray) -> list[float]:
    """The 2.5 and 97.5 percentiles of the resampled values, as ``[lo, hi]``."""
    # nanpercentile: resamples without a defined value (zero-token ratio) carry no information.
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return [float(lo), float(hi)]


def seeded_rng(seed: int) -> np.random.Generator:
    """``numpy.random.Generator(PCG64(seed))``: the one generator every bootstrap draws from."""
    return np.random.Generator(np.random.PCG64(seed))


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
    check_n_boot(n_boot)
    xn, xd = _ratio_arrays(num, den, "ratio_mean_ci")
    boot = _bootstrap_ratios(xn, xd, n_boot, seeded_rng(seed))
    return {"mean": float(xn.sum() / xd.sum()), "ci95": percentile_ci(boot), "n": len(xn)}


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
    check_n_boot(n_boot)
    na, da = _ratio_arrays(num_a, den_a, "ratio_diff_ci (set a)")
    nb, db = _ratio_arrays(num_b, den_b, "ratio_diff_ci (set b)")
    rng = seeded_rng(seed)
    boot = _bootstrap_ratios(na, da, n_boot, rng) - _bootstrap_ratios(nb, db, n_boot, rng)
    mean_a, mean_b = float(na.sum() / da.sum()), float(nb.sum() / db.sum())
    return {
        "diff": mean_a - mean_b,
        "ci95": percentile_ci(boot),
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
    check_n_boot(n_boot)
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
    boot = bootstrap_means(contrast, n_boot, seeded_rng(seed))
    return {
        "slope": float(contrast.mean()),
        "ci95": percentile_ci(boot),
        "accuracies": [float(v) for v in table.mean(axis=1)],
        "xs": [float(v) for v in x],
        "n": int(table.shape[1]),
    }
