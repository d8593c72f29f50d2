"""Who may read what: ``authorize``'s answer, and reads that never leave the caller's groups.

Every read of the viewer goes through :class:`Scoped`, which holds the
groups the caller may read. A caller limited to some groups gets, for a
list, the newest events of each of those groups merged by time (one indexed
query per group, so an unrelated busy group costs nothing); for one event,
nothing unless its group is theirs; for the chart, counts of their groups
only. A ``group`` filter outside their groups matches nothing.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Set
from dataclasses import dataclass
from typing import Any, Final

from ..errors import AuditConfigError
from ..event import format_timestamp
from ..store import ActivityCount, AuditStore, StoredEvent
from ..store.query import encode_cursor

__all__ = ["ALL_GROUPS", "AllGroups", "Scoped", "groups_from"]


class AllGroups:
    """The type of :data:`ALL_GROUPS`."""

    _made = False

    def __new__(cls) -> AllGroups:
        if cls._made:
            raise TypeError("use audit_instrument.viewer.ALL_GROUPS")
        cls._made = True
        return super().__new__(cls)

    def __repr__(self) -> str:
        return "ALL_GROUPS"


ALL_GROUPS: Final = AllGroups()
"""What ``authorize`` returns for a caller who may read every group (a support engineer)."""


def groups_from(answer: object) -> frozenset[str] | AllGroups:
    """``authorize``'s answer checked: :data:`ALL_GROUPS`, or a set of group ids.

    A string (which would read as its characters), ``None``, ``True`` or a
    collection holding anything but non-empty strings is a mistake in the
    application's ``authorize``: :class:`~audit_instrument.AuditConfigError`,
    and the request is refused.
    """
    if answer is ALL_GROUPS:
        return ALL_GROUPS
    if isinstance(answer, (Set, list, tuple)) and not isinstance(answer, str):
        groups = frozenset(answer)
        if all(isinstance(group, str) and group for group in groups):
            return groups
    raise AuditConfigError(
        f"authorize() returned {type(answer).__name__}: it must return a set of group ids "
        "the caller may read (empty: none), or audit_instrument.viewer.ALL_GROUPS"
    )


def _key(item: StoredEvent) -> tuple[str, int]:
    return format_timestamp(item.event.occurred_at), item.seq


@dataclass(frozen=True, slots=True)
class Scoped:
    """Reads of ``store`` limited to ``groups`` (or every group)."""

    store: AuditStore
    groups: frozenset[str] | AllGroups

    @property
    def everything(self) -> bool:
        """Whether the caller may read every group (and so see store-wide figures)."""
        return self.groups is ALL_GROUPS

    def allows(self, group: str) -> bool:
        """Whether events of ``group`` may be shown."""
        return isinstance(self.groups, AllGroups) or group in self.groups

    def _targets(self, group: str | None) -> list[str | None]:
        """The group filters to query: ``[None]`` for every group."""
        if group is not None:
            return [group] if self.allows(group) else []
        if isinstance(self.groups, AllGroups):
            return [None]
        return [group for group in sorted(self.groups)]

    def page(
        self, filters: dict[str, Any], limit: int, cursor: str | None
    ) -> tuple[list[StoredEvent], str | None]:
        """The newest ``limit`` events matching ``filters`` after ``cursor``; the next cursor."""
        wanted = self._targets(filters.get("group"))
        rest = {name: value for name, value in filters.items() if name != "group"}
        if len(wanted) == 1:
            page = self.store.query(group=wanted[0], limit=limit, cursor=cursor, **rest)
            return page.items, page.next_cursor
        found: list[StoredEvent] = []
        more = False
        for group in wanted:
            page = self.store.query(group=group, limit=limit, cursor=cursor, **rest)
            found.extend(page.items)
            more = more or page.next_cursor is not None
        found.sort(key=_key, reverse=True)
        if len(found) > limit:
            more = True
            found = found[:limit]
        if not more or not found:
            return found, None
        last = _key(found[-1])
        return found, encode_cursor(*last)

    def newest(self, filters: dict[str, Any]) -> StoredEvent | None:
        """The newest event matching ``filters``, if any."""
        items, _ = self.page(filters, 1, None)
        return items[0] if items else None

    def get(self, idempotency_key: str) -> StoredEvent | None:
        """The event with this key, or ``None`` if there is none *or it is not theirs*."""
        item = self.store.get(idempotency_key)
        if item is None or not self.allows(item.event.group):
            return None
        return item

    def records(self, filters: dict[str, Any]) -> Iterator[tuple[str, int, str, str]]:
        """Every matching row, newest first, unparsed (for exports)."""
        wanted = self._targets(filters.get("group"))
        rest = {name: value for name, value in filters.items() if name != "group"}
        size = max(200, 5000 // max(len(wanted), 1))  # memory stays flat however many groups
        streams = [self.store.records(group=group, page_size=size, **rest) for group in wanted]
        if len(streams) == 1:
            return streams[0]
        return heapq.merge(*streams, key=lambda row: (row[0], row[1]), reverse=True)

    def activity(
        self, *, unit: str, since: object, until: object, group: str | None, action: str | None
    ) -> list[ActivityCount] | None:
        """Activity counts of the caller's groups (and ``group``, if given)."""
        if group is not None:
            groups: list[str] | None = [group] if self.allows(group) else []
        else:
            groups = None if isinstance(self.groups, AllGroups) else sorted(self.groups)
        return self.store.activity(
            unit=unit, since=since, until=until, groups=groups, action=action  # type: ignore[arg-type]
        )
