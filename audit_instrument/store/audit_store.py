""":class:`AuditStore`: the store as a sender — group-committed writes, queries, verify.

The front speaks to its database only through the
:class:`~audit_instrument.store.backend.Backend` seam: one SQLite file for a
path, a PostgreSQL schema for a ``postgresql://`` URL.
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

from .. import signals
from ..delivery.group_commit import GroupCommit
from ..errors import AuditConfigError, AuditError, AuditValidationError, DeliveryError
from ..event import AuditEvent, format_timestamp
from . import prune as _prune
from .activity import ActivityCount, bucket_start, make_activity_query
from .backend import Backend, NewRow, StoredRow
from .chain import (
    ChainBase,
    ChainHead,
    ChainKey,
    Linker,
    Seal,
    head_text,
    record_targets,
    resolve_key,
)
from .checkpoint import Checkpoint
from .postgres_transaction import Transactions, current_scope
from .postgres_url import is_postgres_url
from .query import Page, StoredEvent, check_limit, decode_cursor, encode_cursor, make_filters
from .sqlite import SQLiteBackend
from .verify import Verification, walk

if TYPE_CHECKING:
    from ..delivery.group_commit import GroupCommit

__all__ = ["AuditStore"]

T = TypeVar("T")


class _Pending:
    """One event on its way into the chain; ``seq`` is set once it is committed."""

    __slots__ = ("event", "row", "seq")

    def __init__(self, event: AuditEvent, row: NewRow) -> None:
        self.event = event
        self.row = row
        self.seq: int | None = None


def _new_row(event: AuditEvent) -> NewRow:
    record = event.to_record()
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return NewRow(
        occurred_at=format_timestamp(event.occurred_at),
        action=event.action,
        actor_id=event.actor_id,
        target_id=event.target_id,
        group=event.group,
        idempotency_key=event.idempotency_key,
        record=text,  # == canonical_json(event)
        targets=record_targets(record),
    )


class AuditStore:
    """The audit store: a sender writing hash-chained events to SQLite or PostgreSQL.

    ``path`` is a file, created (mode 0600, WAL journal) if missing, or a
    ``postgresql://`` (``postgres://``) URL: then the store lives in the
    PostgreSQL schema ``schema`` (default ``audit``, or the URL's
    ``schema=``), made on first use, and every process on every host may
    write to it (see ``docs/postgres.md``; needs ``audit_instrument[postgres]``).
    ``readonly=True``
    opens an existing store for queries and :meth:`verify` only.
    ``synchronous="FULL"`` also survives power loss (an fsync per commit);
    the default ``"NORMAL"`` survives a crash of the process, the WAL
    default. ``key`` (text or bytes, at least 16 bytes; default: the
    ``AUDIT_STORE_KEY`` environment variable) keys the chain with
    HMAC-SHA256, so rewriting it needs the key; the key is never written to
    the file or shown. A file that is not an audit store, is damaged, cannot
    be written, or is keyed with another key raises
    :class:`~audit_instrument.AuditConfigError` here; so does a server that
    cannot be reached.

    >>> from audit_instrument import configure
    >>> store = AuditStore("audit.db")            # doctest: +SKIP
    >>> configure(store)                          # doctest: +SKIP
    >>> for stored in store.query(action="tweet.update"):   # doctest: +SKIP
    ...     print(stored.seq, stored.event.metadata)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        timeout: float = 10.0,
        key: str | bytes | ChainKey | None = None,
        schema: str | None = None,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise AuditConfigError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self.readonly = readonly
        self._key = resolve_key(key)
        self._closed = False
        self._locks()
        self._transactions: Transactions | None = None
        self.path: Path | None = None
        self.url: str | None = None  # without its password
        self._address, self._schema = path, schema  # for reopen(); never shown
        if is_postgres_url(path):
            from .postgres import PostgresBackend  # the driver is imported only when needed

            postgres = PostgresBackend(
                str(path), schema=schema, readonly=readonly, synchronous=synchronous,
                timeout=timeout,
            )
            self._backend: Backend = postgres
            self.url = postgres.location
        else:
            if schema is not None:
                raise AuditConfigError("schema= is for PostgreSQL stores (a postgresql:// URL)")
            self.path = Path(path)
            self._backend = SQLiteBackend(
                self.path, readonly=readonly, synchronous=synchronous, timeout=timeout
            )
        self._where = self._backend.location
        try:
            if not readonly:
                self._seal_or_check()
        except BaseException:
            self._backend.close()
            raise
        self._commits: GroupCommit[_Pending] = GroupCommit(
            self._write, name=f"audit store {self._where}"
        )
        if self.url is not None and not readonly:
            self._transactions = Transactions(self, postgres)
        _stores.add(self)

    def _locks(self) -> None:
        self._pid = os.getpid()
        self._write_lock = threading.Lock()  # held for each transaction; and across fork()
        self._read_lock = threading.Lock()  # one reader at a time; and across fork()
        self._gate = threading.Condition(threading.Lock())  # counts sends under way
        self._active = 0

    def _seal_or_check(self) -> None:
        """Key the chain if a key is given and it is not yet; refuse a key that doesn't fit."""
        key = self._key
        seal = self._backend.seal()
        if key is not None and seal is None:
            seal = self._backend.start_seal(
                key.id,
                lambda seq, digest, base=None: key.mac(head_text(seq, digest, base)),
            )
        self._linker(seal)

    def _linker(self, seal: Seal | None) -> Linker:
        return Linker(seal, self._key, self._where)

    @property
    def keyed(self) -> bool:
        """Whether this store's chain is keyed (HMAC-SHA256)."""
        return self._read(self._backend.seal) is not None

    # -- fork ----------------------------------------------------------------

    def _check_process(self) -> None:
        """A fork that skipped the ``os.register_at_fork`` hooks: start over here too."""
        if self._pid != os.getpid():
            with _fork_lock:
                if self._pid != os.getpid():
                    self._after_fork(idle=False)

    def _after_fork(self, *, idle: bool) -> None:
        # The parent's connections, locks, queue and waiting senders are the
        # parent's: the child starts with its own, opened on first use.
        self._locks()
        self._commits.after_fork()
        if not self._closed:
            self._backend.after_fork(idle=idle)
            if self._transactions is not None:
                self._transactions.after_fork()

    # -- writing -------------------------------------------------------------

    def send(self, event: AuditEvent) -> int | None:
        """Store ``event``; return its row number once it is committed.

        Returns ``None`` when an event with the same idempotency key is
        already stored (it is not stored twice), and inside an
        :meth:`in_transaction` block, where the event is written in the
        caller's transaction and chained once that commits. Raises
        :class:`~audit_instrument.DeliveryError` (and reports
        ``signals.event_failed``) when the write fails; nothing of the
        failed transaction is kept, and other threads' events sent at the
        same moment are stored all the same.
        """
        if self.readonly:
            raise AuditConfigError(f"{self._where}: opened read-only; cannot store events")
        scope = current_scope()
        if scope is not None and scope.store is self:
            return scope.send(event)  # in_transaction: in the caller's transaction (or done)
        self._check_process()
        with self._gate:
            if self._closed:
                raise AuditError(f"{self!r} is closed")
            self._active += 1
        item: _Pending | None = None
        failure: Exception | None = None
        try:
            item = _Pending(event, _new_row(event))
            self._commits.submit([item])
        except Exception as error:  # reported below, once the gate is left
            failure = error
        finally:
            with self._gate:
                self._active -= 1
                self._gate.notify_all()
        if failure is not None or item is None:
            self._failed(event, failure)
        if item.seq is not None:
            signals.report_delivered(event, self)
        return item.seq

    def _write(self, items: list[_Pending]) -> None:
        """Append ``items`` to the chain in one transaction (GroupCommit's writer)."""
        with self._write_lock:
            seqs = self._backend.append([item.row for item in items], self._linker)
        for item, seq in zip(items, seqs, strict=True):
            item.seq = seq

    def in_transaction(self, conn: object) -> AbstractContextManager[None]:
        """Write the events of the block in ``conn``'s open transaction (PostgreSQL stores).

        Every event this store receives inside the block (``@audit`` calls,
        ``with audit(...)``, ``emit``, ``send``) is written through ``conn``
        — a psycopg ``Connection``, a SQLAlchemy ``Connection`` or
        ``Session``, or Django's ``connection`` — so it commits or rolls back
        with the caller's own changes. Concurrent transactions don't wait
        for each other: the rows are chained once their transaction has
        committed, by this or any other store on the database, and only then
        do the other senders get the events (none of a rolled-back one).
        Raises :class:`~audit_instrument.DeliveryError` at the end of the
        block if an event could not be written (the transaction should then
        be rolled back). See ``docs/postgres.md``.

        >>> with psycopg.connect(url) as conn, store.in_transaction(conn):   # doctest: +SKIP
        ...     conn.execute("UPDATE tweets SET body = %s WHERE id = %s", (body, 5))
        ...     update_tweet(5, body)   # its audit event commits with the UPDATE
        """
        if self._transactions is None:
            kind = "opened read-only" if self.readonly else "a SQLite store"
            raise AuditConfigError(
                f"{self._where}: in_transaction() needs a writable PostgreSQL store ({kind})"
            )
        return self._transactions.block(conn)

    def _failed(self, event: AuditEvent, error: Exception | None) -> NoReturn:
        failure = DeliveryError(
            f"{self._where}: could not store event {event.action!r} ({error})",
            retryable=error is not None and self._backend.transient(error),
        )
        signals.report_failed(event, self, failure)
        raise failure from error

    # -- reading -------------------------------------------------------------

    def _read(self, fn: Callable[[], T]) -> T:
        self._check_process()
        with self._read_lock:
            if self._closed:
                raise AuditError(f"{self!r} is closed")
            return fn()

    def query(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        group: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Events matching every given filter, newest ``occurred_at`` first.

        ``actor`` and ``target`` are ids (``target`` matches any of an
        event's targets); ``since`` is inclusive and ``until`` exclusive
        (datetimes, naive = UTC, or ISO 8601 strings). At most ``limit``
        (1-10000) events per page; pass ``page.next_cursor`` as ``cursor``
        with the same filters for the next page. Bad values raise
        :class:`~audit_instrument.AuditValidationError` naming the filter.

        >>> page = store.query(target="tweet_5", since="2026-01-01")   # doctest: +SKIP
        >>> older = store.query(target="tweet_5", since="2026-01-01",
        ...                     cursor=page.next_cursor)                 # doctest: +SKIP
        """
        limit = check_limit(limit)
        filters = make_filters(actor, action, target, group, since, until)
        after = None if cursor is None else decode_cursor(cursor)
        rows = self._read(lambda: self._backend.page(filters, limit + 1, after))
        items = [self._load(seq, record, digest) for _, seq, record, digest in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = encode_cursor(last[0], last[1])
        return Page(items, next_cursor)

    def _load(self, seq: int, record: str, digest: str) -> StoredEvent:
        try:
            return StoredEvent(seq, AuditEvent.from_dict(json.loads(record)), digest)
        except (ValueError, TypeError, RecursionError) as error:
            raise AuditConfigError(
                f"{self._where}: row {seq} does not hold a valid event ({error}); "
                "run verify to check the chain"
            ) from error

    def iter_events(self, *, page_size: int = 500, **filters: Any) -> Iterator[StoredEvent]:
        """Every event matching ``filters`` (as :meth:`query`), newest first, page by page."""
        cursor: str | None = None
        while True:
            page = self.query(limit=page_size, cursor=cursor, **filters)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def count(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        target: str | None = None,
        group: str | None = None,
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> int:
        """How many events match the filters (all of them without filters)."""
        filters = make_filters(actor, action, target, group, since, until)
        return self._read(lambda: self._backend.count(filters))

    def get(self, idempotency_key: str) -> StoredEvent | None:
        """The stored event with this idempotency key, or ``None``."""
        if not isinstance(idempotency_key, str) or not idempotency_key:
            raise AuditValidationError(
                "idempotency_key", "must be a non-empty string", idempotency_key
            )
        row = self._read(lambda: self._backend.find(idempotency_key))
        return None if row is None else self._load(row[1], row[2], row[3])

    def records(
        self, *, page_size: int = 5000, cursor: str | None = None, **filters: Any
    ) -> Iterator[StoredRow]:
        """Every row matching ``filters`` (as :meth:`query`), newest first, unparsed.

        Yields ``(occurred_at, seq, record, hash)``, ``record`` being the
        stored canonical JSON: for exports, which need not build an event per
        row. Pages of ``page_size`` rows are read as consumed, each on its own.
        """
        limit = check_limit(page_size)
        checked = make_filters(**filters)
        after = None if cursor is None else decode_cursor(cursor)
        while True:
            rows = self._read(partial(self._backend.page, checked, limit, after))
            yield from rows
            if len(rows) < limit:
                return
            after = (rows[-1][0], rows[-1][1])

    def activity(
        self,
        *,
        unit: str = "day",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
        groups: Iterable[str] | None = None,
        action: str | None = None,
    ) -> list[ActivityCount] | None:
        """Events per hour or day (``unit``) and action, oldest bucket first.

        Read from counts the store keeps as it writes (see
        :mod:`~audit_instrument.store.activity`), never from the events, so
        it costs the same at a million rows as at ten. ``groups`` limits the
        counts to those groups (default: all); the buckets are those
        overlapping ``[since, until)``. ``None`` when the file keeps no
        counts (a store of an older schema opened read-only).
        """
        query = make_activity_query(unit, since, until, groups, action)
        found = self._read(lambda: self._backend.activity(query))
        if found is None:
            return None
        return [
            ActivityCount(bucket_start(bucket, query.unit), name, events)
            for bucket, name, events in found
        ]

    def base(self) -> ChainBase | None:
        """Where the chain starts if rows were pruned from it (``None``: at row 1)."""
        return self._read(self._backend.base)

    def prune(
        self,
        *,
        before: datetime | str | timedelta,
        archive: str | os.PathLike[str] | None,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> _prune.PruneResult:
        """Move the rows older than ``before`` into ``archive``; both files verify.

        ``before``: a datetime, ISO text, or an age (``timedelta(days=90)``).
        ``archive``: a new audit store file, or the one the last prune wrote
        (extended); ``None`` deletes the rows. Rows leave from the start of the
        chain, checked as they are copied; a broken chain raises AuditError
        and nothing changes. ``progress(phase, done, total)`` is called as it
        goes. See :mod:`~audit_instrument.store.prune`.
        """
        if self.readonly:
            raise AuditConfigError(f"{self._where}: opened read-only; cannot prune")
        if archive is not None and self.path is not None and _same_file(archive, self.path):
            raise AuditConfigError(f"{os.fsdecode(archive)}: is the store itself, not an archive")
        self._check_process()
        return _prune.prune(
            self._backend, before=before, archive=archive, key=self._key,
            linker=self._linker, write_lock=self._write_lock, read=self._read,
            checkpoint=self.checkpoint, progress=progress,
        )

    def reopen(self, *, readonly: bool = True) -> AuditStore:
        """Another handle on this store, with connections of its own and the same key.

        For a long read beside other work: ``verify`` of a large store holds
        its handle's reader for the whole walk, so a viewer verifies on a
        second handle while it keeps answering queries on the first.
        """
        return AuditStore(self._address, readonly=readonly, key=self._key, schema=self._schema)

    def head(self) -> ChainHead:
        """The committed head of the chain: last row number and its hash."""
        seq, digest = self._read(self._backend.head)
        return ChainHead(seq, digest)

    def checkpoint(self) -> str:
        """The committed head as a checkpoint line, signed when the store has a key.

        Keep it outside the store — a log line, a ticket, an audit event —
        and pass it to :meth:`verify` (``against=``) later to prove that no
        row up to it was cut off or rewritten::

            aic1.1042.<hash of row 1042>.2026-01-31T12:00:00Z.<MAC, or - unkeyed>
        """
        seq, digest = self._read(self._backend.head)
        return str(Checkpoint.make(seq, digest, self._key))

    def verify(
        self,
        *,
        progress: Callable[[int], None] | None = None,
        against: str | Checkpoint | None = None,
    ) -> Verification:
        """Check the file, then walk the chain in row order; report the first problem.

        First SQLite's integrity check and the schema (every table and index
        the store needs, unchanged). Then each row: an edited row (its hash
        no longer matches), a deleted or moved row (the next row's hash, or
        the row numbers, no longer line up), a column or target entry that
        disagrees with the hashed event, rows cut off the end (the head
        names more rows than there are). On a keyed chain the hashes and the
        head's MAC need the key, so a recomputed chain or a moved head is
        caught; ``against`` (a :meth:`checkpoint` line) also catches rows cut
        off or rewritten up to that checkpoint on any chain. ``progress`` is
        called with the number of rows checked, every 10 000 rows.

        Raises :class:`~audit_instrument.AuditConfigError` when the chain
        (or the checkpoint) is keyed and no key was given.
        """
        checkpoint = (
            against if isinstance(against, Checkpoint) or against is None
            else Checkpoint.parse(against)
        )

        def run() -> Verification:
            problems = self._backend.check()
            if problems:
                return Verification(0, None, problems[0])
            with self._backend.snapshot() as snapshot:
                return walk(
                    snapshot, self._key, where=self._where, against=checkpoint,
                    progress=progress,
                )

        return self._read(run)

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Close the file; later sends and queries raise :class:`~audit_instrument.AuditError`.

        Sends already under way finish first (their events are stored);
        sends that start after ``close`` raise.
        """
        with self._gate:
            if self._closed:
                return
            self._closed = True  # refuse new sends at once, or busy senders starve close()
            while self._active:
                self._gate.wait()
        self._commits.close()
        if self._transactions is not None:
            self._transactions.close()
        with self._write_lock, self._read_lock:
            self._backend.close()
        _stores.discard(self)

    def __enter__(self) -> AuditStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = " readonly" if self.readonly else ""
        if self.url is not None:
            return f"<AuditStore url={self.url!r}{mode}>"
        return f"<AuditStore path={str(self.path)!r}{mode}>"


def _same_file(a: str | os.PathLike[str], b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # missing, or no usable name: not the same file
        return False


# -- fork(): no store is mid-transaction when the process is copied ----------------------

_stores: weakref.WeakSet[AuditStore] = weakref.WeakSet()
_held: list[AuditStore] = []
_fork_lock = threading.Lock()


def _before_fork() -> None:
    # Wait for each store's transaction or read to finish, and keep new ones
    # from starting, so the child copies no SQLite lock or connection in use.
    for store in list(_stores):
        store._write_lock.acquire()
        store._read_lock.acquire()
        _held.append(store)


def _after_fork_in_parent() -> None:
    while _held:
        store = _held.pop()
        store._read_lock.release()
        store._write_lock.release()


def _after_fork_in_child() -> None:
    held = {id(store) for store in _held}
    _held.clear()
    for store in list(_stores):
        try:
            store._after_fork(idle=id(store) in held)
        except Exception:  # the store retries on first use; the fork itself must go on
            store._pid = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork,
        after_in_parent=_after_fork_in_parent,
        after_in_child=_after_fork_in_child,
    )
