"""The viewer's HTML pages: the event list, one event, the chain status, errors.

Plain server-rendered HTML with one stylesheet served by the viewer
itself; links, the filter form and paging work without JavaScript. Every
value goes through :func:`~._html.render`, so it is escaped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..event import AuditEvent, format_timestamp
from ..store import StoredEvent
from ._chain import ChainView
from ._html import Safe, join, query_string, render

__all__ = ["ListView", "chain_badge", "changes", "chain_page", "error_page", "event_page",
           "list_page", "show_value"]

_WAS = "_was"
_CELL = 80
FILTERS = ("actor", "action", "target", "group", "since", "until")


def show_value(value: object, limit: int | None = None) -> str:
    """A metadata value as text (cut to ``limit`` characters)."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, datetime):
        text = format_timestamp(value)
    elif isinstance(value, Mapping):
        text = json.dumps({k: show_value(v) if isinstance(v, datetime) else v
                           for k, v in value.items()}, ensure_ascii=False)
    else:
        text = str(value)
    if limit is not None and len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def changes(metadata: Mapping[str, Any], limit: int | None = None) -> list[tuple[str, str, str]]:
    """``(field, before, after)`` for metadata: ``<field>_was``/``<field>`` pairs become one
    line, other keys show their value as "after"."""
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
        lines.append((
            field,
            "" if before is None else show_value(before, limit),
            "" if after is None else show_value(after, limit),
        ))
    return lines


def _when(event: AuditEvent) -> str:
    return event.occurred_at.strftime("%Y-%m-%d %H:%M:%S")


def _ago(finished_at: float) -> str:
    seconds = max(0, int(time.time() - finished_at))
    if seconds < 60:
        return f"{seconds} s ago"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    return f"{seconds // 3600} h ago"


def layout(
    title: str, body: Safe, root: str, badge: Safe | None = None, head: Safe | None = None
) -> Safe:
    """A whole page."""
    return render(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        "<title>{title}</title>{head}"
        '<link rel="icon" href="{root}/favicon.svg" type="image/svg+xml">'
        '<link rel="stylesheet" href="{root}/viewer.css"></head><body>'
        '<header><a class="home" href="{root}/">Audit log</a>{badge}</header>'
        "<main>{body}</main></body></html>\n",
        title=title, root=root, badge=badge or "", body=body, head=head or "",
    )


def chain_badge(view: ChainView, root: str, *, everything: bool) -> Safe:
    """The chain's state in the header; store-wide figures only for callers who see it all."""
    if view.running:
        done = f" {view.checked / view.total:.0%}" if view.total else ""
        text, kind = f"chain: verifying…{done}", "running"
    elif view.error:
        text, kind = "chain: cannot verify" + (f" ({view.error})" if everything else ""), "bad"
    elif view.result is None:
        text, kind = "chain: not verified yet", "running"
    elif view.result.ok:
        rows = f", {view.result.rows:,} rows" if everything else ""
        when = f", checked {_ago(view.finished_at)}" if view.finished_at else ""
        text, kind = f"chain intact{rows}{when}", "ok"
    else:
        detail = f": {view.result}" if everything else ""
        text, kind = f"chain NOT intact{detail}", "bad"
    return render('<a class="badge {kind}" href="{root}/chain">{text}</a>',
                  kind=kind, root=root, text=text)


@dataclass(frozen=True, slots=True)
class ListView:
    """What the list page shows."""

    root: str
    filters: Mapping[str, str | None]
    items: Sequence[StoredEvent]
    next_cursor: str | None
    cursor: str | None
    limit: int
    groups: Sequence[str] | None  # the caller's groups, None: every group
    everything: bool
    chart: Safe
    chart_note: str
    error: str = ""


def _filter_form(view: ListView) -> Safe:
    fields: list[Safe] = []
    hints = {"since": "2026-01-31 or 7d", "until": "2026-02-01 or 1d"}
    for name in FILTERS:
        value = view.filters.get(name) or ""
        if name == "group" and view.groups is not None and len(view.groups) <= 50:
            options = [render('<option value="">all of yours</option>')]
            options += [render('<option value="{g}"{sel}>{g}</option>', g=g,
                               sel=Safe(" selected") if g == value else Safe(""))
                        for g in view.groups]
            control = render('<select id="f-group" name="group">{o}</select>', o=join(options))
        else:
            control = render(
                '<input id="f-{n}" name="{n}" value="{v}" placeholder="{p}" autocomplete="off">',
                n=name, v=value, p=hints.get(name, ""),
            )
        fields.append(render('<div class="field"><label for="f-{n}">{n}</label>{c}</div>',
                             n=name, c=control))
    return render(
        '<form class="filters" method="get" action="{root}/">{fields}'
        '<div class="field"><button type="submit">Filter</button></div>'
        '<div class="field"><a href="{root}/">Reset</a></div></form>',
        root=view.root, fields=join(fields),
    )


def _changes_cell(event: AuditEvent) -> Safe:
    lines = changes(event.metadata, _CELL)
    if not lines:
        return Safe("")
    rows = [render('<tr><th>{f}</th><td class="before">{b}</td><td class="arrow">→</td>'
                   '<td class="after">{n}</td></tr>', f=field, b=before, n=after)
            if before else
            render('<tr><th>{f}</th><td colspan="3">{n}</td></tr>', f=field, n=after)
            for field, before, after in lines]
    return render('<table class="changes">{rows}</table>', rows=join(rows))


def _targets(event: AuditEvent) -> Safe:
    return join((render('<span class="target" title="{name}">{id}</span>', id=t.id, name=t.name)
                 for t in event.targets), ", ")


def list_page(view: ListView, badge: Safe) -> Safe:
    """The events table with filters, chart, downloads and paging."""
    filters = {name: view.filters.get(name) for name in FILTERS}
    many_groups = view.groups is None or len(view.groups) > 1
    head = ["When (UTC)", "Actor", "Action", "Target", *(["Group"] if many_groups else []),
            "Before → after", "Location", ""]
    if view.everything:
        head.insert(0, "#")
    rows: list[Safe] = []
    for item in view.items:
        event = item.event
        link = render('<a href="{root}/event{q}">details</a>', root=view.root,
                      q=query_string({"id": event.idempotency_key}))
        cells = [
            render('<td class="when">{w}</td>', w=_when(event)),
            render('<td><span title="{id}">{name}</span></td>', id=event.actor_id,
                   name=event.actor_name),
            render('<td class="action">{a}</td>', a=event.action),
            render("<td>{t}</td>", t=_targets(event)),
            *([render("<td>{g}</td>", g=event.group)] if many_groups else []),
            render("<td>{c}</td>", c=_changes_cell(event)),
            render("<td>{loc}</td>", loc=event.location),
            render("<td>{link}</td>", link=link),
        ]
        if view.everything:
            cells.insert(0, render('<td class="seq">{s}</td>', s=item.seq))
        rows.append(render("<tr>{cells}</tr>", cells=join(cells)))
    if not rows:
        rows.append(render('<tr><td colspan="{n}" class="empty">no events match</td></tr>',
                           n=len(head)))
    paging = [render('<a href="{root}/{q}">Newest</a>', root=view.root,
                     q=query_string({**filters, "limit": _limit(view)}))] if view.cursor else []
    if view.next_cursor:
        paging.append(render('<a rel="next" href="{root}/{q}">Older →</a>', root=view.root,
                             q=query_string({**filters, "cursor": view.next_cursor,
                                             "limit": _limit(view)})))
    error = render('<p class="error" role="alert">{e}</p>', e=view.error) if view.error else ""
    body = render(
        "<h1>Audit log</h1>{form}{error}"
        '<section class="activity">{chart}<p class="note">{note}</p></section>'
        '<p class="downloads">Download these events: '
        '<a href="{root}/export.csv{q}" download>CSV</a> · '
        '<a href="{root}/export.jsonl{q}" download>JSON lines</a> · '
        '<a href="{root}/api/events{q}">JSON API</a></p>'
        '<table class="events"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        '<nav class="paging">{paging}</nav>',
        form=_filter_form(view), error=error, chart=view.chart, note=view.chart_note,
        root=view.root, q=query_string(filters),
        head=join(render("<th>{h}</th>", h=h) for h in head), rows=join(rows),
        paging=join(paging, " "),
    )
    return layout("Audit log", body, view.root, badge)


def _limit(view: ListView) -> str | None:
    return None if view.limit == 50 else str(view.limit)


def _field_rows(pairs: Sequence[tuple[str, object]]) -> Safe:
    return join(render("<tr><th>{k}</th><td>{v}</td></tr>", k=k, v=show_value(v))
                for k, v in pairs)


def event_page(item: StoredEvent, root: str, badge: Safe, *, everything: bool) -> Safe:
    """One event in full: its fields, targets, before → after, the raw record, its chain hash."""
    event = item.event
    fields: list[tuple[str, object]] = [
        ("occurred at (UTC)", format_timestamp(event.occurred_at)),
        ("action", event.action), ("action type", event.action_type.value),
        ("actor", f"{event.actor_name} ({event.actor_id})"),
        *([("actor type", event.actor_type)] if event.actor_type else []),
        ("group", event.group), ("location", event.location),
        ("user agent", event.user_agent), ("idempotency key", event.idempotency_key),
        *([("version", event.version)] if event.version is not None else []),
        *([("row", item.seq)] if everything else []),
        ("chain hash", item.hash),
    ]
    targets = join(render(
        "<tr><td>{id}</td><td>{name}</td><td>{type}</td><td>{meta}</td></tr>",
        id=t.id, name=t.name, type=t.type or "",
        meta=show_value(dict(t.metadata)) if t.metadata else "",
    ) for t in event.targets)
    lines = changes(event.metadata)
    change_rows = join(render(
        '<tr><th>{f}</th><td class="before">{b}</td><td class="after">{a}</td></tr>',
        f=field, b=before, a=after) for field, before, after in lines)
    actor_meta = _field_rows(list(event.actor_metadata.items()))
    record = json.dumps(event.to_record(), ensure_ascii=False, indent=2, sort_keys=True)
    body = render(
        "<h1>{action} <small>by {actor}</small></h1>"
        '<table class="fields">{fields}</table>'
        "<h2>Targets</h2><table class=\"events\"><thead><tr><th>id</th><th>name</th>"
        "<th>type</th><th>metadata</th></tr></thead><tbody>{targets}</tbody></table>"
        "<h2>Before → after</h2>"
        '<table class="changes wide"><thead><tr><th>field</th><th>before</th><th>after</th>'
        "</tr></thead><tbody>{changes}</tbody></table>{actor_meta}"
        "<h2>Record</h2><pre class=\"record\">{record}</pre>"
        '<p><a href="{root}/">← back to the list</a></p>',
        action=event.action, actor=event.actor_name, fields=_field_rows(fields),
        targets=targets, changes=change_rows or render('<tr><td colspan="3">no metadata</td></tr>'),
        actor_meta=render("<h2>Actor metadata</h2><table class=\"fields\">{m}</table>",
                          m=actor_meta) if actor_meta else "",
        record=record, root=root,
    )
    return layout(f"{event.action} — audit log", body, root, badge)


def chain_page(view: ChainView, root: str, badge: Safe, *, everything: bool) -> Safe:
    """The chain's state; refreshes itself every 2 s while a run is under way."""
    refresh = Safe('<meta http-equiv="refresh" content="2">') if view.running else None
    detail = ""
    if everything and view.result is not None:
        detail = str(view.result)
    button = Safe("")
    if everything:
        button = render('<form method="post" action="{root}/verify">'
                        '<button type="submit">Verify now</button></form>', root=root)
    body = render(
        "<h1>Hash chain</h1><p>{badge}</p><p>{detail}</p>{button}"
        "<p>The viewer verifies the whole store in the background: every row's hash, "
        "the target index and activity counts, the chain head.</p>",
        badge=badge, detail=detail, button=button,
    )
    return layout("Hash chain — audit log", body, root, badge, refresh)


def error_page(status: int, message: str, root: str) -> Safe:
    """A plain error page."""
    body = render('<h1>{status}</h1><p class="error" role="alert">{message}</p>',
                  status=status, message=message)
    return layout(f"{status} — audit log", body, root)
