"""The activity chart: events per hour or day by action, as SVG drawn on the server.

Stacked bars, one per bucket, one colour per action (the six busiest; the
rest as "other"), a y axis with round steps, a few dates along the x axis
and a legend. Each bar has a ``<title>`` (the browser shows it on hover)
with its counts, so the figures are there without JavaScript. Colours are
SVG attributes, not styles, so the page's Content-Security-Policy needs no
inline styles. Every text is escaped.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta

from ..store import ActivityCount
from ._html import Safe, join, render

__all__ = ["draw"]

_COLOURS = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377")
_OTHER_COLOUR = "#bbbbbb"
_WIDTH, _HEIGHT = 960, 240
_LEFT, _RIGHT, _TOP, _BOTTOM = 56, 12, 12, 64
_PLOT_W, _PLOT_H = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM


def _nice_ceiling(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


def _n(value: float) -> str:
    return f"{value:.1f}"


def _label(when: datetime, unit: str) -> str:
    return when.strftime("%d %b %H:00") if unit == "hour" else when.strftime("%d %b")


def draw(
    counts: Sequence[ActivityCount], *, unit: str, first: datetime, buckets: int, title: str
) -> Safe:
    """The chart of ``counts`` over ``buckets`` hours or days from ``first``."""
    step = timedelta(hours=1) if unit == "hour" else timedelta(days=1)
    totals: dict[str, int] = defaultdict(int)
    for count in counts:
        totals[count.action] += count.events
    ranked = sorted(totals, key=lambda action: (-totals[action], action))
    shown = ranked[: len(_COLOURS)] if len(ranked) <= len(_COLOURS) else ranked[: len(_COLOURS) - 1]
    series = [*shown, "other"] if len(ranked) > len(shown) else shown
    colour = {name: _COLOURS[i] for i, name in enumerate(shown)} | {"other": _OTHER_COLOUR}
    grid: list[dict[str, int]] = [defaultdict(int) for _ in range(buckets)]
    for count in counts:
        index = round((count.bucket - first) / step)
        if 0 <= index < buckets:
            grid[index][count.action if count.action in colour else "other"] += count.events
    highest = max((sum(bar.values()) for bar in grid), default=0)
    peak = 4 * _nice_ceiling(-(-highest // 4))  # four round steps up the y axis
    parts: list[Safe] = [render(
        '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" role="img" '
        'aria-label="{title}" class="chart"><title>{title}</title>',
        w=_WIDTH, h=_HEIGHT, title=title,
    )]
    for i in range(5):  # the y axis: 0, 1/4, ... of the round peak
        value = peak * i // 4
        y = _TOP + _PLOT_H - _PLOT_H * i / 4
        parts.append(render(
            '<line x1="{x1}" x2="{x2}" y1="{y}" y2="{y}" stroke="#dddddd"/>'
            '<text x="{tx}" y="{ty}" text-anchor="end" font-size="11" fill="#555555">'
            "{value}</text>",
            x1=_LEFT, x2=_WIDTH - _RIGHT, y=_n(y), tx=_LEFT - 6, ty=_n(y + 4), value=f"{value:,}",
        ))
    slot = _PLOT_W / max(buckets, 1)
    bar_w = max(slot * 0.8, 1.0)
    for index, bar in enumerate(grid):
        total = sum(bar.values())
        if not total:
            continue
        when = first + step * index
        x = _LEFT + slot * index + (slot - bar_w) / 2
        detail = ", ".join(f"{name} {bar[name]:,}" for name in series if bar.get(name))
        pieces: list[Safe] = [render(
            "<title>{label}: {total} events ({detail})</title>",
            label=when.strftime("%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d"),
            total=f"{total:,}", detail=detail,
        )]
        y = _TOP + _PLOT_H
        for name in series:
            events = bar.get(name, 0)
            if not events:
                continue
            height = _PLOT_H * events / peak
            y -= height
            pieces.append(render(
                '<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{fill}"/>',
                x=_n(x), y=_n(y), w=_n(bar_w), h=_n(max(height, 0.5)), fill=colour[name],
            ))
        parts.append(render('<g class="bar">{pieces}</g>', pieces=join(pieces)))
    labels = min(buckets, 8)
    for n in range(labels):
        index = round(n * (buckets - 1) / max(labels - 1, 1))
        x = _LEFT + slot * index + slot / 2
        anchor = "middle" if 0 < n < labels - 1 or labels == 1 else ("start" if n == 0 else "end")
        if anchor != "middle":
            x = _LEFT + slot * index if n == 0 else _LEFT + slot * (index + 1)
        parts.append(render(
            '<text x="{x}" y="{y}" text-anchor="{anchor}" font-size="11" fill="#555555">'
            "{label}</text>",
            x=_n(x), y=_TOP + _PLOT_H + 16, anchor=anchor,
            label=_label(first + step * index, unit),
        ))
    x = float(_LEFT)
    for name in series:
        parts.append(render(
            '<rect x="{x}" y="{y}" width="10" height="10" fill="{fill}"/>'
            '<text x="{tx}" y="{ty}" font-size="12" fill="#222222">{name}</text>',
            x=_n(x), y=_HEIGHT - 22, fill=colour[name], tx=_n(x + 14), ty=_HEIGHT - 13,
            name=name if len(name) <= 40 else name[:39] + "…",
        ))
        x += 24 + 7.2 * min(len(name), 40)
    if not counts:
        parts.append(render(
            '<text x="{x}" y="{y}" text-anchor="middle" font-size="13" fill="#555555">'
            "no events in this range</text>",
            x=_LEFT + _PLOT_W // 2, y=_TOP + _PLOT_H // 2,
        ))
    parts.append(Safe("</svg>"))
    return join(parts)
