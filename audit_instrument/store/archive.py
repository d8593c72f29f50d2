"""Archives: the rows a prune moves out, written as an audit store file of their own.

An archive holds rows exactly as the store had them (same numbers, records
and hashes) with its own chain head, so ``verify ARCHIVE`` checks it alone:
its first row follows genesis, or the base the store had when the archive
was started. Pruning again into the same file appends the next rows, which
continue its chain. A new archive is built under a temporary name and
renamed into place once complete, so a crash never leaves half an archive
under the name asked for.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Protocol

from ..errors import AuditConfigError
from .backend import Row, TargetRow
from .chain import ChainBase, ChainKey, Linker, Seal
from .sqlite import SQLiteBackend
from .sqlite_prune import BULK_CACHE
from .sqlite_prune import base as read_base
from .sqlite_schema import create

__all__ = ["ArchiveEnd", "Rows", "archive_end", "write_archive"]

_INSERT = (
    'INSERT INTO events (seq, occurred_at, action, actor_id, target_id, "group", '
    "idempotency_key, record, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_TARGET = (
    "INSERT OR IGNORE INTO event_targets (seq, target_id, occurred_at) VALUES (?, ?, ?)"
)

ArchiveEnd = tuple[int, str]
"""``(seq, hash)`` of an archive's last row: the row after which it continues."""


class Rows(Protocol):
    """The rows to archive, in order; ``end`` starts as where they continue from (the
    archive's end) and is the last row's ``(seq, hash)`` once they have been iterated."""

    end: ArchiveEnd

    def __iter__(self) -> Iterator[Row]: ...


def archive_end(path: Path) -> ArchiveEnd | None:
    """Where an existing archive ends; ``None`` if there is no file at ``path``."""
    if not path.exists():
        return None
    backend = SQLiteBackend(path, readonly=True)
    try:
        seq, digest = backend.head()
        return seq, digest
    finally:
        backend.close()


def write_archive(
    path: Path,
    rows: Rows,
    targets: Iterable[TargetRow],
    *,
    base: ChainBase | None,
    seal: Seal | None,
    key: ChainKey | None,
    where: str,
) -> ArchiveEnd:
    """Write ``rows`` (and their target entries) to the archive at ``path``; its new end.

    An existing archive must end where ``rows`` continue from (``rows.end``
    before they are read). A new archive starts at ``base`` (``None``:
    genesis). On a keyed chain (``seal``) the archive is keyed too, from the
    same row, and its head MAC is made with ``key``.
    """
    if path.exists():
        _append(path, rows, targets, seal=seal, key=key, where=where)
    else:
        _create(path, rows, targets, base=base, seal=seal, key=key, where=where)
    return rows.end


def _finish(
    conn: sqlite3.Connection, end: ArchiveEnd, seal: Seal | None, key: ChainKey | None,
    where: str,
) -> None:
    """Move the archive's head to ``end``; key it if it holds keyed rows."""
    conn.execute("UPDATE chain SET seq = ?, hash = ? WHERE id = 1", end)
    if seal is None or end[0] < seal.keyed_from:
        return
    have = conn.execute("SELECT keyed_from FROM chain_seal WHERE id = 1").fetchone()
    if have is None:
        conn.execute(
            "INSERT INTO chain_seal (id, keyed_from, key_id, head_mac) VALUES (1, ?, ?, '')",
            (seal.keyed_from, seal.key_id),
        )
    mac = Linker(seal, key, where).head_mac(end[0], end[1], read_base(conn))
    conn.execute("UPDATE chain_seal SET head_mac = ? WHERE id = 1", (mac,))


def _create(
    path: Path, rows: Rows, targets: Iterable[TargetRow], *, base: ChainBase | None,
    seal: Seal | None, key: ChainKey | None, where: str,
) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as error:
        raise AuditConfigError(
            f"{path}: cannot write the archive ({error.strerror})"
        ) from error
    os.close(fd)
    try:
        with closing(sqlite3.connect(partial, isolation_level=None)) as conn:
            # Built in one transaction without a journal: on failure the file is dropped.
            conn.execute("PRAGMA journal_mode = OFF")
            conn.execute("PRAGMA synchronous = OFF")
            conn.execute(f"PRAGMA cache_size = {BULK_CACHE}")  # indexes sorted in memory
            # each index is built by a scan of the new table: read it mapped, not copied
            conn.execute(f"PRAGMA mmap_size = {_MAP}")
            conn.execute("BEGIN")
            create(conn, lambda c: _insert(c, rows))
            conn.executemany(_INSERT_TARGET, targets)
            if base is not None:
                conn.execute(
                    "INSERT INTO chain_base (id, seq, hash, pruned_at) VALUES (1, ?, ?, ?)",
                    (base.seq, base.hash, base.pruned_at),
                )
            _finish(conn, rows.end, seal, key, where)
            conn.execute("COMMIT")
        with open(partial, "rb") as file:
            os.fsync(file.fileno())
        os.replace(partial, path)
        _sync_dir(path.parent)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _append(
    path: Path, rows: Rows, targets: Iterable[TargetRow], *,
    seal: Seal | None, key: ChainKey | None, where: str,
) -> None:
    after = rows.end
    SQLiteBackend(path).close()  # an audit store at the current schema, or AuditConfigError
    with closing(sqlite3.connect(path, isolation_level=None, timeout=10.0)) as conn:
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute(f"PRAGMA cache_size = {BULK_CACHE}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            head = conn.execute("SELECT seq, hash FROM chain WHERE id = 1").fetchone()
            if head is None or (int(head[0]), str(head[1])) != after:
                raise AuditConfigError(f"{path}: the archive changed while pruning into it")
            conn.executemany(_INSERT, rows)
            conn.executemany(_INSERT_TARGET, targets)
            _finish(conn, rows.end, seal, key, where)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


_MAP = 1 << 32  # bytes of the new archive read through mmap while its indexes are built


def _insert(conn: sqlite3.Connection, rows: Iterable[Row]) -> None:
    conn.executemany(_INSERT, rows)


def _sync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform without directory handles
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

