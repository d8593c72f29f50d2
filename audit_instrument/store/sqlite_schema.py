"""The SQLite store's schema, its migrations, and the check that a file still has it.

Schema 1 is the first layout (one ``events`` table, a one-row ``chain``
head). Schema 2 adds ``event_targets`` (every target of an event, so a
query by target matches any of them), the trigger that fills it with each
row's first target — for every writer, including a process still running
schema-1 code during an upgrade — and ``chain_seal`` (the key seal of a
keyed chain); the ``events_target`` index gives way to ``event_targets``.
Schema 3 adds the activity counts (``activity_hour``, ``activity_day``:
events per hour and per day, by group and action, kept by a trigger as rows
are written, so a chart never scans the events), an index of
``event_targets`` by row (so pruning removes a range of rows' entries
directly) and ``chain_base``, where a pruned chain starts.
A new file is made by running schema 1 and then every migration, so a new
store and a migrated one have exactly the same schema.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from functools import cache

from .chain import GENESIS_HASH

__all__ = [
    "APPLICATION_ID",
    "SCHEMA_VERSION",
    "create",
    "migrate",
    "schema_problems",
]

APPLICATION_ID = 0x41554454  # "AUDT" in the SQLite header: this file is an audit store
SCHEMA_VERSION = 3

# Schema 1, statement by statement, exactly as the first version wrote it: the
# schema check compares these texts with the file's.
_SCHEMA_1 = (
    """CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    occurred_at TEXT NOT NULL,
    action TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    target_id TEXT NOT NULL,
    "group" TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    record TEXT NOT NULL,
    hash TEXT NOT NULL
)""",
    "CREATE UNIQUE INDEX events_idempotency_key ON events (idempotency_key)",
    "CREATE INDEX events_occurred_at ON events (occurred_at)",
    "CREATE INDEX events_action ON events (action, occurred_at)",
    "CREATE INDEX events_actor ON events (actor_id, occurred_at)",
    "CREATE INDEX events_target ON events (target_id, occurred_at)",
    'CREATE INDEX events_group ON events ("group", occurred_at)',
    """CREATE TABLE chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
)""",
    f"INSERT INTO chain (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}')",
    f"PRAGMA application_id = {APPLICATION_ID}",
    "PRAGMA user_version = 1",
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    # 1 -> 2: every target indexed; the key seal.
    1: (
        """CREATE TABLE event_targets (
    target_id TEXT NOT NULL,
    occurred_at TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (target_id, occurred_at, seq)
) WITHOUT ROWID""",
        """CREATE TRIGGER events_first_target AFTER INSERT ON events BEGIN
    INSERT OR IGNORE INTO event_targets (target_id, occurred_at, seq)
    VALUES (NEW.target_id, NEW.occurred_at, NEW.seq);
END""",
        "INSERT INTO event_targets (target_id, occurred_at, seq) "
        "SELECT target_id, occurred_at, seq FROM events",
        "DROP INDEX events_target",
        """CREATE TABLE chain_seal (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    keyed_from INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    head_mac TEXT NOT NULL
)""",
        "PRAGMA user_version = 2",
    ),
    # 2 -> 3: activity counts, target entries by row, the base of a pruned chain.
    2: (
        """CREATE TABLE activity_hour (
    hour TEXT NOT NULL,
    "group" TEXT NOT NULL,
    action TEXT NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (hour, "group", action)
) WITHOUT ROWID""",
        """CREATE TABLE activity_day (
    day TEXT NOT NULL,
    "group" TEXT NOT NULL,
    action TEXT NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (day, "group", action)
) WITHOUT ROWID""",
        """CREATE TRIGGER events_activity AFTER INSERT ON events BEGIN
    INSERT INTO activity_hour (hour, "group", action, events)
    VALUES (substr(NEW.occurred_at, 1, 13), NEW."group", NEW.action, 1)
    ON CONFLICT (hour, "group", action) DO UPDATE SET events = events + 1;
    INSERT INTO activity_day (day, "group", action, events)
    VALUES (substr(NEW.occurred_at, 1, 10), NEW."group", NEW.action, 1)
    ON CONFLICT (day, "group", action) DO UPDATE SET events = events + 1;
END""",
        'INSERT INTO activity_hour (hour, "group", action, events) '
        'SELECT substr(occurred_at, 1, 13), "group", action, count(*) FROM events '
        "GROUP BY 1, 2, 3",
        'INSERT INTO activity_day (day, "group", action, events) '
        'SELECT substr(hour, 1, 10), "group", action, sum(events) FROM activity_hour '
        "GROUP BY 1, 2, 3",
        "CREATE INDEX event_targets_seq ON event_targets (seq)",
        """CREATE TABLE chain_base (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL,
    pruned_at TEXT NOT NULL
)""",
        "PRAGMA user_version = 3",
    ),
}


def create(
    conn: sqlite3.Connection, fill: Callable[[sqlite3.Connection], None] | None = None
) -> None:
    """Make a new store's schema on ``conn`` (inside the caller's transaction).

    ``fill``, if given, is called once the ``events`` table exists and before
    its indexes, triggers and derived tables: rows it inserts are indexed,
    and their first targets and activity counts filled in, in bulk (how an
    archive is written).
    """
    conn.execute(_SCHEMA_1[0])
    if fill is not None:
        fill(conn)
    for statement in _SCHEMA_1[1:]:
        conn.execute(statement)
    migrate(conn, 1)


def migrate(conn: sqlite3.Connection, version: int, to: int = SCHEMA_VERSION) -> None:
    """Bring a store of schema ``version`` to schema ``to`` (inside the caller's transaction)."""
    while version < to:
        for statement in _MIGRATIONS[version]:
            conn.execute(statement)
        version += 1


def _normal(sql: str) -> str:
    return re.sub(r"\s+", " ", sql).strip()


def _objects(conn: sqlite3.Connection) -> dict[str, tuple[str, str, str]]:
    rows = conn.execute(
        "SELECT name, type, tbl_name, sql FROM sqlite_schema "
        "WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%'"
    )
    return {name: (kind, table, _normal(sql)) for name, kind, table, sql in rows}


@cache
def _expected(version: int) -> dict[str, tuple[str, str, str]]:
    """The objects a store of ``version`` has: made in memory the way a store is."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for statement in _SCHEMA_1:
            conn.execute(statement)
        migrate(conn, 1, version)
        return _objects(conn)
    finally:
        conn.close()


def schema_problems(conn: sqlite3.Connection, version: int) -> list[str]:
    """How the schema on ``conn`` differs from schema ``version``'s tables, indexes, triggers.

    Objects the store does not know (an index a user added) are not
    problems; a missing or changed one is.
    """
    if not 1 <= version <= SCHEMA_VERSION:
        return [f"schema version {version} is not one this code knows"]
    found = _objects(conn)
    problems = []
    for name, (kind, table, sql) in _expected(version).items():
        have = found.get(name)
        if have is None:
            problems.append(f"{kind} {name} is missing (dropped)")
        elif have != (kind, table, sql):
            problems.append(f"{kind} {name} was changed (now: {have[2][:120]})")
    return problems
