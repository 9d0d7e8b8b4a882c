"""What the report and the comparison print alike: the placeholders and the Markdown table.

Both write GitHub-flavoured Markdown; a cell with no value is :data:`DASH`, a set whose stage ran
with nothing to do (an empty training set, recorded as ``{"skipped": 1}``) is :data:`NA`.
"""

from __future__ import annotations

from collections.abc import Sequence

#: a value that has not been produced
DASH = "—"
#: a set whose stage ran but had nothing to do (an empty training set)
NA = "n/a"


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
