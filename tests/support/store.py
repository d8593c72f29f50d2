"""Helpers for the audit store and CLI tests: fill a store, tamper with it behind its back,
write a store the way the schema-1 code did."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from audit_instrument import AuditEvent
from audit_instrument.store import AuditStore

from .events import make_event


def fill(path: Path, n: int, *, key: str | None = None) -> list[AuditEvent]:
    """A store at ``path`` holding events 0..n-1 (rows 1..n), keyed with ``key`` if given."""
    events = [make_event(i) for i in range(n)]
    with AuditStore(path, key=key) as store:
        for event in events:
            store.send(event)
    return events


def raw(path: Path, *statements: tuple[str, tuple[Any, ...]] | str) -> None:
    """Run SQL on the file behind the store's back, as an intruder would."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            if isinstance(statement, str):
                conn.execute(statement)
            else:
                conn.execute(*statement)
    finally:
        conn.close()


def swap_rows(path: Path, a: int, b: int) -> None:
    """Exchange everything but the row numbers of rows ``a`` and ``b``."""
    cols = 'occurred_at, action, actor_id, target_id, "group", idempotency_key, record, hash'
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        rows = {
            seq: rest
            for seq, *rest in conn.execute(
                f"SELECT seq, {cols} FROM events WHERE seq IN (?, ?)", (a, b)
            )
        }
        conn.execute("BEGIN")
        conn.execute("DELETE FROM events WHERE seq IN (?, ?)", (a, b))
        for seq, other in ((a, b), (b, a)):
            conn.execute(f"INSERT INTO events (seq, {cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (seq, *rows[other]))
        conn.execute("COMMIT")
    finally:
        conn.close()


# -- an intruder who knows the format but not the key ---------------------------------------


def _unkeyed(previous: str, record: str) -> str:
    return hashlib.sha256((previous + record).encode("utf-8")).hexdigest()


def _has_targets(conn: sqlite3.Connection) -> bool:
    found = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE name = 'event_targets'"
    ).fetchone()
    return found is not None


def recount(conn: sqlite3.Connection) -> None:
    """Make the activity counts (schema 3) agree with the rows again, as an intruder would."""
    found = conn.execute("SELECT 1 FROM sqlite_schema WHERE name = 'activity_hour'").fetchone()
    if found is None:
        return
    conn.execute("DELETE FROM activity_hour")
    conn.execute("DELETE FROM activity_day")
    conn.execute(
        'INSERT INTO activity_hour (hour, "group", action, events) '
        'SELECT substr(occurred_at, 1, 13), "group", action, count(*) FROM events GROUP BY 1, 2, 3'
    )
    conn.execute(
        'INSERT INTO activity_day (day, "group", action, events) '
        'SELECT substr(hour, 1, 10), "group", action, sum(events) FROM activity_hour '
        "GROUP BY 1, 2, 3"
    )


def cut_and_rewrite_head(path: Path, keep: int) -> None:
    """Delete every row after ``keep`` (and its target entries and activity counts); point
    the head at row ``keep``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        last = conn.execute("SELECT hash FROM events WHERE seq = ?", (keep,)).fetchone()
        conn.execute("BEGIN")
        conn.execute("DELETE FROM events WHERE seq > ?", (keep,))
        if _has_targets(conn):
            conn.execute("DELETE FROM event_targets WHERE seq > ?", (keep,))
        conn.execute("UPDATE chain SET seq = ?, hash = ?",
                     (keep, last[0] if last else "0" * 64))
        recount(conn)
        conn.execute("COMMIT")
    finally:
        conn.close()


def wipe_and_reset_head(path: Path) -> None:
    """Delete every row; reset the head to an empty chain."""
    cut_and_rewrite_head(path, 0)


def edit_and_recompute(path: Path, seq: int, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in row ``seq``'s record and recompute every later
    hash and the head as an unkeyed chain (all an intruder without the key can do)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        rows = conn.execute("SELECT seq, record FROM events ORDER BY seq").fetchall()
        previous = "0" * 64
        conn.execute("BEGIN")
        for number, record in rows:
            if number == seq:
                assert old in record, (old, record)
                record = record.replace(old, new)
                conn.execute("UPDATE events SET record = ? WHERE seq = ?", (record, number))
            if number >= seq:
                digest = _unkeyed(previous, record)
                conn.execute("UPDATE events SET hash = ? WHERE seq = ?", (digest, number))
            else:
                digest = conn.execute(
                    "SELECT hash FROM events WHERE seq = ?", (number,)
                ).fetchone()[0]
            previous = digest
        conn.execute("UPDATE chain SET seq = ?, hash = ?", (len(rows), previous))
        conn.execute("COMMIT")
    finally:
        conn.close()


def zero_page_of(path: Path, name: str) -> None:
    """Overwrite the root page of table or index ``name`` with zeros (a torn disk write)."""
    conn = sqlite3.connect(path)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        root = conn.execute("SELECT rootpage FROM sqlite_schema WHERE name = ?",
                            (name,)).fetchone()[0]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    with open(path, "r+b") as file:
        file.seek((root - 1) * page_size)
        file.write(b"\0" * page_size)


# -- a store as the schema-1 code wrote it -------------------------------------------------

SCHEMA_1 = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    occurred_at TEXT NOT NULL,
    action TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    target_id TEXT NOT NULL,
    "group" TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    record TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE UNIQUE INDEX events_idempotency_key ON events (idempotency_key);
CREATE INDEX events_occurred_at ON events (occurred_at);
CREATE INDEX events_action ON events (action, occurred_at);
CREATE INDEX events_actor ON events (actor_id, occurred_at);
CREATE INDEX events_target ON events (target_id, occurred_at);
CREATE INDEX events_group ON events ("group", occurred_at);
CREATE TABLE chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO chain (id, seq, hash) VALUES (1, 0, '{genesis}');
PRAGMA application_id = 1096107092;
PRAGMA user_version = 1;
""".format(genesis="0" * 64)
"""The schema the first store code created, statement for statement."""


def write_schema_1(path: Path, events: list[AuditEvent]) -> str:
    """A schema-1 store holding ``events`` (rows 1..n), written with raw SQL exactly as
    the schema-1 code did; returns the head hash."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN")
        for statement in SCHEMA_1.split(";"):
            if statement.strip():
                conn.execute(statement)
        previous = "0" * 64
        for seq, event in enumerate(events, 1):
            record = json.dumps(event.to_record(), sort_keys=True, separators=(",", ":"),
                                ensure_ascii=False)
            previous = _unkeyed(previous, record)
            conn.execute(
                'INSERT INTO events (seq, occurred_at, action, actor_id, target_id, "group", '
                "idempotency_key, record, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq, json.loads(record)["occurred_at"], event.action, event.actor_id,
                 event.target_id, event.group, event.idempotency_key, record, previous),
            )
        conn.execute("UPDATE chain SET seq = ?, hash = ? WHERE id = 1", (len(events), previous))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return previous
