"""The SQLite backend's side of pruning: the chain base, which rows may go, deleting them.

Rows leave a chain only from its start, in ``seq`` order, so what remains
still links up: ``chain_base`` records the last row removed and its hash,
from which the first row kept continues. Each :func:`prune_upto` is one
transaction, so the store verifies at every moment of a long prune, and
other writers get the lock between chunks.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from collections.abc import Callable, Iterator

from ..errors import AuditConfigError, AuditError
from .backend import Row, TargetRow
from .chain import ChainBase, Linker, Seal

__all__ = ["archive_rows", "archive_targets", "base", "prunable", "prune_upto"]

_ROWS = (
    'SELECT seq, occurred_at, action, actor_id, target_id, "group", '
    "idempotency_key, record, hash FROM events WHERE seq >= ? AND seq <= ? ORDER BY seq"
)


def base(conn: sqlite3.Connection) -> ChainBase | None:
    """The chain base, or ``None`` (never pruned, or a schema without the table)."""
    try:
        row = conn.execute("SELECT seq, hash, pruned_at FROM chain_base WHERE id = 1").fetchone()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):
            return None
        raise
    return None if row is None else ChainBase(int(row[0]), str(row[1]), str(row[2]))


def prunable(conn: sqlite3.Connection, before: str) -> int:
    """The last row that may be pruned: the one before the first row not older than ``before``."""
    start = base(conn)
    first = 0 if start is None else start.seq
    newer = conn.execute(
        "SELECT min(seq) FROM events WHERE occurred_at >= ?", (before,)
    ).fetchone()[0]
    if newer is None:
        last = conn.execute("SELECT max(seq) FROM events").fetchone()[0]
        return max(first, int(last or 0))
    return max(first, int(newer) - 1)


def archive_rows(conn: sqlite3.Connection, first: int, last: int) -> Iterator[Row]:
    """Rows ``first..last`` in order (the caller owns ``conn`` and its transaction)."""
    return iter(conn.execute(_ROWS, (first, last)))


def archive_targets(conn: sqlite3.Connection, first: int, last: int) -> Iterator[TargetRow]:
    """The target entries of rows ``first..last``, in ``seq`` order."""
    return iter(conn.execute(
        "SELECT seq, target_id, occurred_at FROM event_targets WHERE seq >= ? AND seq <= ? "
        "ORDER BY seq, target_id",
        (first, last),
    ))


def _uncount(conn: sqlite3.Connection, after: int, upto: int) -> None:
    """Take rows ``after+1..upto`` out of the activity counts; drop counts that reach 0."""
    hours = conn.execute(
        'SELECT substr(occurred_at, 1, 13), "group", action, count(*) FROM events '
        "WHERE seq > ? AND seq <= ? GROUP BY 1, 2, 3",
        (after, upto),
    ).fetchall()
    days: Counter[tuple[str, str, str]] = Counter()
    for hour, group, action, events in hours:
        days[(hour[:10], group, action)] += events
    for table, column, counts in (
        ("activity_hour", "hour", [((h, g, a), n) for h, g, a, n in hours]),
        ("activity_day", "day", list(days.items())),
    ):
        key = f'{column} = ? AND "group" = ? AND action = ?'
        conn.executemany(
            f"UPDATE {table} SET events = events - ? WHERE {key}",
            [(n, *bucket) for bucket, n in counts],
        )
        conn.executemany(f"DELETE FROM {table} WHERE {key} AND events <= 0",
                         [bucket for bucket, _ in counts])


def prune_upto(
    conn: sqlite3.Connection,
    upto: int,
    after: int,
    pruned_at: str,
    linker: Callable[[Seal | None], Linker],
    where: str,
) -> ChainBase:
    """Delete rows ``after+1..upto`` and move the base, inside the caller's transaction."""
    row = conn.execute(
        "SELECT c.seq, c.hash, s.keyed_from, s.key_id, s.head_mac, b.seq FROM chain c "
        "LEFT JOIN chain_seal s ON s.id = 1 LEFT JOIN chain_base b ON b.id = 1 WHERE c.id = 1"
    ).fetchone()
    if row is None:
        raise AuditConfigError(f"{where}: the chain head is missing; run verify")
    head_seq, head_hash = int(row[0]), str(row[1])
    if (row[5] or 0) != after:
        raise AuditError(
            f"{where}: the chain base moved to row {row[5] or 0} while pruning from row "
            f"{after}: another prune is running"
        )
    found = conn.execute("SELECT hash FROM events WHERE seq = ?", (upto,)).fetchone()
    if not after < upto <= head_seq or found is None:
        raise AuditError(f"{where}: row {upto} is not in the chain; run verify")
    link = linker(None if row[2] is None else Seal(int(row[2]), row[3], row[4]))
    _uncount(conn, after, upto)
    conn.execute("DELETE FROM event_targets WHERE seq > ? AND seq <= ?", (after, upto))
    deleted = conn.execute("DELETE FROM events WHERE seq > ? AND seq <= ?", (after, upto))
    if deleted.rowcount != upto - after:
        raise AuditError(
            f"{where}: rows {after + 1}-{upto} are not all there ({deleted.rowcount} found); "
            "run verify"
        )
    new_base = ChainBase(upto, str(found[0]), pruned_at)
    conn.execute(
        "INSERT INTO chain_base (id, seq, hash, pruned_at) VALUES (1, ?, ?, ?) "
        "ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash, "
        "pruned_at = excluded.pruned_at",
        (new_base.seq, new_base.hash, new_base.pruned_at),
    )
    mac = link.head_mac(head_seq, head_hash, new_base)
    if mac is not None:
        conn.execute("UPDATE chain_seal SET head_mac = ? WHERE id = 1", (mac,))
    return new_base
