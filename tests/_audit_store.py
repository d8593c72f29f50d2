"""Helpers for the audit store and CLI tests: build events, fill a store, tamper with it."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from audit_instrument import AuditEvent
from audit_instrument.store import AuditStore

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_event(i: int, **fields: Any) -> AuditEvent:
    """Event number ``i``: one minute after the previous, actors/targets/groups cycling."""
    values: dict[str, Any] = {
        "group": f"organization_{i % 2 + 1}",
        "action": ("tweet.create", "tweet.update", "tweet.delete")[i % 3],
        "action_type": "CUD"[i % 3],
        "actor_name": f"user{i % 4}@example.com",
        "actor_id": f"user_{i % 4}",
        "target_name": f"user{i % 4}@example.com",
        "target_id": f"tweet_{i % 5}",
        "location": "203.0.113.5",
        "occurred_at": T0 + timedelta(minutes=i),
        "metadata": {"n": i},
    }
    values.update(fields)
    return AuditEvent(**values)


def fill(path: Path, n: int) -> list[AuditEvent]:
    """A store at ``path`` holding events 0..n-1 (rows 1..n)."""
    events = [make_event(i) for i in range(n)]
    with AuditStore(path) as store:
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
