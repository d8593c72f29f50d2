"""What every subcommand shares: the parser class, errors, store opening, time filters."""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NoReturn

from ..errors import AuditConfigError

if TYPE_CHECKING:
    from ..store import AuditStore

__all__ = [
    "DEFAULT_DB",
    "CommandError",
    "Commands",
    "Parser",
    "add_db_argument",
    "open_store",
    "page_size",
    "parse_when",
]

DEFAULT_DB = "audit.db"

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
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


if TYPE_CHECKING:
    Commands = argparse._SubParsersAction[Parser]
else:
    Commands = argparse._SubParsersAction


def add_db_argument(parser: argparse.ArgumentParser) -> None:
    """The optional positional ``DB`` argument of the store commands."""
    parser.add_argument(
        "db", nargs="?", default=DEFAULT_DB, metavar="DB",
        help=f"store file (default {DEFAULT_DB})",
    )


def parse_when(text: str) -> datetime:
    """An argparse type: ISO 8601 date/time (naive = UTC) or an age like ``30m``, ``7d``."""
    value = text.strip()
    match = _AGE.fullmatch(value)
    if match:
        amount, unit = match.groups()
        return datetime.now(UTC) - timedelta(**{_UNITS[unit]: int(amount)})
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date/time like 2026-01-31 or 2026-01-31T12:00Z, or an age like "
            f"30m, 2h, 7d (got {text!r})"
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def page_size(text: str) -> int:
    """An argparse type: a whole number from 1 to 10000."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 to 10000 (got {text!r})")
    return value


def open_store(path: str, *, readonly: bool = True) -> AuditStore:
    """Open the store at ``path``; a missing or foreign file is a :class:`CommandError`."""
    from ..store import AuditStore

    try:
        return AuditStore(path, readonly=readonly)
    except AuditConfigError as error:
        raise CommandError(str(error)) from error


def fail(prog: str, message: str) -> None:
    """Print ``message`` as the one error line on stderr."""
    print(f"{prog}: error: {message}", file=sys.stderr)
