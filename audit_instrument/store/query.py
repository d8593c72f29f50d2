"""Queries: validated filters, pages of stored events, and opaque cursors.

A backend turns :class:`Filters` into its own query language; everything a
user can pass is checked here first, so a bad value is an
:class:`~audit_instrument.AuditValidationError` naming the filter whatever
the backend.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from ..errors import AuditValidationError
from ..event import AuditEvent, format_timestamp

__all__ = [
    "MAX_PAGE",
    "Filters",
    "Page",
    "StoredEvent",
    "check_limit",
    "decode_cursor",
    "encode_cursor",
    "make_filters",
]

MAX_PAGE = 10_000
"""The largest ``limit`` of one page."""

_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


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
class Filters:
    """Checked query filters: ids and names as given, times in the stored text form.

    ``target`` matches an event by any of its targets. ``since`` is
    inclusive, ``until`` exclusive; both compare with the stored
    ``occurred_at`` text (``2026-01-31T12:00:00.000000Z``), which sorts as
    time does.
    """

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    group: str | None = None
    since: str | None = None
    until: str | None = None


def _text(field: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise AuditValidationError(field, "must be a non-empty string", value)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise AuditValidationError(
            field, "must be valid text (it holds a lone surrogate, e.g. bytes that are not UTF-8)",
            value,
        ) from None
    return value


def _stamp(field: str, value: object) -> str | None:
    """A time bound as the stored text form, for comparisons."""
    if value is None:
        return None
    rule = "must be a datetime or an ISO 8601 string like 2026-01-31T12:00:00Z"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            pass
    if not isinstance(value, datetime):
        raise AuditValidationError(field, rule, value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    try:
        return format_timestamp(value)
    except OverflowError:  # e.g. year 1 with a positive offset: before year 1 in UTC
        raise AuditValidationError(field, "is out of range in UTC", value) from None


def make_filters(
    actor: object = None,
    action: object = None,
    target: object = None,
    group: object = None,
    since: object = None,
    until: object = None,
) -> Filters:
    """:class:`Filters` from what a caller passed; AuditValidationError names a bad one."""
    return Filters(
        actor=_text("actor", actor),
        action=_text("action", action),
        target=_text("target", target),
        group=_text("group", group),
        since=_stamp("since", since),
        until=_stamp("until", until),
    )


def check_limit(limit: object) -> int:
    """``limit`` if it is an int from 1 to :data:`MAX_PAGE`."""
    if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
        raise AuditValidationError("limit", f"must be an integer from 1 to {MAX_PAGE}", limit)
    return limit


def encode_cursor(occurred_at: str, seq: int) -> str:
    """The cursor after the row ``(occurred_at, seq)``: URL-safe, opaque to users."""
    raw = json.dumps([occurred_at, seq], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: object) -> tuple[str, int]:
    """``(occurred_at, seq)`` of a cursor from :func:`encode_cursor`."""
    if not isinstance(cursor, str):
        raise AuditValidationError("cursor", "must be a string", cursor)
    occurred_at: object = None
    seq: object = None
    if len(cursor) <= 200:  # a real cursor is under 60 characters
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            occurred_at, seq = json.loads(raw)
        except (ValueError, TypeError, binascii.Error, RecursionError):
            pass
    if not (
        isinstance(occurred_at, str)
        and _STAMP.fullmatch(occurred_at)
        and type(seq) is int
        and 0 < seq < 2**63
    ):
        raise AuditValidationError(
            "cursor", "is not a cursor returned by AuditStore.query()", cursor
        )
    return occurred_at, seq
