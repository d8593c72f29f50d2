"""The seam between :class:`AuditStore` and a database: what a backend must do.

The store front (sending, group commit, queries, verify, checkpoints) speaks
only to this protocol; :class:`~audit_instrument.store.sqlite.SQLiteBackend`
implements it for one SQLite file,
:class:`~audit_instrument.store.postgres.PostgresBackend` for a PostgreSQL
schema, over its own connections:

* :meth:`Backend.append` — one transaction that reads the chain head (under
  a lock, so concurrent writers take turns), inserts each row unless its
  idempotency key is stored, and moves the head. The hashes come from the
  :class:`~audit_instrument.store.chain.Linker` made from the seal read in
  that transaction, so chain positions are assigned while the head is held.
* :meth:`Backend.page` / :meth:`Backend.count` — the rows matching
  :class:`~audit_instrument.store.query.Filters`, newest first, keyset-paged
  by ``(occurred_at, seq)``; ``target`` matches any target of an event.
* :meth:`Backend.snapshot` — one consistent read of everything ``verify``
  walks, rows in chain order, and how many committed events wait to be
  chained (a PostgreSQL store's writes inside callers' transactions).
* :meth:`Backend.check` — the database's own integrity and schema checks.
* :meth:`Backend.after_fork` — in a forked child: drop the parent's
  connections, use fresh ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from .chain import Linker, Seal
from .query import Filters

__all__ = ["Backend", "NewRow", "Row", "Snapshot", "StoredRow", "TargetRow"]


@dataclass(frozen=True, slots=True)
class NewRow:
    """One event ready to append: the columns it is queried by and its canonical JSON."""

    occurred_at: str
    action: str
    actor_id: str
    target_id: str
    group: str
    idempotency_key: str
    record: str
    targets: tuple[str, ...]  # every target id, the first being target_id


StoredRow = tuple[str, int, str, str]
"""``(occurred_at, seq, record, hash)`` of a row a query found."""

Row = tuple[int, str, str, str, str, str, str, str, str]
"""``(seq, occurred_at, action, actor_id, target_id, group, idempotency_key, record, hash)``."""

TargetRow = tuple[int, str, str]
"""``(seq, target_id, occurred_at)`` of the target index."""


class Snapshot(Protocol):
    """One consistent view of a store, for :meth:`AuditStore.verify`."""

    def head(self) -> tuple[int, str] | None:
        """The chain head ``(seq, hash)``, or ``None`` if it is gone."""
        ...

    def seal(self) -> Seal | None:
        """The key seal, or ``None`` for an unkeyed chain."""
        ...

    def rows(self) -> Iterator[Row]:
        """Every row in ``seq`` order."""
        ...

    def targets(self, *, ordered: bool) -> Iterator[TargetRow] | None:
        """The target index (in ``seq`` order if ``ordered``), or ``None`` if there is none."""
        ...

    def pending(self) -> int:
        """Committed events not chained yet (written in callers' transactions); 0 if none."""
        ...


class Backend(Protocol):
    """What a database does for :class:`~audit_instrument.store.AuditStore`.

    Methods may be called from many threads; the front serialises
    :meth:`append` calls (one writer per store object) and reads (one reader
    at a time), and a backend may rely on that. A write that fails raises the
    driver's exception (the front reports it as a
    :class:`~audit_instrument.DeliveryError`); reads raise the library's
    errors (:class:`~audit_instrument.AuditConfigError` for a damaged store
    or a missing chain head).
    """

    location: str
    """The store as shown in messages (a path; a URL without its password)."""

    readonly: bool

    def seal(self) -> Seal | None:
        """The committed key seal, or ``None`` for an unkeyed chain."""
        ...

    def start_seal(self, key_id: str, head_mac: Callable[[int, str], str]) -> Seal:
        """Key the chain from the next row on (one transaction); return the seal in force.

        If the chain is keyed already, return its seal unchanged.
        """
        ...

    def append(
        self, rows: Sequence[NewRow], linker: Callable[[Seal | None], Linker]
    ) -> list[int | None]:
        """Append ``rows`` in one transaction; their ``seq``, or ``None`` for a duplicate."""
        ...

    def transient(self, error: Exception) -> bool:
        """Whether another attempt after ``error`` from :meth:`append` could succeed."""
        ...

    def head(self) -> tuple[int, str]:
        """The committed chain head ``(seq, hash)``."""
        ...

    def page(
        self, filters: Filters, limit: int, after: tuple[str, int] | None
    ) -> list[StoredRow]:
        """Up to ``limit`` rows matching ``filters``, newest first, after the cursor row."""
        ...

    def count(self, filters: Filters) -> int:
        """How many rows match ``filters``."""
        ...

    def snapshot(self) -> AbstractContextManager[Snapshot]:
        """A consistent read for ``verify``."""
        ...

    def check(self) -> list[str]:
        """Problems the database itself finds (integrity, schema); empty when sound."""
        ...

    def after_fork(self, *, idle: bool) -> None:
        """In a forked child: stop using the parent's connections.

        ``idle`` is true when no thread of the parent was using them at the
        fork (the store held its locks across it), so they can be closed;
        otherwise they are abandoned untouched.
        """
        ...

    def close(self) -> None:
        """Close every connection."""
        ...
