"""PostgreSQL store URLs: telling one from a file name, the schema, and a form safe to show.

Nothing here imports the driver, so ``AuditStore("audit.db")`` and the CLI
never pay for it.

A store URL is a libpq URL (``postgresql://user:password@host:port/db``,
or ``postgres://``) with one parameter of its own: ``schema=`` (default
``audit``), the PostgreSQL schema holding the store's tables. Every other
query parameter (``sslmode``, ``connect_timeout``, ``application_name`` ...)
goes to libpq unchanged. The password — in the URL or as a ``password=``
parameter — is kept for connecting only: :attr:`StoreURL.shown` has neither.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from ..errors import AuditConfigError

__all__ = ["DEFAULT_SCHEMA", "StoreURL", "is_postgres_url", "parse_store_url"]

DEFAULT_SCHEMA = "audit"
_SCHEMES = ("postgresql", "postgres")
_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_SECRET_PARAMS = frozenset({"password", "passfile", "sslpassword"})


def is_postgres_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL store (``postgresql://`` or ``postgres://``)."""
    if isinstance(target, os.PathLike):
        return False
    if not isinstance(target, str):
        return False
    scheme, sep, _ = target.partition("://")
    return bool(sep) and scheme.lower() in _SCHEMES


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A parsed store URL. ``conninfo`` (for libpq) holds the password; nothing else does."""

    shown: str
    schema: str
    password: str = field(repr=False)
    conninfo: str = field(repr=False)

    def scrub(self, text: str) -> str:
        """``text`` with the password (as given, and percent-encoded) replaced by ``***``."""
        for secret in {self.password, quote(self.password, safe="")}:
            if secret:
                text = text.replace(secret, "***")
        return text


def check_schema_name(schema: object) -> str:
    """``schema`` if it is a plain lower-case SQL identifier; AuditConfigError otherwise."""
    if not isinstance(schema, str) or not _SCHEMA_NAME.fullmatch(schema):
        raise AuditConfigError(
            f"schema must be a lower-case name of letters, digits and _ (at most 63, "
            f"not starting with a digit), like 'audit', not {schema!r}"
        )
    if schema.startswith("pg_"):
        raise AuditConfigError(f"schema {schema!r}: names starting with pg_ are PostgreSQL's own")
    return schema


def parse_store_url(url: str, schema: str | None = None) -> StoreURL:
    """Split ``url`` into what libpq gets, the schema, and what may be shown.

    ``schema`` (the keyword) and a ``schema=`` parameter in the URL must not
    disagree. Raises :class:`~audit_instrument.AuditConfigError` for a
    malformed URL — without repeating the URL, which may hold a password.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise AuditConfigError(
            "not a valid PostgreSQL URL (expected postgresql://user@host:port/database)"
        ) from None
    params = parse_qsl(parts.query, keep_blank_values=True)
    given = [value for name, value in params if name == "schema"]
    if len(given) > 1 or (given and schema is not None and given[0] != schema):
        raise AuditConfigError("the URL's schema= and the schema argument disagree")
    name = check_schema_name(given[0] if given else DEFAULT_SCHEMA if schema is None else schema)
    passed = [(key, value) for key, value in params if key != "schema"]
    password = unquote(parts.password or "")
    for key, value in passed:
        if key == "password":
            password = value
    conninfo = urlunsplit(parts._replace(query=urlencode(passed)))

    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    shown_params = [(k, v) for k, v in passed if k not in _SECRET_PARAMS]
    if name != DEFAULT_SCHEMA:
        shown_params.append(("schema", name))
    shown = urlunsplit(("postgresql", netloc, parts.path, urlencode(shown_params), ""))
    return StoreURL(shown=shown, schema=name, password=password, conninfo=conninfo)
