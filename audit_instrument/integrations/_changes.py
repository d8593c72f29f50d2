"""From changed rows to audit events: what SQLAlchemy and Django model capture share.

A :class:`ModelAudit` is one ``audit_model(Model, ...)`` declaration once its
ORM has listed the fields; the functions here turn the values of a row into
metadata (``<field>`` on create, ``<field>_was``/``<field>`` for what changed
on update, ``<field>_was`` on delete), split metadata that would break the
WorkOS limits into several events, and build and report events like
``@audit`` does (actor, group and location from the current scope; an event
that cannot be built is counted, logged once per cause and sent on
``signals.event_invalid``; raised only in strict mode).

Values become metadata primitives: strings longer than 500 characters are
cut to 499 and end with ``…``; JSON values (dicts, lists) become compact JSON
text, with the values of masked keys inside them masked; bytes become
``"<N bytes>"``; other objects their ``str()``. A field whose key is masked
is recorded as ``"[masked]"`` without its value being looked at, so that a
changed password shows as changed and nothing more.

When the events go out — at the commit, or written in the caller's
transaction — is :mod:`._emission`'s part.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from ..errors import AuditConfigError
from ..event import AuditEvent, MetadataValue
from ..instrument import make_event, report_invalid
from ..rules import (
    MASKED,
    MAX_INT,
    MAX_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_STRING_LENGTH,
    MIN_INT,
    ActionType,
    is_masked,
    validate_action,
)

__all__ = [
    "PART_KEY",
    "ModelAudit",
    "build_events",
    "changed",
    "created",
    "deleted",
    "id_text",
    "id_texts",
    "metadata_value",
    "net_changes",
    "snake_case",
]

PART_KEY = "audit_part"
"""Metadata key of an event that is one of several parts of one change: ``"2/3"``."""
_WAS = "_was"
_ELLIPSIS = "…"
_FIRST_WORD = re.compile(r"(.)([A-Z][a-z]+)")
_LAST_WORD = re.compile(r"([a-z0-9])([A-Z])")

TargetName = str | Callable[[Any], object] | None
"""``target_name=``: an attribute name, a callable taking the object, or ``None``."""


def snake_case(name: str) -> str:
    """``Tweet`` → ``tweet``, ``BlogPost`` → ``blog_post``, ``HTTPRequest`` → ``http_request``."""
    return _LAST_WORD.sub(r"\1_\2", _FIRST_WORD.sub(r"\1_\2", name)).lower()


class ModelAudit:
    """One audited model: its category, action names, the fields it records, its target name.

    ``columns`` are the fields whose values become metadata (their metadata
    keys); ``collections`` the many-to-many fields, recorded as lists of ids.
    """

    __slots__ = ("actions", "category", "collections", "columns", "model", "target_name")

    def __init__(
        self,
        model: type,
        *,
        category: str | None,
        available: Sequence[str],
        collections: Sequence[str],
        default: Sequence[str],
        fields: Sequence[str] | None,
        exclude: Sequence[str],
        target_name: TargetName,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.model = model
        self.category = snake_case(model.__name__) if category is None else category
        if not isinstance(self.category, str) or not self.category:
            raise AuditConfigError(f"audit_model({model.__name__}): category must be a "
                                   f"non-empty string, not {category!r}")
        try:
            if "." in self.category:
                raise ValueError(self.category)
            self.actions = {
                kind: validate_action(f"{self.category}.{kind}")
                for kind in ("create", "update", "delete")
            }
        except Exception:
            raise AuditConfigError(
                f"audit_model({model.__name__}): category {self.category!r} must be one "
                f"word without dots or spaces (actions read '<category>.update')"
            ) from None
        names = {*available, *collections}
        aliases = aliases or {}

        def known(option: str, given: object) -> list[str]:
            if isinstance(given, str) or not isinstance(given, Iterable):
                raise AuditConfigError(
                    f"audit_model({model.__name__}): {option}= must be a list of field names, "
                    f"not {given!r}"
                )
            found: list[str] = []
            for name in given:
                name = aliases.get(name, name)
                if name not in names:
                    raise AuditConfigError(
                        f"audit_model({model.__name__}): {option}= names {name!r}, which is "
                        f"not a field of {model.__name__} (fields: {', '.join(sorted(names))})"
                    )
                found.append(name)
            return found

        chosen = known("fields", fields) if fields is not None else list(default)
        dropped = set(known("exclude", exclude))
        chosen = [name for name in dict.fromkeys(chosen) if name not in dropped]
        for name in chosen:
            if len(name) + len(_WAS) > MAX_KEY_LENGTH:
                raise AuditConfigError(
                    f"audit_model({model.__name__}): field {name!r} is longer than "
                    f"{MAX_KEY_LENGTH - len(_WAS)} characters, so '<field>_was' would break the "
                    f"{MAX_KEY_LENGTH}-character metadata key limit: leave it out with exclude="
                )
        self.columns = tuple(name for name in chosen if name not in collections)
        self.collections = tuple(name for name in chosen if name in collections)
        if target_name is not None and not (isinstance(target_name, str) or callable(target_name)):
            raise AuditConfigError(
                f"audit_model({model.__name__}): target_name= must be an attribute name or a "
                f"callable taking the object, not {target_name!r}"
            )
        self.target_name = target_name

    def __repr__(self) -> str:
        return f"<ModelAudit {self.model.__name__} as {self.category!r}>"

    def target_id(self, pk: object) -> str:
        """``"<category>_<primary key>"``: ``tweet_5``."""
        return f"{self.category}_{id_text(pk)}"

    def name_of(self, obj: object, default: str) -> str:
        """The target name of ``obj``: from ``target_name=``, else ``default``."""
        spec = self.target_name
        if spec is None:
            return default
        value = getattr(obj, spec) if isinstance(spec, str) else spec(obj)
        if value is None or value == "":
            return default
        return value if isinstance(value, str) else str(value)


# -- values -------------------------------------------------------------------------------------


def _cut(text: str) -> str:
    if len(text) <= MAX_STRING_LENGTH:
        return text
    return text[: MAX_STRING_LENGTH - 1] + _ELLIPSIS


def _masked_json(value: object) -> object:
    """``value`` with the values of masked keys (at any depth) replaced by ``"[masked]"``."""
    if isinstance(value, Mapping):
        return {str(key): MASKED if is_masked(str(key)) else _masked_json(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_masked_json(item) for item in value]
    return value


def metadata_value(key: str, value: object) -> MetadataValue | None:
    """A field's value as a metadata primitive; ``None`` stays ``None`` (left out)."""
    if value is None:
        return None
    if is_masked(key):
        return MASKED  # never look at it
    kind = type(value)
    if kind is str:
        return _cut(value)  # type: ignore[arg-type]
    if kind is bool or kind is datetime:
        return value  # type: ignore[return-value]
    if kind is int:
        return value if MIN_INT <= value <= MAX_INT else _cut(str(value))  # type: ignore[operator,return-value]
    if kind is float:
        return value if math.isfinite(value) else str(value)  # type: ignore[arg-type,return-value]
    if isinstance(value, enum.Enum):
        return metadata_value(key, value.value)
    if isinstance(value, datetime):
        return value
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (Mapping, list, tuple)):
        text = json.dumps(_masked_json(value), default=str, ensure_ascii=False,
                          separators=(",", ":"))
        return _cut(text)
    if isinstance(value, (str, int, float)):  # subclasses: the plain value
        return metadata_value(key, _plain(value))
    if isinstance(value, (Decimal, uuid.UUID, timedelta)):
        return str(value)
    return _cut(str(value))


def _plain(value: str | int | float) -> str | int | float:
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int(value)
    return float(value)


def _same(old: object, new: object) -> bool:
    try:
        return bool(old == new) and type(old) is type(new)
    except Exception:  # a value that cannot be compared counts as changed
        return False


def created(values: Mapping[str, object]) -> dict[str, MetadataValue]:
    """``<field>`` for each value that is set."""
    out: dict[str, MetadataValue] = {}
    for key, value in values.items():
        converted = metadata_value(key, value)
        if converted is not None:
            out[key] = converted
    return out


def deleted(values: Mapping[str, object]) -> dict[str, MetadataValue]:
    """``<field>_was`` for each value that was set."""
    out: dict[str, MetadataValue] = {}
    for key, value in values.items():
        converted = metadata_value(key, value)
        if converted is not None:
            out[key + _WAS] = converted
    return out


_UNKNOWN: Any = object()


def changed(
    before: Mapping[str, object], after: Mapping[str, object]
) -> dict[str, MetadataValue]:
    """``<field>_was`` / ``<field>`` for each field of ``after`` whose value differs.

    A field missing from ``before`` (its old value is not known) gives only
    ``<field>``.
    """
    out: dict[str, MetadataValue] = {}
    for key, new in after.items():
        old = before.get(key, _UNKNOWN)
        if _same(old, new):
            continue
        if old is not _UNKNOWN:
            was = metadata_value(key, old)
            if was is not None:
                out[key + _WAS] = was
        now = metadata_value(key, new)
        if now is not None:
            out[key] = now
    return out


def id_text(pk: object) -> str:
    """A primary key as text; the parts of a composite key joined with ``_``."""
    if isinstance(pk, tuple):
        return "_".join(str(part) for part in pk) if len(pk) != 1 else str(pk[0])
    return str(pk)


def _order(ids: Iterable[object]) -> list[object]:
    listed = list(ids)
    try:
        return sorted(listed)  # type: ignore[type-var]
    except TypeError:
        return sorted(listed, key=str)


def id_texts(ids: Iterable[object]) -> list[str]:
    """Related ids as comma-separated text, in pieces of at most 500 characters."""
    pieces: list[str] = []
    current: list[str] = []
    size = 0
    for pk in _order(ids):
        text = _cut(id_text(pk))
        if current and size + 1 + len(text) > MAX_STRING_LENGTH:
            pieces.append(",".join(current))
            current, size = [], 0
        size += len(text) + (1 if current else 0)
        current.append(text)
    if current:
        pieces.append(",".join(current))
    return pieces


# -- events -------------------------------------------------------------------------------------


def _parts(groups: Sequence[dict[str, MetadataValue]]) -> list[dict[str, MetadataValue]]:
    """Pack groups of keys (a field's ``_was`` and new value stay together) into metadata
    maps of at most 50 keys; several maps get ``audit_part: "i/n"``."""
    total = sum(len(group) for group in groups)
    if total <= MAX_METADATA_KEYS and len({k for g in groups for k in g}) == total:
        merged: dict[str, MetadataValue] = {}
        for group in groups:
            merged.update(group)
        return [merged]
    room = MAX_METADATA_KEYS - 1  # one key for the part number
    parts: list[dict[str, MetadataValue]] = [{}]
    for group in groups:
        current = parts[-1]
        if len(current) + len(group) > room or any(key in current for key in group):
            parts.append(current := {})
        current.update(group)
    parts = [part for part in parts if part]
    for number, part in enumerate(parts, 1):
        part[PART_KEY] = f"{number}/{len(parts)}"
    return parts


def _groups(metadata: Mapping[str, MetadataValue]) -> list[dict[str, MetadataValue]]:
    """One group per field: ``x_was`` and ``x`` together."""
    groups: dict[str, dict[str, MetadataValue]] = {}
    for key, value in metadata.items():
        field = key[: -len(_WAS)] if key.endswith(_WAS) and key[: -len(_WAS)] in metadata \
            else key
        groups.setdefault(field, {})[key] = value
    return list(groups.values())


def build_events(
    audit: ModelAudit,
    kind: str,
    target_id: str,
    target_name: str,
    metadata: Mapping[str, MetadataValue],
    lists: Sequence[tuple[str, Sequence[str]]] = (),
) -> list[AuditEvent]:
    """The event(s) of one change of one row; ``[]`` (reported) if they cannot be built.

    ``kind`` is ``create``, ``update`` or ``delete``. ``lists`` are
    ``(key, pieces)`` of many-to-many ids: each piece is a value of ``key``,
    and two pieces of one key never share an event.
    """
    action = audit.actions[kind]
    if not lists and len(metadata) <= MAX_METADATA_KEYS:
        parts: list[Mapping[str, MetadataValue]] = [metadata]  # the usual case: one event
    else:
        groups = _groups(metadata)
        for key, pieces in lists:
            groups.extend({key: piece} for piece in pieces)
        parts = list(_parts(groups))
    try:
        return [
            make_event(action, _ACTION_TYPES[kind], (target_id, target_name), None, None,
                        None, dict(part), None)
            for part in parts
        ]
    except Exception as error:
        report_invalid(action, error)
        return []


_ACTION_TYPES = {"create": ActionType.CREATE, "update": ActionType.UPDATE,
                 "delete": ActionType.DELETE}


def _fields_of(event: AuditEvent, columns: Collection[str]) -> list[str] | None:
    """The column fields an event's metadata is about, or ``None`` if it holds anything else
    (many-to-many ids, a part number)."""
    fields: list[str] = []
    for key in event.metadata:
        field = key[: -len(_WAS)] if key.endswith(_WAS) else key
        if field not in columns:
            return None
        if field not in fields:
            fields.append(field)
    return fields


def _combined(first: AuditEvent, second: AuditEvent, columns: Collection[str]) -> AuditEvent | None:
    """``first`` (a create or update) followed by the update ``second`` of the same row, as one
    event with the net change; ``None`` if the update undid itself, ``first`` unchanged if the
    two cannot be combined."""
    old, new = first.metadata, second.metadata
    metadata: dict[str, MetadataValue] = {}
    for field in columns:
        in_old = field in old or field + _WAS in old
        in_new = field in new or field + _WAS in new
        if first.action_type is ActionType.CREATE:
            now = new.get(field) if in_new else old.get(field)
            if now is not None:
                metadata[field] = now
            continue
        if not (in_old or in_new):
            continue
        was = old.get(field + _WAS) if in_old else new.get(field + _WAS)
        now = new.get(field) if in_new else old.get(field)
        if was == now and not is_masked(field):
            continue
        if was is not None:
            metadata[field + _WAS] = was
        if now is not None:
            metadata[field] = now
    if len(metadata) > MAX_METADATA_KEYS:
        return first
    if not metadata and first.action_type is ActionType.UPDATE:
        return None
    return dataclasses.replace(first, metadata=metadata)


def net_changes(events: Sequence[tuple[AuditEvent, Collection[str]]]) -> list[AuditEvent]:
    """One event per row: updates of a row created or updated earlier in the same list (by the
    same actor, in the same group) are folded into that earlier event.

    Each event comes with the column fields of its model. Events holding
    anything else (many-to-many ids, parts) are left as they are.
    """
    out: list[AuditEvent | None] = []
    where: dict[str, int] = {}
    for event, columns in events:
        at = where.get(event.target_id)
        earlier = out[at] if at is not None else None
        if (at is not None and earlier is not None
                and event.action_type is ActionType.UPDATE
                and earlier.action_type in (ActionType.CREATE, ActionType.UPDATE)
                and (earlier.actor_id, earlier.group) == (event.actor_id, event.group)
                and _fields_of(earlier, columns) is not None
                and _fields_of(event, columns) is not None):
            combined = _combined(earlier, event, columns)
            if combined is not earlier:
                out[at] = combined
                continue
        where[event.target_id] = len(out)
        out.append(event)
    return [event for event in out if event is not None]
