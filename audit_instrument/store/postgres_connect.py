"""Connecting to the PostgreSQL store: session settings, the schema made or checked, lost
connections told from other errors, messages without the password."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..errors import AuditConfigError
from .postgres_schema import (
    APPLICATION,
    MIGRATIONS,
    SCHEMA_VERSION,
    create_statements,
)
from .postgres_url import StoreURL

__all__ = ["Connection", "can_flush_apart", "first_line", "lost", "open_connection", "prepare",
           "store_version"]

Connection = psycopg.Connection[Any]

# SQLSTATE classes and codes after which the connection is gone or the server restarting.
_LOST_CLASSES = ("08",)
_LOST_CODES = frozenset({"57P01", "57P02", "57P03"})


def first_line(error: BaseException) -> str:
    """The first line of an error's message (the driver adds detail lines)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def lost(error: psycopg.Error, conn: Connection | None) -> bool:
    """Whether ``error`` means the connection (or the server) went away."""
    if conn is None or conn.closed or conn.broken:
        return True
    code = error.sqlstate or ""
    return code[:2] in _LOST_CLASSES or code in _LOST_CODES


def open_connection(
    url: StoreURL,
    *,
    timeout: float,
    readonly: bool,
    synchronous: Literal["NORMAL", "FULL"],
) -> Connection:
    """A connection (autocommit: the store opens its own transactions) with its settings.

    ``lock_timeout`` bounds a wait for the chain head; a writer's session
    also gets ``idle_in_transaction_session_timeout``, so a writer stopped
    while holding the head (SIGSTOP, a debugger) is cut off and the others
    go on; a reader's transactions are read-only.
    """
    given = conninfo_to_dict(url.conninfo)
    options: dict[str, Any] = {"autocommit": True}
    if "connect_timeout" not in given:
        options["connect_timeout"] = max(2, round(timeout))
    if "application_name" not in given:
        options["application_name"] = APPLICATION
    conn = psycopg.connect(url.conninfo, **options)
    try:
        settings = {"lock_timeout": f"{round(timeout * 1000)}ms"}
        if readonly:
            settings["default_transaction_read_only"] = "on"
        else:
            settings["idle_in_transaction_session_timeout"] = f"{round(max(timeout, 1) * 1000)}ms"
            if synchronous == "FULL":
                settings["synchronous_commit"] = "on"
        conn.execute(
            "SELECT " + ", ".join("set_config(%s, %s, false)" for _ in settings),
            [item for pair in settings.items() for item in pair],
        )
    except BaseException:
        conn.close()
        raise
    return conn


def _lock_id(schema: str) -> int:
    """The advisory lock that makes creating or migrating ``schema`` one writer's job."""
    digest = hashlib.sha256(f"{APPLICATION}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def store_version(conn: Connection, schema: str, where: str) -> int | None:
    """The store's schema version; ``None`` if there is none yet; raise if foreign."""
    row = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL, (SELECT count(*) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s)",
        (f'"{schema}".store_meta', schema),
    ).fetchone()
    assert row is not None
    has_meta, relations = row
    if not has_meta:
        if relations:
            raise AuditConfigError(
                f"{where}: schema {schema} holds other tables, not an audit store "
                "(choose another schema=)"
            )
        return None
    meta = conn.execute(
        f'SELECT application, version FROM "{schema}".store_meta WHERE id = 1'
    ).fetchone()
    if meta is None or meta[0] != APPLICATION:
        raise AuditConfigError(
            f"{where}: schema {schema} is not an audit store (its store_meta names another "
            "application)"
        )
    return int(meta[1])


def prepare(conn: Connection, schema: str, where: str, *, readonly: bool,
            scrub: Any) -> None:
    """Check ``schema`` holds an audit store of a known version; create or migrate it.

    A writer does it in one transaction under an advisory lock, so processes
    starting together agree; a reader never changes anything. ``scrub``
    takes the password out of a driver message.
    """
    if readonly:
        version = store_version(conn, schema, where)
        if version is None:
            raise AuditConfigError(
                f"{where}: no audit store in schema {schema} (nothing has been stored there yet)"
            )
    else:
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id(schema),))
                version = store_version(conn, schema, where)
                if version is None:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
                    ).fetchone()
                    for statement in create_statements(schema):
                        if not (exists and statement.startswith("CREATE SCHEMA")):
                            conn.execute(statement)
                    version = SCHEMA_VERSION
                elif version < SCHEMA_VERSION:
                    for old in range(version, SCHEMA_VERSION):
                        for statement in MIGRATIONS[old]:
                            conn.execute(statement)
                    conn.execute(
                        f'UPDATE "{schema}".store_meta SET version = %s WHERE id = 1',
                        (SCHEMA_VERSION,),
                    )
                    version = SCHEMA_VERSION
        except psycopg.Error as error:
            raise AuditConfigError(
                f"{where}: cannot create the audit store in schema {schema} "
                f"({scrub(first_line(error))})"
            ) from None
    if version > SCHEMA_VERSION:
        raise AuditConfigError(
            f"{where}: written by a newer audit_instrument (schema {version}); upgrade"
        )


def can_flush_apart(conn: Connection) -> bool:
    """Whether this role may call ``pg_logical_emit_message`` (see the backend's writes)."""
    row = conn.execute(
        "SELECT has_function_privilege('pg_logical_emit_message(boolean, text, text)', "
        "'EXECUTE')"
    ).fetchone()
    return bool(row and row[0])
