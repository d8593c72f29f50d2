"""The SQLite backend's side of pruning: the chain base, which rows may go, deleting them.

Rows leave a chain only from its start, in ``seq`` order, so what remains
still links up: ``chain_base`` records the last row removed and its hash,
from which the first row kept continues. Each :func:`prune_upto` is one
transaction, so the store verifies at every moment of a long prune, and
other writers get the lock between chunks.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator

from ..errors import AuditConfigError, AuditError
from .backend import Row, TargetRow
from .chain import ChainBase, Linker, Seal

__all__ = ["BULK_CACHE", "archive_rows", "archive_targets", "base", "prunable", "prune_upto"]

BULK_CACHE = -262_144
"""SQLite's page cache (in KiB when negative: 256 MiB) while pruning or building an archive."""

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
    """The target entries of rows ``first..last`` beyond each row's first target."""
    return iter(conn.execute(
        "SELECT t.seq, t.target_id, t.occurred_at FROM event_targets t "
        "JOIN events e ON e.seq = t.seq WHERE t.seq >= ? AND t.seq <= ? "
        "AND t.target_id != e.target_id ORDER BY t.seq, t.target_id",
        (first, last),
    ))


def _recount(conn: sqlite3.Connection, after: int, upto: int) -> Callable[[], None]:
    """Prepare to fix the activity counts once rows ``after+1..upto`` are deleted; the fix.

    The counts of every hour and day the rows fall in are dropped and counted
    again from the rows that remain there, found through the ``occurred_at``
    index — pruned rows are the oldest, so few remain in those buckets, and
    this costs far less than subtracting each deleted row's bucket.
    """
    low, high = conn.execute(
        "SELECT min(occurred_at), max(occurred_at) FROM events WHERE seq > ? AND seq <= ?",
        (after, upto),
    ).fetchone()

    def fix() -> None:
        if low is None:
            return
        for table, column, width in (("activity_hour", "hour", 13), ("activity_day", "day", 10)):
            first, last = low[:width], high[:width]
            conn.execute(f"DELETE FROM {table} WHERE {column} >= ? AND {column} <= ?",
                         (first, last))
            conn.execute(
                f'INSERT INTO {table} ({column}, "group", action, events) '
                f'SELECT substr(occurred_at, 1, {width}), "group", action, count(*) FROM events '
                "WHERE occurred_at >= ? AND occurred_at < ? GROUP BY 1, 2, 3",
                (first, last + "\uffff"),
            )

    return fix


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
    recount = _recount(conn, after, upto)
    conn.execute("DELETE FROM event_targets WHERE seq > ? AND seq <= ?", (after, upto))
    deleted = conn.execute("DELETE FROM events WHERE seq > ? AND seq <= ?", (after, upto))
    if deleted.rowcount != upto - after:
        raise AuditError(
            f"{where}: rows {after + 1}-{upto} are not all there ({deleted.rowcount} found); "
            "run verify"
        )
    recount()
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
