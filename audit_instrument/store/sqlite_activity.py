"""The SQLite backend's activity counts: read from ``activity_hour`` / ``activity_day``.

The schema's ``events_activity`` trigger adds one to a row's hour and day as
it is inserted (for every writer); :func:`activity` sums them over a range of
buckets, the groups asked for and an action.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

from .activity import ActivityQuery
from .backend import ActivityRow

__all__ = ["activity", "activity_rows", "has_activity"]

_TABLES = {"hour": ("activity_hour", "hour"), "day": ("activity_day", "day")}


def has_activity(conn: sqlite3.Connection) -> bool:
    """Whether the file keeps activity counts (schema 3 and later)."""
    found = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'activity_day'"
    ).fetchone()
    return found is not None


def activity(conn: sqlite3.Connection, query: ActivityQuery) -> list[tuple[str, str, int]]:
    """``(bucket, action, events)`` in bucket order, summed over the query's groups."""
    table, column = _TABLES[query.unit]
    clauses: list[str] = []
    params: list[object] = []
    if query.since is not None:
        clauses.append(f"{column} >= ?")
        params.append(query.since)
    if query.until is not None:
        clauses.append(f"{column} < ?")
        params.append(query.until)
    if query.groups is not None:
        if not query.groups:
            return []
        clauses.append(f'"group" IN ({", ".join("?" * len(query.groups))})')
        params.extend(query.groups)
    if query.action is not None:
        clauses.append("action = ?")
        params.append(query.action)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    sql = (
        f"SELECT {column}, action, sum(events) FROM {table}{where} "
        f"GROUP BY {column}, action ORDER BY {column}, action"
    )
    return [(str(b), str(a), int(n)) for b, a, n in conn.execute(sql, params)]


def activity_rows(conn: sqlite3.Connection, unit: str) -> Iterator[ActivityRow] | None:
    """Every count of one table, for ``verify``; ``None`` if the file keeps none."""
    if not has_activity(conn):
        return None
    table, column = _TABLES["hour" if unit == "hour" else "day"]
    return iter(conn.execute(f'SELECT {column}, "group", action, events FROM {table}'))
