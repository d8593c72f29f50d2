"""The caller's connection in ``store.in_transaction(conn)``: how a pending row is written
through it, and which DB-API connection it writes through.

Supported: a psycopg 3 ``Connection``; a SQLAlchemy ``Connection`` or
``Session`` on a PostgreSQL engine; Django's ``connection`` (or
``connections[alias]``) with the PostgreSQL backend. Anything else, and
psycopg's ``AsyncConnection``, is refused with
:class:`~audit_instrument.AuditConfigError`. The drivers are looked up in
``sys.modules``, never imported here.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ..errors import AuditConfigError

__all__ = ["Driver", "Insert", "caller_insert"]

Insert = Callable[[str, str], list[tuple[int, str]]]
"""Run a pending-row ``INSERT`` (SQL and its one parameter: a record, or a JSON array of them)
on the caller's connection: ``(id, xid)`` of each row written."""
Driver = Callable[[], object]
"""The DB-API (psycopg) connection the caller's connection writes through, when asked
(``None`` while it has none)."""


def _module(name: str) -> Any:
    return sys.modules.get(name)


def _psycopg_insert(conn: Any) -> tuple[Insert, Driver]:
    if type(conn).__name__.startswith("Async"):
        raise AuditConfigError(
            "in_transaction() takes a synchronous psycopg Connection, not an AsyncConnection"
        )

    def insert(sql: str, records: str) -> list[tuple[int, str]]:
        _check_psycopg_transaction(conn)
        return _ids(conn.execute(sql, (records,)).fetchall())

    return insert, lambda: conn


def _ids(rows: Any) -> list[tuple[int, str]]:
    return [(int(row[0]), str(row[1])) for row in rows]


def _check_psycopg_transaction(conn: Any) -> None:
    psycopg = _module("psycopg")
    if psycopg is None or not isinstance(conn, psycopg.Connection):
        return
    idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    if conn.autocommit and idle:
        raise AuditConfigError(
            "in_transaction(): the psycopg connection is in autocommit mode outside a "
            "transaction, so the event would commit on its own: open one "
            "(with conn.transaction(): ...)"
        )


def _sqlalchemy_insert(conn: Any, *, session: bool) -> tuple[Insert, Driver]:
    def insert(sql: str, records: str) -> list[tuple[int, str]]:
        connection = conn.connection() if session else conn  # begins the session's transaction
        if connection.dialect.name != "postgresql":
            raise AuditConfigError(
                f"in_transaction(): the SQLAlchemy connection is to {connection.dialect.name}, "
                "not PostgreSQL"
            )
        _check_psycopg_transaction(connection.connection.driver_connection)  # AUTOCOMMIT?
        return _ids(connection.exec_driver_sql(sql, (records,)).fetchall())  # autobegins

    def driver() -> object:
        if session and not conn.in_transaction():  # don't begin one just to be asked
            return None
        connection = conn.connection() if session else conn
        return connection.connection.driver_connection

    return insert, driver


def _django_insert(conn: Any) -> tuple[Insert, Driver]:
    def insert(sql: str, records: str) -> list[tuple[int, str]]:
        if conn.vendor != "postgresql":
            raise AuditConfigError(
                f"in_transaction(): the Django connection is to {conn.vendor}, not PostgreSQL"
            )
        if not conn.in_atomic_block and conn.get_autocommit():
            raise AuditConfigError(
                "in_transaction(): Django is in autocommit mode outside transaction.atomic(), "
                "so the event would commit on its own: wrap the block in transaction.atomic()"
            )
        with conn.cursor() as cursor:
            cursor.execute(sql, [records])
            return _ids(cursor.fetchall())

    return insert, lambda: conn.connection


def caller_insert(conn: object) -> tuple[Insert, Driver]:
    """How to write a pending row through ``conn``, and how to find the DB-API connection it
    writes through; AuditConfigError for what is not supported."""
    psycopg = _module("psycopg")
    if psycopg is not None and isinstance(conn, psycopg.Connection | psycopg.AsyncConnection):
        return _psycopg_insert(conn)
    orm = _module("sqlalchemy.orm")
    if orm is not None and isinstance(conn, orm.Session):
        return _sqlalchemy_insert(conn, session=True)
    engine = _module("sqlalchemy.engine")
    if engine is not None and isinstance(conn, engine.Connection):
        return _sqlalchemy_insert(conn, session=False)
    django_db = _module("django.db")
    if django_db is not None:
        base = _module("django.db.backends.base.base")
        target = conn
        if type(conn).__name__ == "ConnectionProxy":  # django.db.connection
            target = django_db.connections[conn._alias]  # type: ignore[attr-defined]
        if base is not None and isinstance(target, base.BaseDatabaseWrapper):
            return _django_insert(target)
    raise AuditConfigError(
        "in_transaction() takes a psycopg Connection, a SQLAlchemy Connection or Session, or "
        f"a Django connection; got {type(conn).__module__}.{type(conn).__qualname__}"
    )
