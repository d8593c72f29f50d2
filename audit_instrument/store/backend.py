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

For the viewer and retention (``prune``):

* :meth:`Backend.find` — the row of one event, by idempotency key.
* :meth:`Backend.activity` — events per hour or day by action, from counts
  the database keeps up to date as rows are written (never a scan of the
  events); ``None`` when the store has no such counts yet.
* :meth:`Backend.base` — where a pruned chain starts (``None``: at genesis).
* :meth:`Backend.prunable` — the last row that may be pruned before a time:
  rows go in chain order, so it is the row before the first one that is not
  old enough.
* :meth:`Backend.archive_rows` / :meth:`Backend.archive_targets` — the rows
  of a range and their target entries, streamed in ``seq`` order on a
  connection of their own, for the archive
  (:func:`~audit_instrument.store.archive.write_archive` writes them to a
  store file whatever the backend).
* :meth:`Backend.prune_upto` — one transaction that deletes rows up to one,
  their target entries and activity counts, and records the new base (and
  renews the head MAC, which covers the base).
* :meth:`Snapshot.base` and :meth:`Snapshot.activity` — what ``verify``
  checks of those.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from .activity import ActivityQuery
from .chain import ChainBase, Linker, Seal
from .query import Filters

__all__ = [
    "ActivityRow",
    "Backend",
    "HeadSigner",
    "NewRow",
    "Row",
    "Snapshot",
    "StoredRow",
    "TargetRow",
]


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

ActivityRow = tuple[str, str, str, int]
"""``(bucket, group, action, events)`` of an activity table: the bucket is the
stored ``occurred_at`` cut to the hour (``2026-01-31T12``) or the day (``2026-01-31``)."""


class HeadSigner(Protocol):
    """Computes the head MAC of a keyed chain (``base``: where a pruned chain starts)."""

    def __call__(self, seq: int, digest: str, base: ChainBase | None = None) -> str: ...


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

    def base(self) -> ChainBase | None:
        """Where the chain starts, if it was pruned."""
        ...

    def activity(self, unit: str) -> Iterator[ActivityRow] | None:
        """The activity counts per ``"hour"`` or ``"day"``, or ``None`` if there are none."""
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

    def start_seal(self, key_id: str, head_mac: HeadSigner) -> Seal:
        """Key the chain from the next row on (one transaction); return the seal in force.

        The head MAC covers the head and, on a pruned chain, its base. If the
        chain is keyed already, return its seal unchanged.
        """
        ...

    def append(
        self, rows: Sequence[NewRow], linker: Callable[[Seal | None], Linker]
    ) -> list[int | None]:
        """Append ``rows`` in one transaction; their ``seq``, or ``None`` for a duplicate.

        The new head MAC (on a keyed chain) is ``linker.head_mac(seq, hash, base)``
        with the base read in the same transaction.
        """
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

    def find(self, idempotency_key: str) -> StoredRow | None:
        """The row of the event with this idempotency key, or ``None``."""
        ...

    def activity(self, query: ActivityQuery) -> list[tuple[str, str, int]] | None:
        """``(bucket, action, events)`` summed over the query's groups, in bucket order.

        Read from counts kept as rows are written; ``None`` if the store
        keeps none (an old schema opened read-only).
        """
        ...

    def base(self) -> ChainBase | None:
        """Where the chain starts if it was pruned; ``None`` if it starts at genesis."""
        ...

    def prunable(self, before: str) -> int:
        """The last row ``K`` such that every row after the base up to ``K`` occurred
        before ``before`` (stored text form); the base's ``seq`` (or 0) if none did."""
        ...

    def archive_rows(self, first: int, last: int) -> Iterator[Row]:
        """Rows ``first..last`` in ``seq`` order, read on a connection of their own."""
        ...

    def archive_targets(self, first: int, last: int) -> Iterator[TargetRow]:
        """The target entries of rows ``first..last`` beyond each row's first target (an
        archive indexes first targets itself), read on a connection of their own."""
        ...

    def prune_upto(
        self, upto: int, after: int, pruned_at: str, linker: Callable[[Seal | None], Linker]
    ) -> ChainBase:
        """Delete rows ``after+1..upto`` in one transaction; return the new base.

        ``after`` is the base's ``seq`` the caller expects (0 at genesis): if
        another process moved it meanwhile, raise
        :class:`~audit_instrument.AuditError` and change nothing. The target
        entries and activity counts of the rows go too; the base becomes row
        ``upto`` with its hash, and on a keyed chain the head MAC is renewed
        (``linker.head_mac`` with the new base).
        """
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
