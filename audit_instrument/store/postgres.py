"""The PostgreSQL backend: one store that every process on every host writes to.

The store's tables live in one schema (see :mod:`.postgres_schema`), made on
first use. Every writer appends under a row lock on the one-row chain head
(``SELECT … FOR UPDATE``), so the chain has one order, with no forks and no
gaps, however many writers there are. The lock is held only for the
insert-and-advance: the head, the stored idempotency keys among the new
rows, one statement writing the rows, their targets and the new head, and
a ``COMMIT`` that does not wait for the disk — the flush is waited for after
the lock is released (see :meth:`PostgresBackend._holding_head`). Within a process
the front's group commit makes the threads share each transaction.

A writing store holds one connection (plus one for queries and ``verify``,
opened on first use). A connection lost mid-write (a server restart, a
failover) is opened again and the write retried until ``timeout``; a
write whose ``COMMIT`` may have landed before the connection dropped is
recognised on the retry by its idempotency keys, so nothing is stored
twice. The password is used to connect and is never shown: messages name
the store by :attr:`PostgresBackend.location`, the URL without it.

Events written inside a caller's transaction go to the ``pending`` table
(see :mod:`.postgres_transaction`); :meth:`PostgresBackend.chain_pending`
moves committed ones into the chain, assigning their places while it holds
the head.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import psycopg

from ..errors import AuditConfigError, AuditError
from .activity import ActivityQuery
from .backend import NewRow, Row, StoredRow, TargetRow
from .chain import ChainBase, Linker, Seal
from .postgres_connect import (
    Connection,
    can_flush_apart,
    first_line,
    lost,
    open_connection,
    prepare,
    store_version,
)
from .postgres_schema import SCHEMA_VERSION, schema_problems
from .postgres_snapshot import Snapshot
from .postgres_sql import Statements, row_from_record, select
from .postgres_url import StoreURL, parse_store_url
from .query import Filters

__all__ = ["PostgresBackend", "row_from_record"]

T = TypeVar("T")

_CHAIN_BATCH = 1000  # pending rows chained per transaction

# Connections a forked child inherited: closing one would end the parent's session
# (libpq tells the server goodbye), so the child keeps them, unused, until it exits.
_inherited: list[Connection] = []


_IDLE = psycopg.pq.TransactionStatus.IDLE


class _DuplicateError(Exception):
    """A row's idempotency key was stored already: roll back and look the keys up first."""


class PostgresBackend:
    """An audit store in a PostgreSQL schema (see :class:`~.backend.Backend`).

    ``url`` is a ``postgresql://`` URL (see :mod:`.postgres_url`); ``schema``
    the schema of the store's tables (default ``audit``, or the URL's
    ``schema=``). ``readonly`` never creates or changes anything and reads
    in read-only transactions (a hot standby serves it). ``synchronous``:
    ``"FULL"`` makes the store's commits wait for the WAL flush
    (``synchronous_commit = on``) even where the server's default is off;
    ``"NORMAL"`` keeps the server's setting. ``timeout`` bounds connecting,
    waiting for the chain head, and retrying a write after the connection
    was lost.
    """

    flush_apart = True
    """Wait for the WAL flush after releasing the head (see :meth:`_holding_head`);
    ``False`` commits with the flush under the head, for comparison in the benchmark."""

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        readonly: bool = False,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        timeout: float = 10.0,
    ) -> None:
        self._url: StoreURL = parse_store_url(url, schema)
        self.location = self._url.shown
        self.schema = self._url.schema
        self.readonly = readonly
        self._synchronous = synchronous
        self._timeout = timeout
        self._sql = Statements(self.schema)
        self._flush_apart = self.flush_apart
        self._mutexes()
        self._down_since: float | None = None
        self._conn: Connection | None = None
        self._reader: Connection | None = None
        try:
            conn = self._open()
        except psycopg.Error as error:
            raise AuditConfigError(
                f"{self.location}: cannot connect to PostgreSQL ({self._scrub(error)})"
            ) from None
        try:
            prepare(conn, self.schema, self.location, readonly=readonly, scrub=self._url.scrub)
            if self._flush_apart and not readonly:
                self._flush_apart = can_flush_apart(conn)
        except BaseException:
            conn.close()
            raise
        if readonly:
            self._reader = conn
        else:
            self._conn = conn

    def _mutexes(self) -> None:
        self._write_mutex = threading.Lock()  # the writing connection: one user at a time
        self._read_mutex = threading.Lock()

    def _scrub(self, error: BaseException) -> str:
        return self._url.scrub(first_line(error))

    # -- connecting ---------------------------------------------------------

    def _open(self) -> Connection:
        return open_connection(self._url, timeout=self._timeout, readonly=self.readonly,
                               synchronous=self._synchronous)

    def _drop(self, conn: Connection | None) -> None:
        if conn is not None:
            try:
                conn.close()
            except psycopg.Error:
                pass

    # -- writing: one user of the writer connection at a time, retried over reconnects ---

    def _writing(self, work: Callable[[Connection, bool], T]) -> T:
        """Run ``work(conn, retried)`` in the writer; reconnect and retry until ``timeout``.

        ``retried`` tells ``work`` that an earlier attempt may have committed.
        Once the server has been unreachable for a whole ``timeout``, each
        call makes one attempt only, until one succeeds: a queue of writes
        fails at once rather than one timeout after another.
        """
        if self.readonly:
            raise AuditConfigError(f"{self.location}: opened read-only; cannot write")
        with self._write_mutex:
            now = time.monotonic()
            deadline = now if self._down_since is not None else now + self._timeout
            delay = 0.05
            retried = False
            while True:
                conn = self._conn
                try:
                    if conn is None or conn.closed or conn.broken:
                        self._drop(conn)
                        self._conn = conn = None
                        self._conn = conn = self._open()
                    result = work(conn, retried)
                except psycopg.Error as error:
                    if not lost(error, conn):
                        raise
                    self._drop(conn)
                    self._conn = None
                    if time.monotonic() + delay > deadline:
                        if self._down_since is None:
                            self._down_since = time.monotonic()
                        raise
                    time.sleep(delay)
                    delay = min(delay * 2, 1.0)
                    retried = True
                    continue
                self._down_since = None
                return result

    def seal(self) -> Seal | None:
        row = self._read(lambda conn: conn.execute(self._sql.seal).fetchone())
        return None if row is None else Seal(int(row[0]), str(row[1]), str(row[2]))

    def start_seal(self, key_id: str, head_mac: Callable[[int, str], str]) -> Seal:
        def work(conn: Connection, retried: bool) -> Seal:
            with self._holding_head(conn) as (seq, digest, keyed_from, old_id, old_mac):
                if keyed_from is not None:
                    return Seal(int(keyed_from), str(old_id), str(old_mac))
                seal = Seal(int(seq) + 1, key_id, head_mac(int(seq), str(digest)))
                conn.execute(self._sql.insert_seal, (seal.keyed_from, seal.key_id, seal.head_mac))
            return seal

        return self._writing(work)

    def _missing_head(self) -> AuditConfigError:
        return AuditConfigError(
            f"{self.location}: the chain head is missing (deleted behind the store's back); "
            "run verify to see what else changed"
        )

    @contextmanager
    def _holding_head(self, conn: Connection) -> Iterator[tuple[Any, ...]]:
        """A transaction holding the chain head: yields ``(seq, hash, keyed_from, key_id,
        head_mac)``; commits (and waits for the flush) if the block finishes, else rolls back.

        Three round trips: ``BEGIN`` and the lock; the caller's statements;
        ``COMMIT`` and the flush. The head is held only for the
        insert-and-advance: its transaction commits without waiting for the
        WAL flush (``synchronous_commit = off`` for that transaction alone);
        in the same round trip as the ``COMMIT``, the writer then commits one
        WAL record (a transactional logical message) at the session's
        ``synchronous_commit``, which flushes the WAL up to it — and so the
        rows before it — after the head was released. Writers take turns on
        the head without an fsync each in between, and concurrent flushes are
        shared (``benchmarks/bench_postgres.py`` compares the flush under the
        head). A crash before the flush loses that transaction and every
        later one with it (the WAL is replayed up to a point), so the chain
        stays whole; the caller hears of success only after the flush. Rows
        are visible to readers from the ``COMMIT`` on, a moment before they
        are durable. Without the right to call ``pg_logical_emit_message``
        (everyone's by default) the store flushes under the head.
        """
        apart = self._flush_apart
        cursor = conn.execute(self._sql.lock_head if apart else self._sql.lock_head_flushed)
        try:
            cursor.nextset()  # past BEGIN's result
            head = cursor.fetchone()
            if head is None:
                raise self._missing_head()
            yield tuple(head[:5])
        except BaseException:
            if not conn.closed and conn.info.transaction_status != _IDLE:
                try:
                    conn.execute("ROLLBACK")
                except psycopg.Error:
                    pass  # the connection is going; the server rolls back
            raise
        conn.execute(self._sql.commit_and_flush if apart else "COMMIT")

    def append(
        self, rows: Sequence[NewRow], linker: Callable[[Seal | None], Linker]
    ) -> list[int | None]:
        def work(conn: Connection, retried: bool) -> list[int | None]:
            if not retried:
                try:  # as a rule no key is stored yet: no need to look them up first
                    return self._append(conn, rows, linker, check_keys=False)
                except _DuplicateError:
                    pass
            # After a lost connection, rows already stored may be this call's own
            # (its COMMIT landed before the connection dropped): answer their seq.
            return self._append(conn, rows, linker, check_keys=True, keep_existing=retried)

        return self._writing(work)

    def _append(
        self,
        conn: Connection,
        rows: Sequence[NewRow],
        linker: Callable[[Seal | None], Linker],
        *,
        check_keys: bool,
        keep_existing: bool = False,
    ) -> list[int | None]:
        with self._holding_head(conn) as head:
            existing: dict[str, int] = {}
            if check_keys:
                found = conn.execute(
                    self._sql.existing, ([row.idempotency_key for row in rows],)
                ).fetchall()
                existing = {str(key): int(seq) for key, seq in found}
            return self._link(conn, head, rows, existing, linker, keep_existing=keep_existing)

    def _link(
        self,
        conn: Connection,
        head: tuple[Any, ...],
        rows: Sequence[NewRow],
        existing: dict[str, int],
        linker: Callable[[Seal | None], Linker],
        *,
        keep_existing: bool,
    ) -> list[int | None]:
        """Insert ``rows`` after the locked ``head`` (inside its transaction); their seqs.

        Raises :class:`_DuplicateError` if a row's idempotency key turns out to be
        stored already (not in ``existing``): the caller rolls back.
        """
        seq, previous = int(head[0]), str(head[1])
        seal = None if head[2] is None else Seal(int(head[2]), str(head[3]), str(head[4]))
        link = linker(seal)
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [], [])
        targets: tuple[list[Any], ...] = ([], [], [])
        seqs: list[int | None] = []
        taken: set[str] = set()
        for row in rows:
            key = row.idempotency_key
            if key in existing or key in taken:
                seqs.append(existing.get(key) if keep_existing else None)
                continue
            taken.add(key)
            seq += 1
            digest = link.link(seq, previous, row.record)
            previous = digest
            seqs.append(seq)
            for column, value in zip(columns, (
                seq, row.occurred_at, row.action, row.actor_id, row.target_id, row.group,
                key, row.record, digest,
            )):
                column.append(value)
            for target in row.targets:
                targets[0].append(target)
                targets[1].append(row.occurred_at)
                targets[2].append(seq)
        if taken:
            mac = link.head_mac(seq, previous)
            if mac is None:
                written = conn.execute(self._sql.write, (*columns, *targets, seq, previous))
            else:
                written = conn.execute(
                    self._sql.write_keyed, (*columns, *targets, mac, seq, previous))
            inserted = written.fetchone()
            if inserted is None or inserted[0] != len(taken):
                raise _DuplicateError
        return seqs

    def transient(self, error: Exception) -> bool:
        """Whether another attempt could succeed (a lost connection, a lock timeout)."""
        return isinstance(error, psycopg.OperationalError)

    # -- rows written in callers' transactions ---------------------------------------

    @property
    def insert_pending(self) -> str:
        """``INSERT`` of one pending row (``%s``: its record); returns ``(id, xid)``."""
        return self._sql.insert_pending

    @property
    def insert_pending_many(self) -> str:
        """``INSERT`` of pending rows (``%s``: a JSON array of their records, as strings);
        returns ``(id, xid)`` of each, the ids in the array's order."""
        return self._sql.insert_pending_many

    def chain_pending(self, linker: Callable[[Seal | None], Linker]) -> int:
        """Chain the committed pending rows, oldest first; how many were taken.

        Each batch is one transaction holding the head: the rows are deleted
        from ``pending`` and appended to the chain together, or neither. A
        row committed after a batch began is not seen by it and waits for the
        next one — positions are assigned here, never reserved — so a late
        commit is never skipped. Rows whose idempotency key is stored already
        are dropped.
        """
        total = 0
        while True:
            done = self._writing(lambda conn, retried: self._chain_batch(conn, linker))
            total += done
            if done < _CHAIN_BATCH:
                return total

    def _chain_batch(self, conn: Connection, linker: Callable[[Seal | None], Linker]) -> int:
        with self._holding_head(conn) as head:
            records = sorted(conn.execute(self._sql.take_pending, (_CHAIN_BATCH,)).fetchall())
            if records:
                rows = [row_from_record(record) for _, record in records]
                found = conn.execute(
                    self._sql.existing, ([row.idempotency_key for row in rows],)
                ).fetchall()
                existing = {str(key): int(seq) for key, seq in found}
                self._link(conn, head, rows, existing, linker, keep_existing=False)
        return len(records)

    def any_pending(self) -> bool:
        """Whether committed rows wait in ``pending``."""
        def work(conn: Connection, retried: bool) -> bool:
            row = conn.execute(self._sql.any_pending).fetchone()
            return bool(row and row[0])

        return self._writing(work)

    def outcomes(self, xids: Sequence[str]) -> dict[str, str]:
        """The fate of each transaction id: ``committed``, ``aborted`` or ``in progress``.

        A transaction is reported ended only once every later statement sees
        it as ended (its rows visible if it committed). An id too old for the
        server to remember is reported ``aborted``.
        """
        def work(conn: Connection, retried: bool) -> dict[str, str]:
            found = conn.execute(self._sql.outcomes, (list(xids),)).fetchall()
            result = {}
            for xid, status, visible in found:
                if status is None:
                    status = "aborted"
                elif not visible:
                    status = "in progress"
                result[str(xid)] = str(status)
            return result

        return self._writing(work)

    def kept(self, ids: Sequence[int], keys: Sequence[str]) -> set[str]:
        """Of pending rows ``ids`` with idempotency ``keys``: the keys that committed.

        A row is kept if it is still pending or its key is in the chain; a row
        rolled back to a savepoint of a committed transaction is neither.
        """
        def work(conn: Connection, retried: bool) -> set[str]:
            still = conn.execute(self._sql.still_pending, (list(ids),)).fetchall()
            stored = conn.execute(self._sql.stored_keys, (list(keys),)).fetchall()
            pending = {int(row[0]) for row in still}
            chained = {str(row[0]) for row in stored}
            return {key for id_, key in zip(ids, keys) if id_ in pending or key in chained}

        return self._writing(work)

    # -- reading -------------------------------------------------------------

    def _read_conn(self) -> Connection:
        conn = self._reader
        if conn is None or conn.closed or conn.broken:
            self._drop(conn)
            self._reader = None
            self._reader = conn = self._open()
        return conn

    def _read(self, fn: Callable[[Connection], T]) -> T:
        """``fn(conn)`` on the read connection, reopened and run again once if it was
        lost (reads change nothing); other errors as the library's."""
        with self._read_mutex:
            for attempt in (1, 2):
                conn = self._reader
                try:
                    conn = self._read_conn()
                    return fn(conn)
                except psycopg.Error as error:
                    gone = lost(error, conn)
                    if gone:
                        self._drop(conn)
                        self._reader = None
                    if not (gone and attempt == 1):
                        raise self._read_error(error) from None
            raise AssertionError("unreachable")

    def _read_error(self, error: psycopg.Error) -> AuditError:
        return AuditError(f"{self.location}: cannot read the audit store ({self._scrub(error)})")

    def head(self) -> tuple[int, str]:
        row = self._read(lambda conn: conn.execute(self._sql.head).fetchone())
        if row is None:
            raise self._missing_head()
        return int(row[0]), str(row[1])

    def page(
        self, filters: Filters, limit: int, after: tuple[str, int] | None
    ) -> list[StoredRow]:
        sql, params, t = select(self.schema, "e.occurred_at, e.seq, e.record, e.hash", filters)
        if after is not None:
            sql += (" AND " if params else " WHERE ") + f"({t}.occurred_at, {t}.seq) < (%s, %s)"
            params.extend(after)
        sql += f" ORDER BY {t}.occurred_at DESC, {t}.seq DESC LIMIT %s"
        params.append(limit)
        found = self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [(str(a), int(b), str(c), str(d)) for a, b, c, d in found]

    def count(self, filters: Filters) -> int:
        sql, params, _ = select(self.schema, "count(*)", filters)
        row = self._read(lambda conn: conn.execute(sql, params).fetchone())
        return int(row[0]) if row else 0

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        with self._read_mutex:
            conn = self._reader
            try:
                conn = self._read_conn()
                # one snapshot for the whole walk, whatever commits meanwhile
                with conn.transaction():
                    conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    snapshot = Snapshot(conn, self._sql)
                    try:
                        yield snapshot
                    finally:
                        snapshot.close()
            except psycopg.Error as error:
                if lost(error, conn):
                    self._drop(conn)
                    self._reader = None
                raise self._read_error(error) from None

    def check(self) -> list[str]:
        def run(conn: Connection) -> tuple[list[str], int | None]:
            problems = schema_problems(conn.cursor(), self.schema)
            return problems, store_version(conn, self.schema, self.location)

        problems, version = self._read(run)
        if problems:
            return [f"schema: {problem}" for problem in problems]
        if version != SCHEMA_VERSION:
            return [f"schema: version {version} is not one this code reads"]
        return []

    # -- lifetime ------------------------------------------------------------

    # -- retention and the viewer's reads: not implemented for PostgreSQL yet --------------
    def find(self, idempotency_key: str) -> StoredRow | None:
        sql = (f'SELECT occurred_at, seq, record, hash FROM "{self.schema}".events '
               "WHERE idempotency_key = %s")
        found = self._read(lambda conn: conn.execute(sql, (idempotency_key,)).fetchone())
        return None if found is None else (str(found[0]), int(found[1]), str(found[2]),
                                          str(found[3]))

    def activity(self, query: ActivityQuery) -> list[tuple[str, str, int]] | None:
        return None  # no activity counts kept yet: the viewer's chart says so

    def base(self) -> ChainBase | None:
        return None

    def prunable(self, before: str) -> int:
        raise AuditError(f"{self.location}: pruning a PostgreSQL store is not supported yet")

    def archive_rows(self, first: int, last: int) -> Iterator[Row]:
        raise AuditError(f"{self.location}: pruning a PostgreSQL store is not supported yet")

    def archive_targets(self, first: int, last: int) -> Iterator[TargetRow]:
        raise AuditError(f"{self.location}: pruning a PostgreSQL store is not supported yet")

    def prune_upto(
        self, upto: int, after: int, pruned_at: str, linker: Callable[[Seal | None], Linker]
    ) -> ChainBase:
        raise AuditError(f"{self.location}: pruning a PostgreSQL store is not supported yet")

    def after_fork(self, *, idle: bool) -> None:
        # Never close the parent's connections here, idle or not: libpq would end the
        # parent's sessions. This process opens its own on first use.
        for conn in (self._conn, self._reader):
            if conn is not None:
                _inherited.append(conn)
        self._conn = self._reader = None
        self._down_since = None
        self._mutexes()

    def close(self) -> None:
        with self._write_mutex, self._read_mutex:
            self._drop(self._conn)
            self._drop(self._reader)
            self._conn = self._reader = None
