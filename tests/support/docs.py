"""The Python code blocks of the project's Markdown files, so tests can run them as written."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["ROOT", "python_blocks"]

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_HEADING = re.compile(r"^(#{2,3}) (.+)$", re.M)


def python_blocks(relative: str, *, section: str | None = None) -> list[tuple[str, str]]:
    """``(heading, code)`` of each ```python block of the file, in order.

    ``heading`` is the nearest ``##``/``###`` heading above the block. With
    ``section``, only blocks under the ``##`` heading that starts with it.
    """
    text = (ROOT / relative).read_text(encoding="utf-8")
    headings = [(m.start(), len(m.group(1)), m.group(2).strip()) for m in _HEADING.finditer(text)]
    found: list[tuple[str, str]] = []
    for match in _BLOCK.finditer(text):
        above = [h for h in headings if h[0] < match.start()]
        nearest = above[-1][2] if above else ""
        top = next((title for _, level, title in reversed(above) if level == 2), "")
        if section is None or top.startswith(section):
            found.append((nearest, match.group(1)))
    return found
