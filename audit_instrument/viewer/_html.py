"""Markup that is escaped by construction.

Pages are built from literal templates filled by :func:`render`, which
escapes every value (``& < > " '``) unless it is :class:`Safe` — markup
that :func:`render` itself produced. So a value from the store (an actor
name, a target, metadata) can only ever land in a page as text, inside an
element or a quoted attribute, never as markup.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from urllib.parse import urlencode

__all__ = ["Safe", "esc", "join", "query_string", "render"]


class Safe(str):
    """Text that is already markup (made by :func:`render`, :func:`esc` or :func:`join`)."""

    __slots__ = ()


def esc(value: object) -> Safe:
    """``value`` as text, escaped for an element or a quoted attribute."""
    if isinstance(value, Safe):
        return value
    return Safe(html.escape(str(value), quote=True))


def render(template: str, /, **values: object) -> Safe:
    """``template`` (a literal in this package) with ``{name}`` filled by escaped ``values``."""
    return Safe(template.format_map({name: esc(value) for name, value in values.items()}))


def join(parts: Iterable[Safe], separator: str = "") -> Safe:
    """Pieces of markup, one after the other."""
    return Safe(separator.join(esc(part) for part in parts))


def query_string(params: dict[str, str | None]) -> str:
    """``?a=1&b=2`` of the parameters that are set ("" when none)."""
    kept = {name: value for name, value in params.items() if value}
    return "?" + urlencode(kept) if kept else ""
