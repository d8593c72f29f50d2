"""Build a large, valid audit store quickly, for the viewer, export and prune benchmarks.

Rows are written in one transaction straight into the store's own schema
(its indexes and triggers fill the target index and the activity counts as
for any writer), with the same chain hashes ``AuditStore.send`` would give,
so the file verifies. Records are made as dicts in the form
``AuditEvent.to_record()`` gives (checked against a real event once).

Events: ``groups`` organisations, 500 actors, 8 actions (updates carry
before/after metadata), spread evenly over ``days`` days ending
2026-03-31, oldest first.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from audit_instrument import AuditEvent
from audit_instrument.event import format_timestamp
from audit_instrument.store import AuditStore, canonical_json, chain_hash

__all__ = ["END", "build_store", "record"]

END = datetime(2026, 3, 31, 23, 59, tzinfo=UTC)
_ACTIONS = (
    ("user.login", "C"), ("document.view", "R"), ("document.update", "U"),
    ("document.create", "C"), ("document.delete", "D"), ("user.update", "U"),
    ("invoice.create", "C"), ("settings.update", "U"),
)


def record(i: int, n: int, groups: int, days: int) -> dict[str, object]:
    """The record of event ``i`` of ``n``."""
    action, kind = _ACTIONS[i % len(_ACTIONS)]
    actor = i * 7 % 500
    when = END - timedelta(seconds=(n - i) * days * 86400 / n)
    metadata: dict[str, object] = {"request_id": f"req_{i:08d}"}
    if kind == "U":
        metadata["title_was"] = f"Quarterly report v{i % 9}"
        metadata["title"] = f"Quarterly report v{i % 9 + 1}"
    return {
        "group": f"organization_{actor % groups + 1}",
        "action": action,
        "action_type": kind,
        "actor_name": f"user{actor}@example.com",
        "actor_id": f"user_{actor}",
        "target_name": f"Document {i % 5000}",
        "target_id": f"document_{i % 5000}",
        "location": "203.0.113.5",
        "occurred_at": format_timestamp(when),
        "metadata": metadata,
        "user_agent": "Mozilla/5.0 (X11; Linux x86_64)",
        "idempotency_key": f"bench-{i:09d}",
    }


def _check_shape() -> None:
    data = record(2, 10, 3, 1)
    event = AuditEvent.from_dict(data)
    assert canonical_json(event) == json.dumps(
        data, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def build_store(path: Path, n: int, *, groups: int = 20, days: int = 90) -> None:
    """A store at ``path`` (replaced) holding ``n`` events; verifies intact."""
    _check_shape()
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    AuditStore(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA cache_size = -1000000")  # 1 GB: the indexes stay in memory
        conn.execute("BEGIN")
        previous = "0" * 64
        batch: list[tuple[object, ...]] = []
        dumps = json.dumps
        for i in range(n):
            data = record(i, n, groups, days)
            text = dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            previous = chain_hash(previous, text)
            batch.append((
                i + 1, data["occurred_at"], data["action"], data["actor_id"],
                data["target_id"], data["group"], data["idempotency_key"], text, previous,
            ))
            if len(batch) == 20_000:
                _insert(conn, batch)
        _insert(conn, batch)
        conn.execute("UPDATE chain SET seq = ?, hash = ? WHERE id = 1", (n, previous))
        conn.execute("COMMIT")
    finally:
        conn.close()


def _insert(conn: sqlite3.Connection, batch: list[tuple[object, ...]]) -> None:
    conn.executemany(
        'INSERT INTO events (seq, occurred_at, action, actor_id, target_id, "group", '
        "idempotency_key, record, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        batch,
    )
    batch.clear()
