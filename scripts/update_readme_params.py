"""Regenerate the params table of README.md from the validated params dataclasses."""

from __future__ import annotations

import re
from pathlib import Path

from cotshape.core.config import describe

readme = Path(__file__).resolve().parents[1] / "README.md"
text = readme.read_text()
new = re.sub(r"(<!-- params-table -->\n).*?(<!-- /params-table -->)",
             lambda m: m.group(1) + describe() + m.group(2), text, flags=re.S)
readme.write_text(new)
