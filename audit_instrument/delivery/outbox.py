"""The durable outbox: events kept in a SQLite file until the server accepted them.

The delivery engine writes every event here, sends from here, and deletes
what the server accepted. After a crash or a restart, whatever is still
pending is sent again with its original ``Idempotency-Key``, so the server
drops duplicates.

* **Durability, the caller's choice.** ``durability="commit"`` (default):
  :meth:`Outbox.add` returns once the event is committed (WAL,
  ``synchronous=FULL`` by default). ``durability="batch"``: it returns at
  once and the event is committed within ``max_delay`` seconds (default
  10 ms), so a crash loses at most the events of that window.
* **Group commit** (:class:`~.group_commit.GroupCommit`): the writes of many
  threads share one transaction, and a write that fails is retried event by
  event, so one event that cannot be written never costs another.
* **Shared safely.** Threads share one connection under a lock; processes
  share the file through SQLite's locking. A process *claims* rows with a
  lease (owner, pid, expiry) in one ``UPDATE … RETURNING``; another process
  takes a row over only when the lease expired or its owner process is gone.
  Across ``fork()`` the connection is closed before and reopened after, in
  parent and child, because SQLite's own state must not cross a fork.
* **Dead letters.** An event the server refused for good is kept with the
  server's message until :meth:`Outbox.retry_dead`.

The outbox stores events; it knows nothing of delivery handles. The small
public API is what ``python -m audit_instrument outbox`` uses:

>>> box = Outbox("audit-outbox.db", read_only=True)   # doctest: +SKIP
>>> box.status()                                       # doctest: +SKIP
OutboxStatus(pending=0, dead=1, delivered=1042, oldest_pending_age=None)
>>> box.dead_letters(10)[0].message                    # doctest: +SKIP
'rejected with HTTP 422: ...'
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from .._stats import note_failure
from ..errors import AuditConfigError, AuditError, DeliveryError
from ..event import AuditEvent
from .group_commit import CommitTimeoutError, GroupCommit
from .outbox_file import ROWS_PER_INSERT, connect, insert_sql

__all__ = ["DeadLetter", "Outbox", "OutboxStatus"]

_PENDING, _DEAD = 0, 1
_FORK_WAIT = 5.0  # seconds fork() waits for a write in progress before going ahead

OnError = Callable[[Sequence[AuditEvent], Exception], None]
_Op = tuple[str, tuple[Any, ...], OnError | None]
PaceRow = tuple[float, float, float]


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """Counts of an outbox: ``pending`` to send, ``dead`` letters, ``delivered`` so far."""

    pending: int
    dead: int
    delivered: int
    oldest_pending_age: float | None
    """Seconds since the oldest pending event was written; ``None`` if none is pending."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event the server refused for good, with its answer."""

    event: AuditEvent
    status: int | None
    message: str
    failed_at: datetime


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_open_outboxes: weakref.WeakSet[Outbox] = weakref.WeakSet()
_inherited: list[sqlite3.Connection] = []


class Outbox:
    """A SQLite file of events waiting for delivery; see the module docstring.

    ``synchronous`` is SQLite's: ``"FULL"`` (default) survives power loss,
    ``"NORMAL"`` survives a process crash only. ``busy_timeout`` is how long
    a write waits for another process holding the file. ``durability`` and
    ``max_delay``: see the module docstring. ``read_only=True`` opens the
    file for inspection only (:meth:`status`, :meth:`dead_letters`).

    A file that is not a usable outbox raises
    :class:`~audit_instrument.AuditConfigError` here, before any event is
    accepted and without writing to it.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Literal["FULL", "NORMAL"] = "FULL",
        busy_timeout: float = 30.0,
        durability: Literal["commit", "batch"] = "commit",
        max_delay: float = 0.01,
        read_only: bool = False,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise AuditConfigError(f"synchronous must be 'FULL' or 'NORMAL', not {synchronous!r}")
        if durability not in ("commit", "batch"):
            raise AuditConfigError(f"durability must be 'commit' or 'batch', not {durability!r}")
        if not isinstance(max_delay, (int, float)) or not 0 < max_delay <= 10:
            raise AuditConfigError(f"max_delay must be seconds in (0, 10], not {max_delay!r}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.busy_timeout = busy_timeout
        self.durability = durability
        self.max_delay = float(max_delay)
        self.read_only = read_only
        self._commits: GroupCommit[_Op] = GroupCommit(
            self._write, name=f"outbox {str(self.path)!r}", max_delay=self.max_delay,
            on_error=self._write_failed,
            # locked, full or gone: writing each submission alone would fail again
            retry_alone=lambda error: not isinstance(error, sqlite3.OperationalError))
        self._closed = False
        self._setup()
        _open_outboxes.add(self)

    def _setup(self) -> None:
        self._pid = os.getpid()
        self._owner = f"{self._pid}:{secrets.token_hex(6)}"
        self._db_lock = threading.Lock()
        self._conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        return connect(self.path, synchronous=self.synchronous, busy_timeout=self.busy_timeout,
                       read_only=self.read_only)

    # -- fork -----------------------------------------------------------------------------------
    def after_fork(self) -> None:
        """In a forked child: a connection, locks and a committer of its own (once)."""
        if self._pid == os.getpid():
            return
        self._commits.after_fork()
        # The parent's connection (closed before the fork unless a write held it
        # too long) is never used nor closed here: closing it could disturb the parent.
        _inherited.append(self._conn)
        if self._closed:
            self._pid = os.getpid()
            self._db_lock = threading.Lock()
            return
        self._setup()

    def _check_pid(self) -> None:
        if self._pid != os.getpid():  # a fork that skipped os.register_at_fork hooks
            self.after_fork()

    def _before_fork(self) -> bool:
        """Close the connection, with no write in progress; ``True`` if it was closed."""
        if self._closed or self._pid != os.getpid():
            return False
        if not self._db_lock.acquire(timeout=_FORK_WAIT):
            return False
        self._conn.close()
        return True

    def _after_fork_in_parent(self) -> None:
        try:
            self._conn = self._connect()
        except AuditError as exc:
            note_failure("outbox reopen", f"cannot reopen the outbox after fork: {exc}",
                         error=exc)
        finally:
            self._db_lock.release()

    # -- writes ---------------------------------------------------------------------------------
    def add(self, event: AuditEvent, *, owned: bool = False, lease: float = 360.0,
            wait: bool | None = None) -> None:
        """Write ``event`` as pending (see :meth:`add_many`)."""
        self.add_many((event,), owned=owned, lease=lease, wait=wait)

    def add_many(self, events: Iterable[AuditEvent], *, owned: bool = False,
                 lease: float = 360.0, wait: bool | None = None,
                 on_error: OnError | None = None) -> None:
        """Write several events as pending, in one transaction (all or none).

        ``owned`` claims them for this process for ``lease`` seconds (the
        engine is about to send them); otherwise any process may claim them.
        ``wait`` (default: ``durability == "commit"``) returns once they are
        committed, raising :class:`~audit_instrument.DeliveryError` if the
        write fails; without it the call returns at once, and ``on_error``
        hears of a failed write.
        """
        if self._pid != os.getpid():
            self.after_fork()
        if self._closed or self.read_only:
            raise DeliveryError(f"outbox {str(self.path)!r} is "
                                f"{'closed' if self._closed else 'opened read-only'}")
        now = time.time()
        owner, pid, until = (self._owner, self._pid, now + lease) if owned else (None, None, 0.0)
        # Serialised here, by each caller: in parallel with the SQLite work of a
        # commit in progress, which runs without the GIL (bench_outbox).
        try:
            ops: list[_Op] = [("add", (e.idempotency_key, e.to_json(), now, owner, pid, until, e),
                               on_error) for e in events]
        except (ValueError, TypeError, RecursionError) as exc:  # not encodable: none written
            raise DeliveryError(f"outbox {str(self.path)!r}: an event cannot be written: "
                                f"{type(exc).__name__}") from None
        if ops:
            self._submit(ops, self.durability == "commit" if wait is None else wait)

    def delivered(self, key: str) -> None:
        """Forget the event with idempotency key ``key``: the server accepted it."""
        self._check_pid()
        self._submit([("delivered", (key,), None)], False)

    def dead(self, key: str, status: int | None, message: str) -> None:
        """Keep ``key``'s event as a dead letter with the server's ``message``."""
        self._check_pid()
        self._submit([("dead", (status, message, time.time(), key), None)], False)

    def release(self, key: str, *, retry_in: float = 0.0) -> None:
        """Give ``key``'s event back (no owner), to be claimed again in ``retry_in`` seconds."""
        self._check_pid()
        self._submit([("release", (time.time() + retry_in, key), None)], False)

    def _submit(self, ops: list[_Op], wait: bool) -> None:
        where = str(self.path)
        try:
            self._commits.submit(ops, wait=wait, timeout=self.busy_timeout + 5.0)
        except CommitTimeoutError:
            raise DeliveryError(f"outbox {where!r}: commit timed out", retryable=True) from None
        except AuditError:  # closed
            raise DeliveryError(f"outbox {where!r} is closed") from None
        except Exception as exc:
            raise DeliveryError(f"outbox {where!r}: write failed: {exc}",
                                retryable=isinstance(exc, sqlite3.OperationalError)) from None

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until every write queued so far is committed; ``False`` on timeout."""
        self._check_pid()
        return self._commits.flush(timeout)

    def _write_failed(self, ops: Sequence[_Op], error: Exception) -> None:
        """A write nobody waited for failed: tell whoever asked to hear of it."""
        lost: dict[OnError, list[AuditEvent]] = {}
        unheard = 0
        for kind, params, on_error in ops:
            if kind == "add" and on_error is not None:
                lost.setdefault(on_error, []).append(params[-1])
            else:
                unheard += 1
        for on_error, events in lost.items():
            on_error(events, error)
        if unheard:
            note_failure("outbox write", f"outbox {str(self.path)!r}: a write of {unheard} "
                         f"operation(s) failed: {error}", error=error)

    def _write(self, ops: list[_Op]) -> None:
        """Commit ``ops`` in one transaction, or raise and keep none of them."""
        groups: dict[str, list[tuple[Any, ...]]] = {}
        for kind, params, _ in ops:
            groups.setdefault(kind, []).append(params)
        adds = [params[:6] for params in groups.get("add", ())]
        with self._db_lock:
            conn = self._conn
            if len(groups) == 1 and 0 < len(adds) <= ROWS_PER_INSERT:
                # The common case: one statement is its own transaction.
                conn.execute(insert_sql(len(adds)), list(itertools.chain.from_iterable(adds)))
                return
            conn.execute("BEGIN IMMEDIATE")
            try:
                for start in range(0, len(adds), ROWS_PER_INSERT):
                    chunk = adds[start:start + ROWS_PER_INSERT]
                    conn.execute(insert_sql(len(chunk)),
                                 list(itertools.chain.from_iterable(chunk)))
                if "release" in groups:
                    conn.executemany(
                        "UPDATE outbox SET owner = NULL, owner_pid = NULL, lease_until = 0, "
                        "next_try = ?, attempts = attempts + 1 WHERE key = ? AND state = 0",
                        groups["release"])
                if "dead" in groups:
                    conn.executemany(
                        "UPDATE outbox SET state = 1, status = ?, error = ?, failed_at = ?, "
                        "owner = NULL, owner_pid = NULL, lease_until = 0, "
                        "attempts = attempts + 1 WHERE key = ?", groups["dead"])
                if "delivered" in groups:
                    cursor = conn.executemany("DELETE FROM outbox WHERE key = ? AND state = 0",
                                              groups["delivered"])
                    if cursor.rowcount > 0:
                        conn.execute("UPDATE outbox_meta SET value = value + ? "
                                     "WHERE name = 'delivered'", (cursor.rowcount,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- claims ---------------------------------------------------------------------------------
    def _orphans(self) -> tuple[str, list[int]]:
        """SQL matching rows held by processes that are gone, and its parameters."""
        pids = [row[0] for row in self._conn.execute(
            "SELECT DISTINCT owner_pid FROM outbox WHERE owner_pid IS NOT NULL")]
        orphans = [pid for pid in pids if pid != self._pid and not _pid_alive(pid)]
        if not orphans:
            return "", []
        return f" OR owner_pid IN ({','.join('?' * len(orphans))})", orphans

    def claim(self, limit: int, *, lease: float = 360.0) -> list[AuditEvent]:
        """Take up to ``limit`` pending events for this process, oldest first.

        A row is free when nobody holds it, its lease expired, or the process
        holding it is gone (a crash); it is then leased to this process for
        ``lease`` seconds. A row that cannot be read back as an event becomes
        a dead letter saying so.
        """
        self._check_pid()
        if limit <= 0:
            return []
        now = time.time()
        with self._db_lock:
            try:
                taken, orphans = self._orphans()
                conn = self._conn
                conn.execute("BEGIN IMMEDIATE")
                try:
                    rows = conn.execute(
                        "UPDATE outbox SET owner = ?, owner_pid = ?, lease_until = ? WHERE id IN "
                        "(SELECT id FROM outbox WHERE state = 0 AND next_try <= ? AND "
                        f"(lease_until < ?{taken}) ORDER BY id LIMIT ?) RETURNING id, key, record",
                        (self._owner, self._pid, now + lease, now, now, *orphans, limit),
                    ).fetchall()
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise AuditError(f"outbox {str(self.path)!r}: claim failed: {exc}") from None
        rows.sort()
        claimed: list[AuditEvent] = []
        for _, key, record in rows:
            try:
                claimed.append(AuditEvent.from_dict(json.loads(record)))
            except (ValueError, TypeError, RecursionError) as exc:
                self.dead(key, None, f"cannot be read back as an event: {type(exc).__name__}")
        return claimed

    def claimable(self) -> int:
        """How many pending events no live process holds (what a claim could take)."""
        self._check_pid()
        now = time.time()
        with self._db_lock:
            try:
                taken, orphans = self._orphans()
                row = self._conn.execute(
                    f"SELECT count(*) FROM outbox WHERE state = 0 AND (lease_until < ?{taken})",
                    (now, *orphans)).fetchone()
            except sqlite3.Error as exc:
                raise AuditError(f"outbox {str(self.path)!r}: read failed: {exc}") from None
        return int(row[0])

    # -- the shared pacing budget ----------------------------------------------------------------
    def update_pace(self, change: Callable[[PaceRow], PaceRow]) -> PaceRow:
        """Apply ``change`` to the pacing row ``(tat, rate, cut_at)`` atomically; return it.

        The row is shared by every process using this file (see
        :mod:`.pacing`). It needs no durability: written without an fsync.
        """
        self._check_pid()
        if self._closed or self.read_only:
            raise AuditError(f"outbox {str(self.path)!r} is not open for writing")
        with self._db_lock:
            conn = self._conn
            try:
                conn.execute("PRAGMA synchronous=OFF")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    row = conn.execute(
                        "SELECT tat, rate, cut_at FROM outbox_pace WHERE id = 1").fetchone()
                    new = change((0.0, 0.0, 0.0) if row is None else
                                 (float(row[0]), float(row[1]), float(row[2])))
                    conn.execute("INSERT OR REPLACE INTO outbox_pace VALUES (1, ?, ?, ?)", new)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                finally:
                    conn.execute(f"PRAGMA synchronous={self.synchronous}")
            except sqlite3.Error as exc:
                raise AuditError(f"outbox {str(self.path)!r}: pacing row: {exc}") from None
        return new

    # -- inspection (the CLI's API) ----------------------------------------------------------------
    def status(self) -> OutboxStatus:
        """Pending, dead and delivered counts, and the age of the oldest pending event."""
        self._check_pid()
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT state, count(*), min(created_at) FROM outbox GROUP BY state").fetchall()
            found = self._conn.execute(
                "SELECT value FROM outbox_meta WHERE name = 'delivered'").fetchone()
        counts = {state: (count, oldest) for state, count, oldest in rows}
        pending, oldest = counts.get(_PENDING, (0, None))
        return OutboxStatus(
            pending=pending, dead=counts.get(_DEAD, (0, None))[0],
            delivered=0 if found is None else int(found[0]),
            oldest_pending_age=None if oldest is None else max(0.0, time.time() - oldest),
        )

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """The most recent ``limit`` dead letters, newest first."""
        self._check_pid()
        with self._db_lock:
            rows = self._conn.execute(
                "SELECT record, status, error, failed_at FROM outbox WHERE state = 1 "
                "ORDER BY failed_at DESC, id DESC LIMIT ?", (limit,)).fetchall()
        return [DeadLetter(AuditEvent.from_dict(json.loads(record)), status, error or "",
                           datetime.fromtimestamp(failed_at or 0.0, UTC))
                for record, status, error, failed_at in rows]

    def retry_dead(self) -> int:
        """Move every dead letter back to pending (after a fix); return how many."""
        self._check_pid()
        if self.read_only:
            raise AuditError(f"outbox {str(self.path)!r} is opened read-only")
        with self._db_lock:
            cursor = self._conn.execute(
                "UPDATE outbox SET state = 0, status = NULL, error = NULL, failed_at = NULL, "
                "next_try = 0, lease_until = 0, owner = NULL, owner_pid = NULL WHERE state = 1")
        return cursor.rowcount

    # -- closing ---------------------------------------------------------------------------------
    def close(self, timeout: float | None = 10.0) -> None:
        """Commit what is queued, stop the committer and close the file."""
        self._check_pid()
        if self._closed:
            return
        self._closed = True  # no new writes from now on
        self._commits.close(timeout)
        with self._db_lock:
            self._conn.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Outbox {str(self.path)!r}{' read-only' if self.read_only else ''}>"


def _before_fork() -> None:
    global _closed_for_fork
    _closed_for_fork = [box for box in list(_open_outboxes) if box._before_fork()]


def _after_fork_in_parent() -> None:
    global _closed_for_fork
    boxes, _closed_for_fork = _closed_for_fork, []
    for box in boxes:
        box._after_fork_in_parent()


def _after_fork_in_child() -> None:
    global _closed_for_fork
    _closed_for_fork = []
    for box in list(_open_outboxes):
        box.after_fork()


_closed_for_fork: list[Outbox] = []
os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)
