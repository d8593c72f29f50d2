"""Reads of the audit log are audit events themselves: ``audit_log.view`` and ``audit_log.export``.

Every page, event, chart and API answer records one ``audit_log.view``;
every download one ``audit_log.export``, before the first byte is sent.
The actor is the viewer's caller; the group is the group the caller asked
for, else their only group, else the group of their request's audit scope,
else the viewer's ``group``. The target is the audit log itself; the
metadata say what was read (the page, the filters, how many events, the
event's id, the export's format). If the event cannot be recorded the read
is refused: nobody reads the log unrecorded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from ..context import current_context, resolve_party
from ..event import ActionType, AuditEvent
from ..rules import MAX_STRING_LENGTH

__all__ = ["Reader", "Record", "read_event", "reader_from"]

_TARGET = ("audit_log", "audit log")


@dataclass(frozen=True, slots=True)
class Reader:
    """Who is reading: ``(id, name)``, and where from (as their request says)."""

    actor: tuple[str, str]
    location: str = ""
    user_agent: str = ""
    group: str | None = None


def reader_from(
    value: object, *, location: str, user_agent: str
) -> Reader | None:
    """The reader from ``actor(request)``'s answer, else from the audit scope; ``None`` if unknown.

    ``value`` is what the viewer's ``actor`` option returned (a user object,
    a mapping, an ``(id, name)`` tuple), or ``None`` to use the actor of the
    request's audit scope (set by audit_instrument's middleware or
    ``set_actor``).
    """
    context = current_context()
    party = resolve_party(value, "actor") if value is not None else None
    if party is None and context.actor_id is not None:
        party = (context.actor_id, context.actor_name or context.actor_id)
    if party is None:
        return None
    return Reader(
        party,
        location=(context.location or location)[:MAX_STRING_LENGTH],
        user_agent=(context.user_agent or user_agent)[:MAX_STRING_LENGTH],
        group=context.group,
    )


def _text(value: str) -> str:
    return value if len(value) <= MAX_STRING_LENGTH else value[: MAX_STRING_LENGTH - 1] + "…"


def read_event(
    action: str,
    reader: Reader,
    *,
    group: str,
    metadata: Mapping[str, str | int],
) -> AuditEvent:
    """The ``audit_log.*`` event of one read."""
    return AuditEvent(
        group=group,
        action=action,
        action_type=ActionType.READ,
        actor_name=reader.actor[1],
        actor_id=reader.actor[0],
        target_id=_TARGET[0],
        target_name=_TARGET[1],
        location=reader.location,
        user_agent=reader.user_agent,
        metadata={key: _text(value) if isinstance(value, str) else value
                  for key, value in metadata.items()},
    )


Record = Callable[[AuditEvent], object]
