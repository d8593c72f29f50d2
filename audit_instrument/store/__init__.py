"""The audit store: hash-chained events in one SQLite file (the embedded system of record),
or in a PostgreSQL schema that every host writes to (``AuditStore("postgresql://…")``, see
``docs/postgres.md``).

:class:`AuditStore` is a sender (``configure(AuditStore("audit.db"))``) for
teams without a WorkOS account and for development. Every event becomes one
row holding its full record (``event.to_record()`` as canonical JSON: sorted
keys, no spaces, UTF-8), so it reads back losslessly, plus copies of the
fields it is queried by (occurred_at, action, actor_id, every target id,
group).

Each row carries ``hash = sha256(previous row's hash + canonical JSON)``
(hex; the first row chains from 64 zeros) — or, with a key, an
HMAC-SHA256 of the same — and the chain head (the last row's number and
hash) is updated in the same transaction. :meth:`AuditStore.verify` checks
the file (SQLite's integrity check, the schema) and walks the rows, naming
the first one that was edited, deleted or moved, including rows cut off the
end. An unkeyed chain proves the file was not changed *without recomputing
every later hash*; a key, or a :meth:`AuditStore.checkpoint` kept somewhere
else, rules out a recomputed chain too.

Writes are group-committed: threads calling :meth:`~AuditStore.send` at the
same time share one transaction, and ``send`` returns only once its event is
committed; an event whose write fails fails alone. Several processes may
share a file (SQLite's lock orders them; the chain continues from the
committed head), and a forked child gets connections of its own. An event
whose idempotency key is already stored is not stored twice.

The store keeps activity counts (events per hour and day, by group and
action) as it writes, for charts (:meth:`AuditStore.activity`), and can
move its oldest rows into an archive that is a store file of its own while
both stay verifiable (:meth:`AuditStore.prune`).

The package: :mod:`.chain` (canonical JSON, hashes, keys), :mod:`.checkpoint`,
:mod:`.verify` (the walk), :mod:`.query` (filters, pages, cursors),
:mod:`.activity` (activity counts), :mod:`.prune` and :mod:`.archive`
(retention), :mod:`.backend` (the seam a database implements),
:mod:`.sqlite`, :mod:`.sqlite_schema`, :mod:`.sqlite_activity` and
:mod:`.sqlite_prune` (the SQLite backend), the ``postgres*`` modules (the
PostgreSQL backend: :mod:`.postgres`, its URL, connections, schema, SQL and
verify snapshot, and :mod:`.postgres_transaction` and :mod:`.postgres_caller` for writes inside
callers' transactions), :mod:`.audit_store` (the front).

>>> from audit_instrument import configure
>>> store = AuditStore("audit.db")                      # doctest: +SKIP
>>> configure(store)                                    # doctest: +SKIP
>>> page = store.query(actor="user_1", action="tweet.update", limit=20)  # doctest: +SKIP
>>> store.verify().ok                                   # doctest: +SKIP
True
"""

from __future__ import annotations

from .activity import ActivityCount
from .audit_store import AuditStore
from .backend import Backend
from .chain import (
    GENESIS_HASH,
    KEY_ENV,
    ChainBase,
    ChainHead,
    ChainKey,
    canonical_json,
    chain_hash,
)
from .checkpoint import Checkpoint
from .prune import PruneResult
from .query import MAX_PAGE, Page, StoredEvent
from .verify import Verification

__all__ = [
    "GENESIS_HASH",
    "KEY_ENV",
    "MAX_PAGE",
    "ActivityCount",
    "AuditStore",
    "Backend",
    "ChainBase",
    "ChainHead",
    "ChainKey",
    "Checkpoint",
    "Page",
    "PruneResult",
    "StoredEvent",
    "Verification",
    "canonical_json",
    "chain_hash",
]
