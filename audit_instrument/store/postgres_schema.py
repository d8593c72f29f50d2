"""The PostgreSQL store's schema, its version, and the check that a database still has it.

Everything lives in one schema of the user's choice (``audit`` by default):

* ``events`` — one row per chained event, as in the SQLite store: ``seq``,
  the columns queries filter on, the canonical ``record`` JSON text and the
  ``hash``; an index per filter ending in ``(occurred_at, seq)``, the order
  of a page.
* ``event_targets`` — every target of every event, for queries by target.
* ``chain`` — the one-row chain head; ``chain_seal`` — the key seal of a
  keyed chain.
* ``pending`` — events written inside a caller's transaction
  (:meth:`AuditStore.in_transaction`), waiting to be chained.
* ``store_meta`` — which application made the schema, and its version.

Text columns that are compared or ordered use the ``C`` collation, so they
sort byte by byte — the order of the SQLite store and of the stored
timestamp text — whatever the database's locale.
"""

from __future__ import annotations

from typing import Any, Protocol

from .chain import GENESIS_HASH

__all__ = ["APPLICATION", "SCHEMA_VERSION", "create_statements", "schema_problems"]

APPLICATION = "audit_instrument"
SCHEMA_VERSION = 1

_C_TEXT = 'text COLLATE "C" NOT NULL'

# Tables as (name, [(column, type as format_type() shows it, collation or "", not null)]).
_TABLES: dict[str, list[tuple[str, str, str, bool]]] = {
    "store_meta": [
        ("id", "integer", "", True),
        ("application", "text", "", True),
        ("version", "integer", "", True),
    ],
    "events": [
        ("seq", "bigint", "", True),
        ("occurred_at", "text", "C", True),
        ("action", "text", "C", True),
        ("actor_id", "text", "C", True),
        ("target_id", "text", "C", True),
        ("group", "text", "C", True),
        ("idempotency_key", "text", "C", True),
        ("record", "text", "", True),
        ("hash", "text", "", True),
    ],
    "event_targets": [
        ("target_id", "text", "C", True),
        ("occurred_at", "text", "C", True),
        ("seq", "bigint", "", True),
    ],
    "chain": [("id", "integer", "", True), ("seq", "bigint", "", True), ("hash", "text", "", True)],
    "chain_seal": [
        ("id", "integer", "", True),
        ("keyed_from", "bigint", "", True),
        ("key_id", "text", "", True),
        ("head_mac", "text", "", True),
    ],
    "pending": [
        ("id", "bigint", "", True),
        ("xid", "xid8", "", True),
        ("record", "text", "", True),
    ],
}

# Indexes as name -> (table, unique, columns).
_INDEXES: dict[str, tuple[str, bool, tuple[str, ...]]] = {
    "store_meta_pkey": ("store_meta", True, ("id",)),
    "events_pkey": ("events", True, ("seq",)),
    "events_idempotency_key": ("events", True, ("idempotency_key",)),
    "events_occurred_at": ("events", False, ("occurred_at", "seq")),
    "events_action": ("events", False, ("action", "occurred_at", "seq")),
    "events_actor": ("events", False, ("actor_id", "occurred_at", "seq")),
    "events_group": ("events", False, ("group", "occurred_at", "seq")),
    "event_targets_pkey": ("event_targets", True, ("target_id", "occurred_at", "seq")),
    "chain_pkey": ("chain", True, ("id",)),
    "chain_seal_pkey": ("chain_seal", True, ("id",)),
    "pending_pkey": ("pending", True, ("id",)),
}


def create_statements(schema: str) -> list[str]:
    """The statements that make a new store in ``schema`` (a checked identifier)."""
    s = f'"{schema}"'
    return [
        f"CREATE SCHEMA IF NOT EXISTS {s}",
        f"""CREATE TABLE {s}.store_meta (
    id integer PRIMARY KEY CHECK (id = 1),
    application text NOT NULL,
    version integer NOT NULL
)""",
        f"""CREATE TABLE {s}.events (
    seq bigint PRIMARY KEY,
    occurred_at {_C_TEXT},
    action {_C_TEXT},
    actor_id {_C_TEXT},
    target_id {_C_TEXT},
    "group" {_C_TEXT},
    idempotency_key {_C_TEXT},
    record text NOT NULL,
    hash text NOT NULL
)""",
        f"CREATE UNIQUE INDEX events_idempotency_key ON {s}.events (idempotency_key)",
        f"CREATE INDEX events_occurred_at ON {s}.events (occurred_at, seq)",
        f"CREATE INDEX events_action ON {s}.events (action, occurred_at, seq)",
        f"CREATE INDEX events_actor ON {s}.events (actor_id, occurred_at, seq)",
        f'CREATE INDEX events_group ON {s}.events ("group", occurred_at, seq)',
        f"""CREATE TABLE {s}.event_targets (
    target_id {_C_TEXT},
    occurred_at {_C_TEXT},
    seq bigint NOT NULL,
    PRIMARY KEY (target_id, occurred_at, seq)
)""",
        f"""CREATE TABLE {s}.chain (
    id integer PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL,
    hash text NOT NULL
)""",
        f"INSERT INTO {s}.chain (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}')",
        f"""CREATE TABLE {s}.chain_seal (
    id integer PRIMARY KEY CHECK (id = 1),
    keyed_from bigint NOT NULL,
    key_id text NOT NULL,
    head_mac text NOT NULL
)""",
        f"""CREATE TABLE {s}.pending (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    record text NOT NULL
)""",
        f"INSERT INTO {s}.store_meta (id, application, version) "
        f"VALUES (1, '{APPLICATION}', {SCHEMA_VERSION})",
    ]


# Migrations to come: version -> the statements that bring a store from it to version + 1.
MIGRATIONS: dict[int, list[str]] = {}


class _Cursor(Protocol):
    def execute(self, query: Any, params: Any = ...) -> Any: ...
    def fetchall(self) -> list[Any]: ...


_COLUMNS = """
SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
       coalesce(CASE WHEN a.attcollation <> t.typcollation THEN co.collname END, ''),
       a.attnotnull
FROM pg_attribute a
JOIN pg_class c ON c.oid = a.attrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_collation co ON co.oid = a.attcollation
WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY c.relname, a.attnum
"""

_INDEX_COLUMNS = """
SELECT i.relname, t.relname, x.indisunique, x.indisvalid AND x.indisready,
       ARRAY(SELECT a.attname FROM unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
             ORDER BY k.n)::text[]
FROM pg_index x
JOIN pg_class i ON i.oid = x.indexrelid
JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = %s
"""


def schema_problems(cur: _Cursor, schema: str) -> list[str]:
    """How ``schema`` differs from the store's tables, columns and indexes.

    Tables, columns and indexes the store does not know (an index a user
    added) are not problems; a missing or changed one is, and so is an
    index left invalid by a failed build.
    """
    cur.execute(_COLUMNS, (schema,))
    found: dict[str, list[tuple[str, str, str, bool]]] = {}
    for table, column, kind, collation, not_null in cur.fetchall():
        found.setdefault(table, []).append((column, kind, collation, bool(not_null)))
    problems = []
    for table, columns in _TABLES.items():
        have = {column[0]: column for column in found.get(table, [])}
        if not have:
            problems.append(f"table {table} is missing (dropped)")
            continue
        for column in columns:
            if column[0] not in have:
                problems.append(f"column {table}.{column[0]} is missing (dropped)")
            elif have[column[0]] != column:
                _, kind, collation, not_null = have[column[0]]
                now = kind + (f' COLLATE "{collation}"' if collation else "")
                now += " NOT NULL" if not_null else " NULL"
                problems.append(f"column {table}.{column[0]} was changed (now: {now})")
    cur.execute(_INDEX_COLUMNS, (schema,))
    indexes = {name: (table, bool(unique), bool(valid), tuple(columns))
               for name, table, unique, valid, columns in cur.fetchall()}
    for name, (table, unique, indexed) in _INDEXES.items():
        if table not in found:
            continue  # reported with its table
        index = indexes.get(name)
        if index is None:
            problems.append(f"index {name} is missing (dropped)")
        elif (index[0], index[1], index[3]) != (table, unique, indexed):
            problems.append(f"index {name} was changed (now on {index[0]} {list(index[3])})")
        elif not index[2]:
            problems.append(f"index {name} is invalid (a failed build; REINDEX it)")
    return problems
