"""What the report and the comparison print alike: the placeholders, numbers as percentages,
decimals and counts, and the Markdown table.

Both write GitHub-flavoured Markdown; a cell with no value is :data:`DASH`, a set whose stage ran
with nothing to do (an empty training set, recorded as ``{"skipped": 1}``) is :data:`NA`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

#: a value that has not been produced
DASH = "—"
#: a set whose stage ran but had nothing to do (an empty training set)
NA = "n/a"


def number(x: Any) -> float | None:
    """A finite number, or None (missing, non-numeric or NaN values are gaps, not zeros)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def pct(x: Any) -> str:
    """A fraction as a percentage with its unit, ``12.5 %``; :data:`DASH` for a gap (:func:`number`)."""
    v = number(x)
    return DASH if v is None else f"{100 * v:.1f} %"


def pct_value(x: float | None) -> str:
    """A fraction as a bare percentage, ``12.5``, for a table whose header names the unit;
    :data:`DASH` for None."""
    return DASH if x is None else f"{100 * x:.1f}"


def decimal(x: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals; :data:`DASH` for a gap."""
    v = number(x)
    return DASH if v is None else f"{v:.{digits}f}"


def count(x: Any) -> str:
    """A number as an integer; :data:`DASH` for a gap."""
    v = number(x)
    return DASH if v is None else f"{int(v):d}"


def pct_interval(m: dict[str, Any] | None) -> str:
    """The 95 % interval ``ci95`` of a metrics object in percent, ``[20.0, 31.0]``; :data:`DASH`
    without one."""
    ci = (m or {}).get("ci95")
    if not isinstance(ci, list) or len(ci) != 2:
        return DASH
    return f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def paired_points(d: dict[str, Any] | None) -> str:
    """A paired difference as ``+3.0 pts [-2.5, +8.5]`` (the interval over the training runs;
    one run: no interval); :data:`DASH` without one."""
    if not d:
        return DASH
    if not d.get("ci95"):
        return f"{100 * d['diff']:+.1f} pts (1 run: no interval)"
    lo, hi = d["ci95"]
    return f"{100 * d['diff']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub-flavoured Markdown table; ``align`` is one of l/r per column (default: first
    column left, the rest right, because they hold numbers)."""
    align = align or "l" + "r" * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f"align {align!r} has {len(align)} columns, the header {len(header)}")
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
