"""The SQLite backend: one file, WAL journal, the embedded default of :class:`AuditStore`.

The file is created with mode 0600. A writing store holds two connections —
one that writes, one read-only one for queries and ``verify`` — and several
processes may share the file: SQLite's write lock orders their
transactions, and each continues the chain from the committed head.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote

from ..errors import AuditConfigError, AuditError
from . import sqlite_prune
from .activity import ActivityQuery
from .backend import ActivityRow, HeadSigner, NewRow, Row, StoredRow, TargetRow
from .chain import ChainBase, Linker, Seal
from .query import Filters
from .sqlite_activity import activity, activity_rows
from .sqlite_schema import APPLICATION_ID, SCHEMA_VERSION, create, migrate, schema_problems

__all__ = ["SQLiteBackend"]

T = TypeVar("T")

_INSERT = (
    'INSERT INTO events (seq, occurred_at, action, actor_id, target_id, "group", '
    "idempotency_key, record, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (idempotency_key) DO NOTHING"
)
# The first target is indexed by the events_first_target trigger; these are the others.
_INSERT_TARGET = (
    "INSERT OR IGNORE INTO event_targets (target_id, occurred_at, seq) VALUES (?, ?, ?)"
)
_ROWS = (
    'SELECT seq, occurred_at, action, actor_id, target_id, "group", '
    "idempotency_key, record, hash FROM events ORDER BY seq"
)

# Connections a forked child inherited while a parent thread may have been using
# them: closing them could disturb the parent, and dropping them would close them.
_inherited: list[sqlite3.Connection] = []


def _create_private(path: Path) -> None:
    """Create ``path`` with mode 0600 if missing; raise AuditConfigError if we can't."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise AuditConfigError(
            f"{path}: cannot open the audit store for writing ({error.strerror})"
        ) from error
    os.close(fd)


def _seal(conn: sqlite3.Connection) -> Seal | None:
    try:
        row = conn.execute(
            "SELECT keyed_from, key_id, head_mac FROM chain_seal WHERE id = 1"
        ).fetchone()
    except sqlite3.OperationalError as error:
        if "no such table" in str(error):  # schema 1, read-only: never keyed
            return None
        raise
    return None if row is None else Seal(int(row[0]), str(row[1]), str(row[2]))


class SQLiteBackend:
    """An audit store in one SQLite file (see :class:`~audit_instrument.store.backend.Backend`).

    ``readonly`` opens an existing file with ``mode=ro`` and never migrates
    it; otherwise the file is created, or brought to the current schema.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readonly: bool = False,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        timeout: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self.location = os.fsdecode(self.path).encode("utf-8", "backslashreplace").decode()
        try:
            if b"\0" in os.fsencode(self.path):
                raise ValueError("NUL byte")
        except ValueError:  # a NUL byte, or a lone surrogate no file name can hold
            raise AuditConfigError(f"{self.location!r}: not a usable file name") from None
        self.readonly = readonly
        self._synchronous = synchronous
        self._timeout = timeout
        self._version = SCHEMA_VERSION
        self._conn: sqlite3.Connection | None = self._connect()
        self._reader: sqlite3.Connection | None = None

    # -- opening ------------------------------------------------------------

    def _uri(self, mode: str) -> str:
        return f"file:{quote(os.fsencode(self.path.resolve()))}?mode={mode}"

    def _open(self, mode: str) -> sqlite3.Connection:
        return sqlite3.connect(
            self._uri(mode), uri=True, timeout=self._timeout, isolation_level=None,
            check_same_thread=False,
        )

    def _connect(self) -> sqlite3.Connection:
        path = self.path
        try:
            is_file, is_dir = path.is_file(), path.is_dir()
        except OSError as error:  # a name too long, a loop of links
            raise AuditConfigError(
                f"{self.location}: cannot open the audit store ({error.strerror})"
            ) from error
        if self.readonly and not is_file:
            raise AuditConfigError(f"{self.location}: no such audit store")
        if is_dir:
            raise AuditConfigError(f"{self.location}: is a directory, not an audit store")
        if not self.readonly:
            _create_private(path)
        try:
            conn = self._open("ro" if self.readonly else "rw")
        except sqlite3.Error as error:
            raise AuditConfigError(
                f"{self.location}: cannot open the audit store ({error})"
            ) from error
        try:
            self._prepare(conn)
        except sqlite3.Error as error:
            conn.close()
            if isinstance(error, sqlite3.DatabaseError) and "not a database" in str(error):
                raise AuditConfigError(
                    f"{self.location}: not an audit store (the file is not a SQLite database)"
                ) from error
            raise AuditConfigError(f"{self.location}: unusable audit store ({error})") from error
        except AuditConfigError:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check the file is an audit store of a known schema; create or migrate it."""
        if not self.readonly:
            self._use_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            if not os.access(self.path, os.W_OK):
                raise AuditConfigError(f"{self.location}: the audit store is not writable")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == 0:
            if self.readonly:
                self._check_foreign(conn)
                raise AuditConfigError(f"{self.location}: empty file, not an audit store yet")
            # statement by statement in one transaction: executescript() would commit
            # first, letting another process see tables without the application id
            with _immediate(conn):
                if conn.execute("PRAGMA application_id").fetchone()[0] == 0:
                    self._check_foreign(conn)
                    create(conn)
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != APPLICATION_ID:
            raise AuditConfigError(
                f"{self.location}: not an audit store (a SQLite database of another "
                f"application, id {app_id:#x})"
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise AuditConfigError(
                f"{self.location}: written by a newer audit_instrument (schema {version}); upgrade"
            )
        if version < 1:
            raise AuditConfigError(f"{self.location}: unusable audit store (schema {version})")
        if version < SCHEMA_VERSION and not self.readonly:
            with _immediate(conn):
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                migrate(conn, version)
            version = SCHEMA_VERSION
        self._version = version
        conn.execute("SELECT seq, hash FROM chain WHERE id = 1").fetchone()  # tables exist

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        """Switch to WAL; another process opening the file at the same moment may
        hold the lock the switch needs, so retry until ``timeout``."""
        deadline = time.monotonic() + self._timeout
        delay = 0.005
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]).lower()
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) and "busy" not in str(error):
                    raise
                mode = "locked"
            if mode == "wal":
                return
            if time.monotonic() > deadline:
                raise AuditConfigError(
                    f"{self.location}: cannot use the WAL journal (got {mode})"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _check_foreign(self, conn: sqlite3.Connection) -> None:
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if tables:
            raise AuditConfigError(
                f"{self.location}: not an audit store (a SQLite database with other tables)"
            )

    def _writer(self) -> sqlite3.Connection:
        if self._conn is None:  # after a fork: this process's own connection
            self._conn = self._connect()
        return self._conn

    def _read_conn(self) -> sqlite3.Connection:
        if self.readonly:
            return self._writer()
        if self._reader is None:
            self._writer()  # the file exists and has the current schema
            try:
                self._reader = self._open("ro")
            except sqlite3.Error as error:
                raise AuditConfigError(
                    f"{self.location}: cannot read the audit store ({error})"
                ) from error
        return self._reader

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """The read connection, with SQLite's errors as the library's."""
        conn = self._read_conn()
        try:
            yield conn
        except sqlite3.OperationalError as error:
            raise AuditError(f"{self.location}: cannot read the audit store ({error})") from error
        except sqlite3.DatabaseError as error:
            raise AuditConfigError(
                f"{self.location}: the audit store is damaged ({error})"
            ) from error

    # -- the chain head and the seal ------------------------------------------------

    def _head(self, conn: sqlite3.Connection) -> tuple[int, str]:
        row = conn.execute("SELECT seq, hash FROM chain WHERE id = 1").fetchone()
        if row is None:
            raise AuditConfigError(
                f"{self.location}: the chain head is missing (deleted behind the store's back); "
                "run verify to see what else changed"
            )
        return int(row[0]), str(row[1])

    def head(self) -> tuple[int, str]:
        with self._reading() as conn:
            return self._head(conn)

    def seal(self) -> Seal | None:
        with self._reading() as conn:
            return _seal(conn)

    def start_seal(self, key_id: str, head_mac: HeadSigner) -> Seal:
        conn = self._writer()
        with _immediate(conn):
            seal = _seal(conn)
            if seal is None:
                seq, digest = self._head(conn)
                seal = Seal(seq + 1, key_id, head_mac(seq, digest, sqlite_prune.base(conn)))
                conn.execute(
                    "INSERT INTO chain_seal (id, keyed_from, key_id, head_mac) VALUES (1, ?, ?, ?)",
                    (seal.keyed_from, seal.key_id, seal.head_mac),
                )
        return seal

    # -- writing -------------------------------------------------------------

    def append(
        self, rows: Sequence[NewRow], linker: Callable[[Seal | None], Linker]
    ) -> list[int | None]:
        conn = self._writer()
        seqs: list[int | None] = []
        with _immediate(conn):
            # the head and the seal in one statement: a write's fixed cost is its statements
            row = conn.execute(
                "SELECT c.seq, c.hash, s.keyed_from, s.key_id, s.head_mac, "
                "b.seq, b.hash, b.pruned_at FROM chain c LEFT JOIN chain_seal s ON s.id = 1 "
                "LEFT JOIN chain_base b ON b.id = 1 WHERE c.id = 1"
            ).fetchone()
            if row is None:
                self._head(conn)  # raises: the head is missing
            seq, previous = int(row[0]), str(row[1])
            link = linker(None if row[2] is None else Seal(int(row[2]), row[3], row[4]))
            base = None if row[5] is None else ChainBase(int(row[5]), row[6], row[7])
            execute = conn.execute
            for row in rows:
                digest = link.link(seq + 1, previous, row.record)
                inserted = execute(_INSERT, (
                    seq + 1, row.occurred_at, row.action, row.actor_id, row.target_id,
                    row.group, row.idempotency_key, row.record, digest,
                )).rowcount == 1
                if not inserted:  # this idempotency key is stored already
                    seqs.append(None)
                    continue
                seq += 1
                previous = digest
                seqs.append(seq)
                if len(row.targets) > 1:
                    conn.executemany(
                        _INSERT_TARGET, [(t, row.occurred_at, seq) for t in row.targets[1:]]
                    )
            execute("UPDATE chain SET seq = ?, hash = ? WHERE id = 1", (seq, previous))
            mac = link.head_mac(seq, previous, base)
            if mac is not None:
                execute("UPDATE chain_seal SET head_mac = ? WHERE id = 1", (mac,))
        return seqs

    def transient(self, error: Exception) -> bool:
        """Whether another attempt could succeed (a lock timeout, a full disk)."""
        return isinstance(error, sqlite3.OperationalError)

    # -- reading -------------------------------------------------------------

    def _select(self, what: str, filters: Filters) -> tuple[str, list[object], str]:
        """SQL from ``SELECT what`` to the WHERE clause, its parameters, and the order key.

        With a target the rows come from ``event_targets``, which is ordered
        by (target, time, row), so a page reads just its rows.
        """
        params: list[object] = []
        clauses: list[str] = []
        if filters.target is not None and self._version >= 2:
            sql = f"SELECT {what} FROM event_targets t JOIN events e ON e.seq = t.seq"
            clauses.append("t.target_id = ?")
            params.append(filters.target)
            order = "t"
        else:
            sql = f"SELECT {what} FROM events e"
            order = "e"
            if filters.target is not None:
                clauses.append("e.target_id = ?")
                params.append(filters.target)
        for column, value in (
            ("e.actor_id", filters.actor),
            ("e.action", filters.action),
            ('e."group"', filters.group),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if filters.since is not None:
            clauses.append(f"{order}.occurred_at >= ?")
            params.append(filters.since)
        if filters.until is not None:
            clauses.append(f"{order}.occurred_at < ?")
            params.append(filters.until)
        where = " WHERE " + " AND ".join(clauses) if clauses else ""
        return sql + where, params, order

    def page(
        self, filters: Filters, limit: int, after: tuple[str, int] | None
    ) -> list[StoredRow]:
        sql, params, t = self._select("e.occurred_at, e.seq, e.record, e.hash", filters)
        if after is not None:
            sql += (" AND " if params else " WHERE ") + f"({t}.occurred_at, {t}.seq) < (?, ?)"
            params.extend(after)
        sql += f" ORDER BY {t}.occurred_at DESC, {t}.seq DESC LIMIT ?"
        params.append(limit)
        with self._reading() as conn:
            return conn.execute(sql, params).fetchall()

    def count(self, filters: Filters) -> int:
        sql, params, _ = self._select("count(*)", filters)
        with self._reading() as conn:
            return int(conn.execute(sql, params).fetchone()[0])

    @contextmanager
    def snapshot(self) -> Iterator[_Snapshot]:
        with self._reading() as conn:
            conn.execute("BEGIN")  # one consistent snapshot for the whole walk
            try:
                yield _Snapshot(conn)
            finally:
                conn.execute("COMMIT")

    def check(self) -> list[str]:
        with self._reading() as conn:
            try:
                found = [row[0] for row in conn.execute("PRAGMA integrity_check")]
            except sqlite3.DatabaseError as error:
                return [f"SQLite integrity check: the file is damaged ({error})"]
            if found != ["ok"]:
                more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
                return ["SQLite integrity check: " + "; ".join(found[:3]) + more]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            return [f"schema: {problem}" for problem in schema_problems(conn, version)]

    def find(self, idempotency_key: str) -> StoredRow | None:
        with self._reading() as conn:
            row: StoredRow | None = conn.execute(
                "SELECT occurred_at, seq, record, hash FROM events WHERE idempotency_key = ?",
                (idempotency_key,),
            ).fetchone()
            return row

    def activity(self, query: ActivityQuery) -> list[tuple[str, str, int]] | None:
        if self._version < 3:
            return None
        with self._reading() as conn:
            return activity(conn, query)

    # -- pruning (see sqlite_prune) -------------------------------------------

    def base(self) -> ChainBase | None:
        with self._reading() as conn:
            return sqlite_prune.base(conn)

    def prunable(self, before: str) -> int:
        with self._reading() as conn:
            return sqlite_prune.prunable(conn, before)

    def archive_rows(self, first: int, last: int) -> Iterator[Row]:
        return self._streamed(sqlite_prune.archive_rows, first, last)

    def archive_targets(self, first: int, last: int) -> Iterator[TargetRow]:
        return self._streamed(sqlite_prune.archive_targets, first, last)

    def _streamed(
        self, read: Callable[[sqlite3.Connection, int, int], Iterator[T]], first: int, last: int
    ) -> Iterator[T]:
        """``read``'s rows on a connection of their own (queries meanwhile use theirs)."""
        conn = self._open("ro")
        try:
            conn.execute("BEGIN")
            yield from read(conn, first, last)
        finally:
            conn.close()

    def prune_upto(
        self, upto: int, after: int, pruned_at: str, linker: Callable[[Seal | None], Linker]
    ) -> ChainBase:
        conn = self._writer()
        # A deletion touches pages of every index at random: a large page cache for it,
        # SQLite's default again after (benchmarks/bench_viewer.py, prune).
        conn.execute(f"PRAGMA cache_size = {sqlite_prune.BULK_CACHE}")
        try:
            with _immediate(conn):
                return sqlite_prune.prune_upto(
                    conn, upto, after, pruned_at, linker, self.location
                )
        finally:
            conn.execute("PRAGMA cache_size = -2000")

    # -- lifetime ------------------------------------------------------------

    def after_fork(self, *, idle: bool) -> None:
        for conn in (self._conn, self._reader):
            if conn is None:
                continue
            if idle:
                # Closing the parent's idle connections lets this process's own
                # take their own locks on the file instead of sharing SQLite's
                # record of the parent's.
                try:
                    conn.close()
                except sqlite3.Error:
                    _inherited.append(conn)
            else:
                _inherited.append(conn)
        self._conn = self._reader = None

    def close(self) -> None:
        if self._reader is not None and self._reader is not self._conn:
            self._reader.close()
        if self._conn is not None:
            self._conn.close()
        self._conn = self._reader = None


class _Snapshot:
    """What ``verify`` reads, inside one read transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def head(self) -> tuple[int, str] | None:
        row = self._conn.execute("SELECT seq, hash FROM chain WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def seal(self) -> Seal | None:
        return _seal(self._conn)

    def rows(self) -> Iterator[Row]:
        return iter(self._conn.execute(_ROWS))

    def targets(self, *, ordered: bool) -> Iterator[TargetRow] | None:
        exists = self._conn.execute(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'event_targets'"
        ).fetchone()
        if exists is None:  # schema 1
            return None
        order = " ORDER BY seq, target_id" if ordered else ""
        return iter(self._conn.execute(
            f"SELECT seq, target_id, occurred_at FROM event_targets{order}"
        ))

    def pending(self) -> int:
        return 0  # every write is chained as it commits

    def base(self) -> ChainBase | None:
        return sqlite_prune.base(self._conn)

    def activity(self, unit: str) -> Iterator[ActivityRow] | None:
        return activity_rows(self._conn, unit)


@contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction: committed if the block finishes, rolled back if it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
