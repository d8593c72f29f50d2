"""The outbox's SQLite file: its schema, and opening it for writing or for inspection only.

Kept apart from :mod:`.outbox` (what the outbox does) so that the rules for
which files may be opened, and how, are in one place:

* a new or empty file becomes an outbox (created ``0600``);
* an existing database that has tables but no ``outbox`` table (an audit
  store, another application's file) is refused, before anything is written;
* ``read_only=True`` opens with SQLite's ``mode=ro``: nothing is written,
  not even the schema, and a file that is not an outbox is refused.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Literal

from ..errors import AuditConfigError

__all__ = ["COLUMNS", "ROWS_PER_INSERT", "SCHEMA", "connect", "insert_sql"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY,
    key         TEXT    NOT NULL UNIQUE,
    record      TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    state       INTEGER NOT NULL DEFAULT 0,
    owner       TEXT,
    owner_pid   INTEGER,
    lease_until REAL    NOT NULL DEFAULT 0,
    next_try    REAL    NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    status      INTEGER,
    error       TEXT,
    failed_at   REAL
);
CREATE INDEX IF NOT EXISTS outbox_owned ON outbox(owner_pid) WHERE owner_pid IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_dead ON outbox(state, failed_at) WHERE state = 1;
CREATE TABLE IF NOT EXISTS outbox_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO outbox_meta VALUES ('delivered', 0);
CREATE TABLE IF NOT EXISTS outbox_pace (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    tat    REAL NOT NULL,
    rate   REAL NOT NULL,
    cut_at REAL NOT NULL
);
"""
COLUMNS = ("id, key, record, created_at, state, owner, owner_pid, lease_until, next_try, "
           "attempts, status, error, failed_at")
ROWS_PER_INSERT = 500
"""Rows per ``INSERT`` statement (well under SQLite's limit on bound parameters)."""


@functools.lru_cache(maxsize=64)
def insert_sql(rows: int) -> str:
    """One ``INSERT`` of ``rows`` pending events (one trip into SQLite for many rows)."""
    return ("INSERT OR IGNORE INTO outbox (key, record, created_at, owner, owner_pid, "
            "lease_until) VALUES " + ",".join(["(?, ?, ?, ?, ?, ?)"] * rows))



def _check_is_outbox(conn: sqlite3.Connection, *, empty_ok: bool) -> None:
    tables = {row[0] for row in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "outbox" not in tables:
        if empty_ok and not tables:
            return
        raise sqlite3.DatabaseError("it has no outbox table")
    conn.execute(f"SELECT {COLUMNS} FROM outbox LIMIT 0")
    if "outbox_meta" not in tables:
        raise sqlite3.DatabaseError("it has no outbox_meta table")


def _peek(path: Path, where: str) -> None:
    """Refuse a file that is not an outbox without leaving a trace.

    A reader of a WAL database creates its ``-wal`` and ``-shm`` files. When
    there is no ``-wal`` file the main file holds everything, so it is read
    as immutable (no side files, no locks) to decide; otherwise the side
    files exist already and the ordinary read-only open decides.
    """
    if Path(str(path) + "-wal").exists():
        return
    uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro&immutable=1"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
        try:
            _check_is_outbox(conn, empty_ok=False)
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise AuditConfigError(f"cannot use {where!r} as an outbox: {exc} — "
                               f"{_hint(str(exc), exc)}") from None


def _hint(message: str, exc: sqlite3.Error) -> str:
    if "no outbox" in message:
        return "it is not an outbox: another kind of database (an audit store?)"
    if isinstance(exc, sqlite3.DatabaseError) and "readonly" not in message:
        return ("it is not an outbox database (corrupt, or another kind of file); move it "
                "aside to start a new one")
    return "check the file's permissions"


def connect(path: Path, *, synchronous: Literal["FULL", "NORMAL"], busy_timeout: float,
            read_only: bool) -> sqlite3.Connection:
    """Open ``path`` as an outbox (module docstring); :class:`AuditConfigError` if it can't be."""
    where = str(path)
    if read_only:
        if not path.is_file():
            raise AuditConfigError(f"no outbox at {where!r}")
        uri = "file:" + urllib.parse.quote(str(path.resolve())) + "?mode=ro"
    elif not path.exists():
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise AuditConfigError(
                f"cannot create the outbox {where!r}: {exc.strerror}") from None
    try:
        if read_only:
            _peek(path, where)
            conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        else:
            conn = sqlite3.connect(where, timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
    except sqlite3.Error as exc:
        raise AuditConfigError(f"cannot open the outbox {where!r}: {exc}") from None
    try:
        # Before anything is written: a file that is someone else's stays untouched.
        _check_is_outbox(conn, empty_ok=not read_only)
        if not read_only:
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous={synchronous}")
            conn.executescript(SCHEMA)
            conn.execute("BEGIN IMMEDIATE")  # prove we can write, now rather than per event
            conn.execute("COMMIT")
    except sqlite3.Error as exc:
        conn.close()
        message = str(exc)
        hint = _hint(message, exc)
        raise AuditConfigError(f"cannot use {where!r} as an outbox: {message} — {hint}") from None
    return conn
