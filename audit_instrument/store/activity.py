"""Activity counts: how many events per hour or per day, by group and action.

A store keeps these counts up to date as it writes rows (on SQLite, a
trigger adds one to the row's hour and day), so a chart of a million events
reads a few hundred counts instead of the events. A bucket is the stored
``occurred_at`` cut to the hour (``2026-01-31T12``) or the day
(``2026-01-31``), in UTC; a time range selects the buckets it overlaps, so
counts are for whole hours or days.

>>> store.activity(unit="day", since="2026-01-01", groups=["organization_1"])  # doctest: +SKIP
[ActivityCount(bucket=datetime(2026, 1, 1, 0, 0, tzinfo=UTC), action='user.login', events=12),
 ...]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from ..errors import AuditValidationError
from .query import make_filters

__all__ = [
    "ActivityCount",
    "ActivityQuery",
    "Unit",
    "bucket_of",
    "bucket_start",
    "make_activity_query",
    "next_bucket",
]

Unit = Literal["hour", "day"]
_WIDTH = {"hour": 13, "day": 10}
_FORMAT = {"hour": "%Y-%m-%dT%H", "day": "%Y-%m-%d"}
_STEP = {"hour": timedelta(hours=1), "day": timedelta(days=1)}


@dataclass(frozen=True, slots=True)
class ActivityQuery:
    """Checked arguments of an activity read: buckets ``since <= b < until``.

    ``groups`` ``None`` means every group; ``action`` ``None`` every action.
    """

    unit: Unit
    since: str | None = None
    until: str | None = None
    groups: tuple[str, ...] | None = None
    action: str | None = None


@dataclass(frozen=True, slots=True)
class ActivityCount:
    """``events`` events of ``action`` in the hour or day starting at ``bucket`` (UTC)."""

    bucket: datetime
    action: str
    events: int


def bucket_of(stamp: str, unit: Unit) -> str:
    """The bucket of a stored ``occurred_at`` text (``2026-01-31T12:00:00.000000Z``)."""
    return stamp[: _WIDTH[unit]]


def bucket_start(bucket: str, unit: Unit) -> datetime:
    """When the bucket begins, as an aware UTC datetime."""
    return datetime.strptime(bucket, _FORMAT[unit]).replace(tzinfo=UTC)


def next_bucket(bucket: str, unit: Unit) -> str:
    """The bucket after ``bucket``."""
    return (bucket_start(bucket, unit) + _STEP[unit]).strftime(_FORMAT[unit])


def make_activity_query(
    unit: object = "day",
    since: object = None,
    until: object = None,
    groups: Iterable[str] | None = None,
    action: object = None,
) -> ActivityQuery:
    """An :class:`ActivityQuery` of the buckets overlapping ``[since, until)``.

    ``since`` and ``until`` take what :meth:`AuditStore.query` takes; bad
    values raise :class:`~audit_instrument.AuditValidationError` naming them.
    """
    if unit not in _WIDTH:
        raise AuditValidationError("unit", "must be 'hour' or 'day'", unit)
    checked_unit: Unit = "hour" if unit == "hour" else "day"
    filters = make_filters(action=action, since=since, until=until)
    chosen: tuple[str, ...] | None = None
    if groups is not None:
        if isinstance(groups, str):
            raise AuditValidationError("groups", "must be a collection of group ids, not a string")
        chosen = tuple(sorted({make_filters(group=group).group or "" for group in groups}))
    first = None if filters.since is None else bucket_of(filters.since, checked_unit)
    bound = None
    if filters.until is not None:
        last = bucket_of(filters.until, checked_unit)
        starts_bucket = filters.until == bucket_start(last, checked_unit).strftime(
            "%Y-%m-%dT%H:%M:%S.000000Z"
        )
        try:
            bound = last if starts_bucket else next_bucket(last, checked_unit)
        except OverflowError:  # the last day of year 9999: no bound needed
            bound = None
    return ActivityQuery(checked_unit, first, bound, chosen, filters.action)
