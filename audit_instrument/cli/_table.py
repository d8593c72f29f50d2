"""The readable table of events: one row per event, before/after side by side.

Metadata pairs ``<field>_was`` / ``<field>`` (what ``@audit(snapshot=...)``
records) become one line ``field | before | after``; other metadata show as
``key | | value``. Values are cut to a width and control characters are
escaped, so an event can't garble the terminal.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ..event import AuditEvent, format_timestamp
from ..store import StoredEvent

__all__ = ["changes", "render", "show_value"]

_WAS = "_was"
_MAX_VALUE = 40
_MAX_CELL = 32


def _clean(text: str, limit: int) -> str:
    out = []
    for char in text:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            char = char.encode("unicode_escape").decode("ascii")
        out.append(char)
    cleaned = "".join(out)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 3] + "..."


def show_value(value: Any, limit: int = _MAX_VALUE) -> str:
    """One metadata value as table text."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, datetime):
        text = format_timestamp(value)
    elif isinstance(value, Mapping):
        text = json.dumps(
            {k: format_timestamp(v) if isinstance(v, datetime) else v for k, v in value.items()},
            ensure_ascii=False,
        )
    else:
        text = str(value)
    return _clean(text, limit)


def changes(metadata: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(field, before, after)`` lines for an event's metadata, in key order."""
    lines: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    for key in metadata:
        field = key[: -len(_WAS)] if key.endswith(_WAS) else key
        if field in seen:
            continue
        seen.add(field)
        paired = key.endswith(_WAS) or (field + _WAS) in metadata
        before = metadata.get(field + _WAS) if paired else None
        after = metadata.get(field)
        lines.append(
            (
                _clean(field, _MAX_CELL),
                "" if before is None else show_value(before),
                "" if after is None else show_value(after),
            )
        )
    return lines


def _when(event: AuditEvent) -> str:
    return event.occurred_at.strftime("%Y-%m-%d %H:%M:%S")


def render(items: Iterable[StoredEvent]) -> str:
    """The events as an aligned text table (no trailing newline)."""
    stored = list(items)
    groups = {item.event.group for item in stored}
    headers = ["#", "WHEN (UTC)"]
    if len(groups) > 1:
        headers.append("GROUP")
    headers += ["ACTOR", "ACTION", "TARGET", "FIELD", "BEFORE", "AFTER"]
    rows: list[list[str]] = []
    for item in stored:
        event = item.event
        cells = [str(item.seq), _when(event)]
        if len(groups) > 1:
            cells.append(_clean(event.group, _MAX_CELL))
        cells += [
            _clean(event.actor_name, _MAX_CELL),
            _clean(event.action, _MAX_CELL),
            _clean(event.target_id, _MAX_CELL),
        ]
        lines = changes(event.metadata) or [("", "", "")]
        rows.append(cells + list(lines[0]))
        blank = [""] * len(cells)
        rows.extend(blank + list(line) for line in lines[1:])
    return _align(headers, rows)


def _align(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = []
    for row in (headers, *rows):
        cells = [
            cell.rjust(width) if i == 0 else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
