"""What every subcommand shares: the parser class, errors, store opening, time filters.

A store is named by a file path or a ``postgresql://`` URL; without one, the
``AUDIT_DB`` environment variable names it, else ``audit.db``. A URL is
shown without its password.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ..errors import AuditConfigError

if TYPE_CHECKING:
    from ..store import AuditStore

__all__ = [
    "DB_ENV",
    "DEFAULT_DB",
    "CommandError",
    "Commands",
    "Parser",
    "add_db_argument",
    "add_key_argument",
    "display_path",
    "open_store",
    "page_size",
    "parse_when",
    "printable",
]

DEFAULT_DB = "audit.db"
DB_ENV = "AUDIT_DB"

_AGE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class CommandError(Exception):
    """A user mistake: printed as one line on stderr, exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, printable(f"{self.prog}: error: {message} (see --help)\n"))


if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[Parser]
else:
    Commands = argparse._SubParsersAction


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    """The optional positional ``DB`` argument of the store commands."""
    parser.add_argument(
        "db", nargs="?", default=os.environ.get(DB_ENV) or DEFAULT_DB, metavar="DB",
        help=f"store file or postgresql:// URL (default: ${DB_ENV} if set, else {DEFAULT_DB})",
    )


def printable(text: str) -> str:
    """``text`` safe to print on any terminal encoding: undecodable bytes of
    arguments (lone surrogates) shown as escapes instead of failing."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def parse_when(text: str) -> datetime:
    """An argparse type: ISO 8601 date/time (naive = UTC) or an age like ``30m``, ``7d``."""
    value = text.strip()
    match = _AGE.fullmatch(value)
    try:
        if match:
            amount, unit = match.groups()
            return datetime.now(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
        when = datetime.fromisoformat(value)
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except OverflowError:
        raise argparse.ArgumentTypeError(
            f"out of range: dates go from year 1 to 9999 (got {text!r})"
        ) from None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date/time like 2026-01-31 or 2026-01-31T12:00Z, or an age like "
            f"30m, 2h, 7d (got {text!r})"
        ) from None


def page_size(text: str) -> int:
    """An argparse type: a whole number from 1 to 10000."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 10000 (got {text!r})")
    return value


def add_key_argument(parser: argparse.ArgumentParser) -> None:
    """``--key-file``: where the key of a keyed store is read from."""
    parser.add_argument(
        "--key-file", metavar="PATH",
        help="read the store's key from this file (default: the AUDIT_STORE_KEY variable)",
    )


def _read_key(path: str) -> bytes:
    try:
        return Path(path).read_bytes().rstrip(b"\r\n")
    except OSError as error:
        raise CommandError(
            f"{display_path(path)}: cannot read the key file ({error.strerror})"
        ) from error
    except ValueError:  # a NUL byte, or text no file name can hold
        raise CommandError(f"{display_path(path)}: not a usable file name") from None


def open_store(
    path: str, *, readonly: bool = True, key_file: str | None = None
) -> AuditStore:
    """Open the store at ``path``; a missing or foreign file is a :class:`CommandError`."""
    from ..store import AuditStore

    key = None if key_file is None else _read_key(key_file)
    try:
        return AuditStore(path, readonly=readonly, key=key)
    except AuditConfigError as error:
        raise CommandError(str(error)) from error


def display_path(path: str | os.PathLike[str]) -> str:
    """A file name or store URL as printed in output lines (a URL without its password)."""
    from ..store.postgres_url import is_postgres_url, parse_store_url

    if is_postgres_url(path):
        try:
            return printable(parse_store_url(str(path)).shown)
        except AuditConfigError:
            return "(a malformed PostgreSQL URL)"
    return printable(os.fsdecode(path))


def fail(prog: str, message: str) -> None:
    """Print ``message`` as the one error line on stderr."""
    print(printable(f"{prog}: error: {message}"), file=sys.stderr)
