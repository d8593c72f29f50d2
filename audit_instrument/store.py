"""A local audit store: one SQLite file, hash-chained, the embedded system of record.

:class:`AuditStore` is a sender (``configure(AuditStore("audit.db"))``) for
teams without a WorkOS account and for development. Every event becomes one
row holding its full record (``event.to_record()`` as canonical JSON: sorted
keys, no spaces, UTF-8), so it reads back losslessly, plus copies of the
fields it is queried by (occurred_at, action, actor_id, target_id, group).

Each row carries ``hash = sha256(previous row's hash + canonical JSON)``
(hex; the first row chains from 64 zeros), and a one-row ``chain`` table
holds the head: the last row's number and hash, updated in the same
transaction. :meth:`AuditStore.verify` walks the rows and names the first one
that was edited, deleted or moved — including rows cut off the end. The
chain proves the file was not changed *without recomputing every later
hash*; keep :meth:`AuditStore.head` somewhere else now and then (a ticket, a
log line) to rule out a rewrite of the whole chain.

Writes are group-committed: threads calling :meth:`~AuditStore.send` at the
same time share one transaction, and ``send`` returns only once its event is
committed. Several processes may share a file (SQLite's lock orders them;
the chain continues from the committed head). An event whose idempotency key
is already stored is not stored twice.

>>> from audit_instrument import configure
>>> store = AuditStore("audit.db")                      # doctest: +SKIP
>>> configure(store)                                    # doctest: +SKIP
>>> page = store.query(actor="user_1", action="tweet.update", limit=20)  # doctest: +SKIP
>>> store.verify().ok                                   # doctest: +SKIP
True
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn
from urllib.parse import quote

from . import signals
from .errors import AuditConfigError, AuditError, AuditValidationError, DeliveryError
from .event import AuditEvent, format_timestamp

__all__ = [
    "GENESIS_HASH",
    "MAX_PAGE",
    "AuditStore",
    "ChainHead",
    "Page",
    "StoredEvent",
    "Verification",
    "canonical_json",
    "chain_hash",
]

GENESIS_HASH = "0" * 64
"""The "previous hash" of the first row."""

MAX_PAGE = 10_000
_APPLICATION_ID = 0x41554454  # "AUDT" in the SQLite header: this file is an audit store
_SCHEMA_VERSION = 1
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_COLUMNS = ("occurred_at", "action", "actor_id", "target_id", "group", "idempotency_key")

_SCHEMA = f"""
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    occurred_at TEXT NOT NULL,
    action TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    target_id TEXT NOT NULL,
    "group" TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    record TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE UNIQUE INDEX events_idempotency_key ON events (idempotency_key);
CREATE INDEX events_occurred_at ON events (occurred_at);
CREATE INDEX events_action ON events (action, occurred_at);
CREATE INDEX events_actor ON events (actor_id, occurred_at);
CREATE INDEX events_target ON events (target_id, occurred_at);
CREATE INDEX events_group ON events ("group", occurred_at);
CREATE TABLE chain (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
INSERT INTO chain (id, seq, hash) VALUES (1, 0, '{GENESIS_HASH}');
PRAGMA application_id = {_APPLICATION_ID};
PRAGMA user_version = {_SCHEMA_VERSION};
"""
_INSERT = (
    'INSERT INTO events (seq, occurred_at, action, actor_id, target_id, "group", '
    "idempotency_key, record, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (idempotency_key) DO NOTHING"
)


def canonical_json(event: AuditEvent) -> str:
    """The text a row stores and hashes: ``to_record()``, sorted keys, no spaces."""
    return json.dumps(
        event.to_record(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )


def chain_hash(previous: str, record: str) -> str:
    """``sha256(previous hash + canonical JSON)`` as hex: one link of the chain."""
    return hashlib.sha256((previous + record).encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event read back from the store, with its row number and chain hash."""

    seq: int
    event: AuditEvent
    hash: str


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a query, newest first.

    ``next_cursor`` is ``None`` on the last page; otherwise pass it back as
    ``cursor=`` (with the same filters) for the next one.
    """

    items: list[StoredEvent]
    next_cursor: str | None

    @property
    def events(self) -> list[AuditEvent]:
        """The events of this page, without row numbers."""
        return [item.event for item in self.items]

    def __iter__(self) -> Iterator[StoredEvent]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The last row of the chain: keep it elsewhere to anchor the whole file."""

    seq: int
    hash: str


@dataclass(frozen=True, slots=True)
class Verification:
    """What :meth:`AuditStore.verify` found; true when the chain is intact.

    ``bad_row`` is the number (``seq``) of the first row that fails, or
    ``0`` when the chain head itself is missing or edited; ``reason`` says
    how; ``rows`` is how many rows were checked.
    """

    rows: int
    bad_row: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        """Whether every row and the chain head are intact."""
        return self.bad_row is None

    def __bool__(self) -> bool:
        return self.ok

    def __str__(self) -> str:
        if self.ok:
            return f"intact: {self.rows} rows"
        where = "chain head" if self.bad_row == 0 else f"row {self.bad_row}"
        return f"{where}: {self.reason}"


class _Pending:
    """One event waiting for the group commit."""

    __slots__ = ("done", "error", "event", "row", "seq")

    def __init__(self, event: AuditEvent, row: tuple[str, ...]) -> None:
        self.event = event
        self.row = row  # (occurred_at, action, actor_id, target_id, group, key, record)
        self.done = False
        self.error: BaseException | None = None
        self.seq: int | None = None


def _as_stamp(field: str, value: object) -> str:
    """A time bound as the stored text form, for comparisons in SQL."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            pass
    if not isinstance(value, datetime):
        raise AuditValidationError(
            field, "must be a datetime or an ISO 8601 string like 2026-01-31T12:00:00Z", value
        )
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return format_timestamp(value)


def _encode_cursor(occurred_at: str, seq: int) -> str:
    raw = json.dumps([occurred_at, seq], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        occurred_at, seq = json.loads(raw)
    except (ValueError, TypeError, binascii.Error):
        occurred_at = seq = None
    if not (
        isinstance(occurred_at, str)
        and _STAMP.fullmatch(occurred_at)
        and type(seq) is int
        and seq > 0
    ):
        raise AuditValidationError(
            "cursor", "is not a cursor returned by AuditStore.query()", cursor
        )
    return occurred_at, seq


def _read_head(conn: sqlite3.Connection, path: Path) -> tuple[int, str]:
    """The committed chain head; AuditConfigError if someone deleted it."""
    row = conn.execute("SELECT seq, hash FROM chain WHERE id = 1").fetchone()
    if row is None:
        raise AuditConfigError(
            f"{path}: the chain head is missing (deleted behind the store's back); "
            "run verify to see what else changed"
        )
    return int(row[0]), str(row[1])


def _create_private(path: Path) -> None:
    """Create ``path`` with mode 0600 if missing; raise AuditConfigError if we can't."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as error:
        raise AuditConfigError(
            f"{path}: cannot open the audit store for writing ({error.strerror})"
        ) from error
    os.close(fd)


class AuditStore:
    """The local audit store: a sender writing hash-chained events to SQLite.

    ``path`` is created (mode 0600, WAL journal) if missing. ``readonly=True``
    opens an existing store for queries and :meth:`verify` only.
    ``synchronous="FULL"`` also survives power loss (an fsync per commit);
    the default ``"NORMAL"`` survives a crash of the process, the WAL
    default. A file that is not an audit store, is damaged or cannot be
    written raises :class:`~audit_instrument.AuditConfigError` here.

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
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise AuditConfigError(f"synchronous must be 'NORMAL' or 'FULL', not {synchronous!r}")
        self.path = Path(path)
        self.readonly = readonly
        self._synchronous = synchronous
        self._timeout = timeout
        self._cond = threading.Condition(threading.Lock())
        self._read_lock = threading.Lock()
        self._queue: list[_Pending] = []
        self._writing = False
        self._closed = False
        self._pid = os.getpid()
        self._conn = self._connect()
        self._reader: sqlite3.Connection | None = None

    # -- opening ------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        path = self.path
        if self.readonly:
            if not path.is_file():
                raise AuditConfigError(f"{path}: no such audit store")
            uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        else:
            if path.is_dir():
                raise AuditConfigError(f"{path}: is a directory, not an audit store")
            _create_private(path)
            uri = f"file:{quote(str(path.resolve()))}?mode=rw"
        try:
            conn = sqlite3.connect(
                uri, uri=True, timeout=self._timeout, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise AuditConfigError(f"{path}: cannot open the audit store ({error})") from error
        try:
            self._prepare(conn)
        except sqlite3.Error as error:
            conn.close()
            if isinstance(error, sqlite3.DatabaseError) and "not a database" in str(error):
                raise AuditConfigError(
                    f"{path}: not an audit store (the file is not a SQLite database)"
                ) from error
            raise AuditConfigError(f"{path}: unusable audit store ({error})") from error
        except AuditConfigError:
            conn.close()
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        """Check the file is an audit store of a known version; create it if empty."""
        if not self.readonly:
            self._use_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            if not os.access(self.path, os.W_OK):
                raise AuditConfigError(f"{self.path}: the audit store is not writable")
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id == 0:
            if self.readonly:
                self._check_foreign(conn)
                raise AuditConfigError(f"{self.path}: empty file, not an audit store yet")
            conn.execute("BEGIN IMMEDIATE")
            try:
                if conn.execute("PRAGMA application_id").fetchone()[0] == 0:
                    self._check_foreign(conn)
                    # statement by statement: executescript() would commit first,
                    # letting another process see tables without the application id
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        if app_id != _APPLICATION_ID:
            raise AuditConfigError(
                f"{self.path}: not an audit store (a SQLite database of another "
                f"application, id {app_id:#x})"
            )
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            raise AuditConfigError(
                f"{self.path}: written by a newer audit_instrument (schema {version}); upgrade"
            )
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
                raise AuditConfigError(f"{self.path}: cannot use the WAL journal (got {mode})")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _check_foreign(self, conn: sqlite3.Connection) -> None:
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchone()[0]
        if tables:
            raise AuditConfigError(
                f"{self.path}: not an audit store (a SQLite database with other tables)"
            )

    def _ensure_process(self) -> None:
        """After fork() the child must not use the parent's connections or locks."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._cond = threading.Condition(threading.Lock())
            self._read_lock = threading.Lock()
            self._queue = []
            self._writing = False
            self._reader = None
            self._conn = self._connect()

    # -- writing -------------------------------------------------------------

    def send(self, event: AuditEvent) -> int | None:
        """Store ``event``; return its row number once it is committed.

        Returns ``None`` when an event with the same idempotency key is
        already stored (it is not stored twice). Raises
        :class:`~audit_instrument.DeliveryError` (and reports
        ``signals.event_failed``) when the write fails; nothing of the
        failed transaction is kept.
        """
        if self.readonly:
            raise AuditConfigError(f"{self.path}: opened read-only; cannot store events")
        record = canonical_json(event)
        item = _Pending(
            event,
            (
                format_timestamp(event.occurred_at),
                event.action,
                event.actor_id,
                event.target_id,
                event.group,
                event.idempotency_key,
                record,
            ),
        )
        self._ensure_process()
        cond = self._cond
        with cond:
            if self._closed:
                raise AuditError(f"{self!r} is closed")
            self._queue.append(item)
            while not item.done:
                if self._writing:
                    cond.wait()
                    continue
                if self._closed:  # closed while this event waited for its turn
                    self._queue.remove(item)
                    raise AuditError(f"{self!r} was closed before the event was stored")
                self._writing = True
                batch, self._queue = self._queue, []
                error: BaseException | None = None
                cond.release()
                try:
                    self._write(batch)
                except BaseException as exc:  # handed to each waiting sender
                    error = exc
                finally:
                    cond.acquire()
                    self._writing = False
                    for pending in batch:
                        pending.done = True
                        pending.error = error
                    cond.notify_all()
        if item.error is not None:
            self._failed(item)
        if item.seq is not None:
            signals.report_delivered(event, self)
        return item.seq

    def _failed(self, item: _Pending) -> NoReturn:
        error = item.error
        if not isinstance(error, Exception):  # KeyboardInterrupt etc. go on up
            raise error  # type: ignore[misc]
        failure = DeliveryError(
            f"{self.path}: could not store event {item.event.action!r} ({error})",
            retryable=isinstance(error, sqlite3.OperationalError),
        )
        signals.report_failed(item.event, self, failure)
        raise failure from error

    def _write(self, batch: Sequence[_Pending]) -> None:
        """Append ``batch`` to the chain in one transaction."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq, previous = _read_head(conn, self.path)
            execute = conn.execute
            for item in batch:
                row = item.row
                digest = chain_hash(previous, row[6])
                if execute(_INSERT, (seq + 1, *row, digest)).rowcount == 1:
                    seq += 1
                    previous = digest
                    item.seq = seq
            execute("UPDATE chain SET seq = ?, hash = ? WHERE id = 1", (seq, previous))
            execute("COMMIT")
        except BaseException:
            for item in batch:
                item.seq = None
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- reading -------------------------------------------------------------

    def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn`` on the read connection, turning SQLite damage into AuditConfigError."""
        self._ensure_process()
        with self._read_lock:
            if self._closed:
                raise AuditError(f"{self!r} is closed")
            if self._reader is None:
                self._reader = self._conn if self.readonly else self._open_reader()
            try:
                return fn(self._reader)
            except sqlite3.DatabaseError as error:
                raise AuditConfigError(
                    f"{self.path}: the audit store is damaged ({error})"
                ) from error

    def _open_reader(self) -> sqlite3.Connection:
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            return sqlite3.connect(
                uri, uri=True, timeout=self._timeout, isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as error:
            raise AuditConfigError(f"{self.path}: cannot read the audit store ({error})") from error

    @staticmethod
    def _where(
        actor: str | None,
        action: str | None,
        target: str | None,
        group: str | None,
        since: datetime | str | None,
        until: datetime | str | None,
    ) -> tuple[list[str], list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        for field, column, value in (
            ("actor", "actor_id", actor),
            ("action", "action", action),
            ("target", "target_id", target),
            ("group", '"group"', group),
        ):
            if value is None:
                continue
            if not isinstance(value, str) or not value:
                raise AuditValidationError(field, "must be a non-empty string", value)
            clauses.append(f"{column} = ?")
            params.append(value)
        if since is not None:
            clauses.append("occurred_at >= ?")
            params.append(_as_stamp("since", since))
        if until is not None:
            clauses.append("occurred_at < ?")
            params.append(_as_stamp("until", until))
        return clauses, params

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

        ``actor`` and ``target`` are ids; ``since`` is inclusive and ``until``
        exclusive (datetimes, naive = UTC, or ISO 8601 strings). At most
        ``limit`` (1-10000) events per page; pass ``page.next_cursor`` as
        ``cursor`` with the same filters for the next page. Bad values raise
        :class:`~audit_instrument.AuditValidationError` naming the filter.

        >>> page = store.query(target="tweet_5", since="2026-01-01")   # doctest: +SKIP
        >>> older = store.query(target="tweet_5", since="2026-01-01",
        ...                     cursor=page.next_cursor)                 # doctest: +SKIP
        """
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise AuditValidationError("limit", f"must be an integer from 1 to {MAX_PAGE}", limit)
        clauses, params = self._where(actor, action, target, group, since, until)
        if cursor is not None:
            if not isinstance(cursor, str):
                raise AuditValidationError("cursor", "must be a string", cursor)
            clauses.append("(occurred_at, seq) < (?, ?)")
            params.extend(_decode_cursor(cursor))
        sql = "SELECT occurred_at, seq, record, hash FROM events"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY occurred_at DESC, seq DESC LIMIT ?"
        params.append(limit + 1)
        rows: list[tuple[str, int, str, str]] = self._read(
            lambda conn: conn.execute(sql, params).fetchall()
        )
        items = [self._load(seq, record, digest) for _, seq, record, digest in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1]
            next_cursor = _encode_cursor(last[0], last[1])
        return Page(items, next_cursor)

    def _load(self, seq: int, record: str, digest: str) -> StoredEvent:
        try:
            return StoredEvent(seq, AuditEvent.from_dict(json.loads(record)), digest)
        except (ValueError, TypeError) as error:  # AuditValidationError is a ValueError
            raise AuditConfigError(
                f"{self.path}: row {seq} does not hold a valid event ({error}); "
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
        clauses, params = self._where(actor, action, target, group, since, until)
        sql = "SELECT count(*) FROM events"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        count: int = self._read(lambda conn: conn.execute(sql, params).fetchone()[0])
        return count

    def head(self) -> ChainHead:
        """The committed head of the chain: last row number and its hash."""
        seq, digest = self._read(lambda conn: _read_head(conn, self.path))
        return ChainHead(seq, digest)

    def verify(self, *, progress: Callable[[int], None] | None = None) -> Verification:
        """Walk the chain in row order; report the first row that is not intact.

        Catches an edited row (its hash no longer matches), a deleted or
        moved row (the next row's hash, or the row numbers, no longer line
        up), a hash column that disagrees with the stored event, and rows cut
        off the end (the head names more rows than there are). ``progress``
        is called with the number of rows checked, every 10 000 rows.
        """

        def walk(conn: sqlite3.Connection) -> Verification:
            conn.execute("BEGIN")  # one consistent snapshot for the whole walk
            try:
                return self._walk(conn, progress)
            finally:
                conn.execute("COMMIT")

        result: Verification = self._read(walk)
        return result

    @staticmethod
    def _walk(
        conn: sqlite3.Connection, progress: Callable[[int], None] | None
    ) -> Verification:
        head = conn.execute("SELECT seq, hash FROM chain WHERE id = 1").fetchone()
        previous = GENESIS_HASH
        expected = 1
        rows = conn.execute(
            'SELECT seq, occurred_at, action, actor_id, target_id, "group", '
            "idempotency_key, record, hash FROM events ORDER BY seq"
        )
        for seq, *columns, record, digest in rows:
            checked = expected - 1
            if seq != expected:
                missing = f"row {expected}" if seq == expected + 1 else f"rows {expected}-{seq - 1}"
                return Verification(checked, expected, f"{missing} missing (deleted)")
            if not isinstance(record, str) or chain_hash(previous, record) != digest:
                return Verification(
                    checked,
                    seq,
                    "hash mismatch: the row was edited, or a row before it was "
                    "deleted or moved",
                )
            try:
                data = json.loads(record)
                stored = (
                    data["occurred_at"], data["action"], data["actor_id"],
                    data["target_id"], data["group"], data["idempotency_key"],
                )
            except (ValueError, KeyError, TypeError):
                return Verification(checked, seq, "the hashed record is not a valid event")
            for name, column, value in zip(_COLUMNS, columns, stored, strict=True):
                if column != value:
                    return Verification(
                        checked, seq, f"column {name} was edited (the hashed event says {value!r})"
                    )
            previous = digest
            expected += 1
            if progress is not None and seq % 10_000 == 0:
                progress(seq)
        last = expected - 1
        if head is None:
            return Verification(last, 0, "missing (deleted)")
        head_seq, head_hash = head
        if head_seq > last:
            missing = f"row {head_seq}" if head_seq == last + 1 else f"rows {last + 1}-{head_seq}"
            return Verification(last, last + 1, f"{missing} missing (cut off the end)")
        if head_seq < last:
            return Verification(
                head_seq, head_seq + 1,
                "added after the chain head (inserted behind the store's back)",
            )
        if head_hash != previous:
            return Verification(last, 0, f"hash does not match row {last} (edited)")
        if progress is not None:
            progress(last)
        return Verification(last)

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Close the file; later sends and queries raise :class:`~audit_instrument.AuditError`.

        A transaction being written finishes first; events still waiting
        for their turn are refused (their ``send`` raises), never half-kept.
        """
        with self._cond:
            if self._closed:
                return
            self._closed = True  # refuse new sends at once, or busy senders starve close()
            while self._writing:
                self._cond.wait()
            self._cond.notify_all()
            with self._read_lock:
                if self._reader is not None and self._reader is not self._conn:
                    self._reader.close()
                    self._reader = None
                self._conn.close()

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
        return f"<AuditStore path={str(self.path)!r}{mode}>"
