"""Helpers for the audit store and CLI tests: fill a store, tamper with it behind its back."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from audit_instrument import AuditEvent
from audit_instrument.store import AuditStore

from .events import make_event


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
