"""What ``verify`` reads from a PostgreSQL store: one repeatable-read snapshot, streamed."""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from .backend import ActivityRow, Row, TargetRow
from .chain import ChainBase, Seal
from .postgres_connect import Connection
from .postgres_sql import Statements

__all__ = ["Snapshot"]

_FETCH = 10_000  # rows per round trip of verify's cursors


class Snapshot:
    """What ``verify`` reads, inside one repeatable-read transaction."""

    def __init__(self, conn: Connection, sql: Statements) -> None:
        self._conn = conn
        self._sql = sql
        self._streams: list[Generator[Any, None, None]] = []

    def head(self) -> tuple[int, str] | None:
        row = self._conn.execute(self._sql.head).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def seal(self) -> Seal | None:
        row = self._conn.execute(self._sql.seal).fetchone()
        return None if row is None else Seal(int(row[0]), str(row[1]), str(row[2]))

    def _stream(self, name: str, sql: str) -> Generator[Any, None, None]:
        stream = self._cursor_rows(name, sql)
        self._streams.append(stream)
        return stream

    def _cursor_rows(self, name: str, sql: str) -> Generator[Any, None, None]:
        with self._conn.cursor(name=name) as cursor:
            cursor.itersize = _FETCH
            cursor.execute(sql)
            yield from cursor

    def close(self) -> None:
        """Close the cursors of a walk that stopped early, inside the transaction."""
        for stream in self._streams:
            stream.close()

    def rows(self) -> Iterator[Row]:
        return self._stream("audit_verify_rows", self._sql.rows)

    def targets(self, *, ordered: bool) -> Iterator[TargetRow] | None:
        order = " ORDER BY seq, target_id" if ordered else ""
        return self._stream(f"audit_verify_targets_{int(ordered)}", self._sql.targets + order)

    def pending(self) -> int:
        row = self._conn.execute(self._sql.count_pending).fetchone()
        return int(row[0]) if row else 0

    def base(self) -> ChainBase | None:
        return None  # not pruned: pruning a PostgreSQL store is not supported yet

    def activity(self, unit: str) -> Iterator[ActivityRow] | None:
        return None  # no activity counts kept yet
