"""The SQL of the PostgreSQL store: its statements, its query filters, its rows from records.

Every statement names the store's schema (a checked identifier, quoted);
values always travel as parameters.
"""

from __future__ import annotations

import json

from .backend import NewRow
from .chain import record_targets
from .query import Filters

__all__ = ["Statements", "row_from_record", "select"]


def row_from_record(record: str) -> NewRow:
    """The row for an event's stored record text (its canonical JSON)."""
    data = json.loads(record)
    return NewRow(
        occurred_at=data["occurred_at"], action=data["action"], actor_id=data["actor_id"],
        target_id=data["target_id"], group=data["group"],
        idempotency_key=data["idempotency_key"], record=record, targets=record_targets(data),
    )



class Statements:
    """The statements of one store, with its schema name in them."""

    def __init__(self, schema: str) -> None:
        s = f'"{schema}"'
        self.schema = schema
        self.head = f"SELECT seq, hash FROM {s}.chain WHERE id = 1"
        # The head, locked for the transaction (see PostgresBackend._holding_head).
        lock = (
            "SELECT c.seq, c.hash, s.keyed_from, s.key_id, s.head_mac{} "
            f"FROM {s}.chain c LEFT JOIN {s}.chain_seal s ON s.id = 1 WHERE c.id = 1 "
            "FOR UPDATE OF c"
        )
        self.lock_head = "BEGIN; " + lock.format(
            ", set_config('synchronous_commit', 'off', true)")
        self.lock_head_flushed = "BEGIN; " + lock.format("")
        self.flush = "SELECT pg_logical_emit_message(true, 'audit_instrument', 'flush')"
        self.commit_and_flush = "COMMIT; " + self.flush
        self.seal = f"SELECT keyed_from, key_id, head_mac FROM {s}.chain_seal WHERE id = 1"
        self.insert_seal = (
            f"INSERT INTO {s}.chain_seal (id, keyed_from, key_id, head_mac) VALUES (1, %s, %s, %s)"
        )
        self.existing = (
            f"SELECT idempotency_key, seq FROM {s}.events WHERE idempotency_key = ANY(%s)"
        )
        # The rows, their target entries and the new head: one statement, which
        # answers how many rows it inserted (fewer: an idempotency key is stored).
        events = (
            f'INSERT INTO {s}.events (seq, occurred_at, action, actor_id, target_id, "group", '
            "idempotency_key, record, hash) SELECT * FROM unnest(%s::bigint[], %s::text[], "
            "%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[]) "
            "ON CONFLICT (idempotency_key) DO NOTHING RETURNING 1"
        )
        targets = (
            f"INSERT INTO {s}.event_targets (target_id, occurred_at, seq) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::bigint[])"
        )
        head = f"UPDATE {s}.chain SET seq = %s, hash = %s WHERE id = 1"
        self.write = (
            f"WITH e AS ({events}), t AS ({targets}), h AS ({head}) SELECT count(*) FROM e"
        )
        self.write_keyed = (
            f"WITH e AS ({events}), t AS ({targets}), "
            f"m AS (UPDATE {s}.chain_seal SET head_mac = %s WHERE id = 1), "
            f"h AS ({head}) SELECT count(*) FROM e"
        )
        self.rows = (
            f'SELECT seq, occurred_at, action, actor_id, target_id, "group", '
            f"idempotency_key, record, hash FROM {s}.events ORDER BY seq"
        )
        self.targets = f"SELECT seq, target_id, occurred_at FROM {s}.event_targets"
        # pending rows: written in callers' transactions, chained afterwards
        self.insert_pending = (
            f"INSERT INTO {s}.pending (record) VALUES (%s) RETURNING id, xid::text"
        )
        self.insert_pending_many = (  # ORDER BY: the ids are drawn in the array's order
            f"INSERT INTO {s}.pending (record) SELECT record FROM "
            f"json_array_elements_text(%s::json) WITH ORDINALITY AS given(record, n) "
            f"ORDER BY n RETURNING id, xid::text"
        )
        self.take_pending = (
            f"DELETE FROM {s}.pending WHERE id IN "
            f"(SELECT id FROM {s}.pending ORDER BY id LIMIT %s) RETURNING id, record"
        )
        self.any_pending = f"SELECT EXISTS (SELECT 1 FROM {s}.pending)"
        self.count_pending = f"SELECT count(*) FROM {s}.pending"
        self.still_pending = f"SELECT id FROM {s}.pending WHERE id = ANY(%s)"
        self.stored_keys = (
            f"SELECT idempotency_key FROM {s}.events WHERE idempotency_key = ANY(%s)"
        )
        # A transaction counts as ended once its outcome is in the commit log *and*
        # it has left the snapshot: only then does every later statement see its rows.
        self.outcomes = (
            "SELECT x::text, pg_xact_status(x), "
            "pg_visible_in_snapshot(x, pg_current_snapshot()) "
            "FROM unnest(%s::xid8[]) AS x"
        )


def select(schema: str, what: str, filters: Filters) -> tuple[str, list[object], str]:
    """SQL from ``SELECT what`` to the WHERE clause, its parameters, and the order key."""
    s = f'"{schema}"'
    params: list[object] = []
    clauses: list[str] = []
    if filters.target is not None:
        sql = f"SELECT {what} FROM {s}.event_targets t JOIN {s}.events e ON e.seq = t.seq"
        clauses.append("t.target_id = %s")
        params.append(filters.target)
        order = "t"
    else:
        sql = f"SELECT {what} FROM {s}.events e"
        order = "e"
    for column, value in (
        ("e.actor_id", filters.actor),
        ("e.action", filters.action),
        ('e."group"', filters.group),
    ):
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if filters.since is not None:
        clauses.append(f"{order}.occurred_at >= %s")
        params.append(filters.since)
    if filters.until is not None:
        clauses.append(f"{order}.occurred_at < %s")
        params.append(filters.until)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    return sql + where, params, order

