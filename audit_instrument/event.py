"""The audit event: its fields, the rules they obey, and its JSON forms.

An :class:`AuditEvent` is frozen and validated when it is built, so any event
that exists is one the server will accept. Its JSON is the one of
``../shared/WIRE.md``: :meth:`AuditEvent.to_dict` gives the seed's
``POST /events`` object, :meth:`AuditEvent.to_audit_logs_dict` the current
``POST /audit_logs/events`` one.
"""

from __future__ import annotations

import enum
import itertools
import math
import os
import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from json.encoder import encode_basestring as _quote  # C-accelerated; ensure_ascii=False's
from time import time_ns as _time_ns
from types import MappingProxyType
from typing import Any

from .errors import AuditValidationError

__all__ = [
    "ActionType",
    "AuditEvent",
    "MetadataValue",
    "Primitive",
    "format_timestamp",
    "validate_action",
    "validate_action_type",
    "validate_metadata",
]

Primitive = str | bool | int | float | datetime
"""A value metadata may hold directly."""
MetadataValue = Primitive | Mapping[str, Primitive]
"""A metadata value: a primitive, or a one-level map of primitives."""

MAX_METADATA_KEYS = 50
MAX_KEY_LENGTH = 40
MAX_STRING_LENGTH = 500

_ACTION = re.compile(r"[^\s.]+(?:\.[^\s.]+)+")
_STAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
_UTC = UTC
_SEED_KEYS = (
    "group",
    "action",
    "action_type",
    "actor_name",
    "actor_id",
    "target_name",
    "target_id",
    "location",
    "occurred_at",
    "metadata",
)
_EXTRA_KEYS = ("user_agent", "idempotency_key")
_REQUIRED_STRINGS = ("group", "actor_name", "actor_id", "target_name", "target_id")


_NO_METADATA: Mapping[str, Any] = MappingProxyType({})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ActionType(enum.StrEnum):
    """What an event did to its target: Create, Read, Update or Delete."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"


_ACTION_TYPES: dict[object, ActionType] = {t.value: t for t in ActionType}
_ACTION_TYPES.update({t: t for t in ActionType})


_KEY_BATCH = 256


def _new_key_prefix() -> None:
    global _key_prefix, _key_blocks
    _key_prefix = str(uuid.uuid4())[:24]
    _key_blocks = itertools.count(random.getrandbits(24))  # 2**40 - 2**24 batches to wrap
    _key_pool.clear()


_KEY_SUFFIXES = tuple(f"{n:02x}" for n in reversed(range(_KEY_BATCH)))


def _refill_keys() -> str:
    # each batch owns a block number: 10 hex digits of block, 2 of position
    head = _key_prefix + "%010x" % next(_key_blocks)  # noqa: UP031
    _key_pool.extend([head + suffix for suffix in _KEY_SUFFIXES])
    return _key_pool.pop()


_key_pool: list[str] = []
_key_prefix = ""
_key_blocks: itertools.count[int] = itertools.count()
_new_key_prefix()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_key_prefix)


def new_idempotency_key() -> str:
    """A fresh UUID4-formatted key, unique to one event, for ever.

    The first 74 random bits come from a ``uuid4()`` drawn once per process
    (again in a forked child), the last 48 bits number the process's events
    from a random starting block: as unique as ``uuid4()`` per event and
    several times cheaper (keys are made in batches), which matters on the
    ``@audit`` hot path. Keys only have to be unique, not secret: sending an
    event needs the API key anyway.
    """
    try:
        return _key_pool.pop()
    except IndexError:
        return _refill_keys()


def format_timestamp(value: datetime, *, milliseconds: bool = False) -> str:
    """``2019-05-01T01:15:55.619355Z``: UTC, ISO 8601, microseconds (or ms), ``Z``."""
    text = _as_utc(value).isoformat(timespec="microseconds")  # ends with "+00:00"
    return text[:-9 if milliseconds else -6] + "Z"


def _as_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        return value.replace(tzinfo=_UTC)
    if value.tzinfo is _UTC:
        return value
    return value.astimezone(_UTC)


def _parse_timestamp(name: str, value: object) -> datetime:
    if isinstance(value, datetime):
        return _as_utc(value)
    if isinstance(value, str):
        try:
            return _as_utc(datetime.fromisoformat(value))
        except ValueError:
            pass
    raise AuditValidationError(
        name, "must be a datetime or an ISO 8601 string like 2019-05-01T01:15:55.619355Z", value
    )


def validate_action(action: object) -> str:
    """Return ``action`` if it reads ``category.name``, else raise."""
    if not isinstance(action, str) or not _ACTION.fullmatch(action):
        raise AuditValidationError(
            "action", "must be 'category.name': dot-separated, no empty parts or spaces", action
        )
    return action


def validate_action_type(action_type: object) -> ActionType:
    """Return the :class:`ActionType` for ``"C"``/``"R"``/``"U"``/``"D"``, else raise."""
    try:
        return _ACTION_TYPES[action_type]
    except (KeyError, TypeError):
        raise AuditValidationError(
            "action_type", "must be one of 'C', 'R', 'U', 'D' (or ActionType)", action_type
        ) from None


def _check_key(where: str, key: object) -> str:
    if not isinstance(key, str) or not key:
        raise AuditValidationError(where, "keys must be non-empty strings", key)
    if len(key) > MAX_KEY_LENGTH:
        raise AuditValidationError(
            f"{where}.{key}", f"key names are at most {MAX_KEY_LENGTH} characters"
        )
    return key


def _check_primitive(where: str, value: object) -> Primitive:
    kind = type(value)
    if kind is str:
        if len(value) > MAX_STRING_LENGTH:  # type: ignore[arg-type]
            raise AuditValidationError(
                where,
                f"strings are at most {MAX_STRING_LENGTH} characters (got {len(value)})",  # type: ignore[arg-type]
            )
        return value  # type: ignore[return-value]
    if kind is bool or kind is int:
        return value  # type: ignore[return-value]
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise AuditValidationError(where, "numbers must be finite (no NaN or inf)", value)
        return value  # type: ignore[return-value]
    if isinstance(value, datetime):
        return _as_utc(value)
    if isinstance(value, (str, int, float)) and not isinstance(value, enum.Enum):
        # subclasses of str/int/float that are not enums: store the plain value
        for base in (bool, str, int, float):
            if isinstance(value, base):
                return _check_primitive(where, base(value))
    raise AuditValidationError(
        where, "values must be str, bool, int, float or datetime, or a map of those", value
    )


def validate_metadata(metadata: object, where: str = "metadata") -> dict[str, MetadataValue]:
    """Check ``metadata`` against the WorkOS rules and return a normalised copy.

    Values are primitives (datetimes made UTC-aware) or one-level maps of them;
    at most 50 keys per map, key names of at most 40 characters, strings of at
    most 500 characters, finite numbers.
    """
    if not isinstance(metadata, Mapping):
        raise AuditValidationError(where, "must be a mapping of str to values", metadata)
    if len(metadata) > MAX_METADATA_KEYS:
        raise AuditValidationError(where, f"at most {MAX_METADATA_KEYS} keys (got {len(metadata)})")
    out: dict[str, MetadataValue] = {}
    for key, value in metadata.items():
        _check_key(where, key)
        if isinstance(value, Mapping):
            if where != "metadata":
                raise AuditValidationError(f"{where}.{key}", "maps may be nested one level only")
            out[key] = validate_metadata(value, f"metadata.{key}")  # type: ignore[assignment]
        else:
            out[key] = _check_primitive(f"{where}.{key}", value)
    return out


def _freeze(metadata: dict[str, MetadataValue]) -> Mapping[str, MetadataValue]:
    for key, value in metadata.items():
        if type(value) is dict:
            metadata[key] = MappingProxyType(value)
    return MappingProxyType(metadata)


def _metadata_json(metadata: Mapping[str, MetadataValue]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, datetime):
            out[key] = format_timestamp(value)
        elif isinstance(value, Mapping):
            out[key] = _metadata_json(value)
        else:
            out[key] = value
    return out


def _metadata_text(metadata: Mapping[str, MetadataValue]) -> str:
    """The compact JSON of ``_metadata_json(metadata)``, as ``json.dumps`` writes it, faster."""
    if not metadata:
        return "{}"
    parts = []
    for key, value in metadata.items():
        kind = type(value)
        if kind is str:
            text = _quote(value)  # type: ignore[arg-type]
        elif kind is bool:
            text = "true" if value else "false"
        elif kind is int:
            text = int.__repr__(value)
        elif kind is float:
            text = float.__repr__(value)
        elif isinstance(value, datetime):
            text = '"' + format_timestamp(value) + '"'
        else:  # a one-level map (validation allows nothing else)
            text = _metadata_text(value)  # type: ignore[arg-type]
        parts.append(_quote(key) + ":" + text)
    return "{" + ",".join(parts) + "}"


def _metadata_from_json(metadata: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, str) and _STAMP.fullmatch(value):
            out[key] = _parse_timestamp(key, value)
        elif isinstance(value, Mapping):
            out[key] = _metadata_from_json(value)
        else:
            out[key] = value
    return out


class _Clock:
    """Base of :class:`AuditEvent`: the clock reading of an event built by ``@audit``.

    ``_build_event`` stores ``time.time_ns()`` here and leaves ``occurred_at``
    unset; the first read makes the datetime (``AuditEvent.__getattr__``).
    Making a datetime touches code and data a busy server has evicted from
    the CPU caches (~250 cache misses, the largest single cost of an event),
    and many events are never read on the caller's thread, or at all.
    """

    __slots__ = ("_ns",)
    _ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent(_Clock):
    """One audit-log entry: who did what, to which object, from where, when.

    Every field is checked when the event is built; a bad one raises
    :class:`~audit_instrument.AuditValidationError` naming it. ``metadata`` is
    stored as a read-only copy. ``idempotency_key`` (a UUID4 unless given)
    identifies this event on every delivery attempt, for ever.

    >>> from datetime import datetime, timezone
    >>> event = AuditEvent(group="organization_1", action="user.login", action_type="C",
    ...                    actor_name="user@email.com", actor_id="user_1",
    ...                    target_name="user@email.com", target_id="user_1",
    ...                    occurred_at=datetime(1970, 1, 1, tzinfo=timezone.utc))
    >>> event.to_dict()["occurred_at"]
    '1970-01-01T00:00:00.000000Z'
    """

    group: str
    action: str
    action_type: ActionType
    actor_name: str
    actor_id: str
    target_name: str
    target_id: str
    location: str = ""
    occurred_at: datetime = None  # type: ignore[assignment]  # now, when not given
    metadata: Mapping[str, MetadataValue] = None  # type: ignore[assignment]  # {} when not given
    user_agent: str = ""
    idempotency_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        setter = object.__setattr__
        validate_action(self.action)
        setter(self, "action_type", validate_action_type(self.action_type))
        for name in _REQUIRED_STRINGS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise AuditValidationError(name, "required: a non-empty string", value)
        for name in ("location", "user_agent", "idempotency_key"):
            if not isinstance(getattr(self, name), str):
                raise AuditValidationError(name, "must be a string", getattr(self, name))
        occurred_at = self.occurred_at
        if occurred_at is None:
            setter(self, "occurred_at", datetime.now(_UTC))
        elif type(occurred_at) is not datetime or occurred_at.tzinfo is not _UTC:
            setter(self, "occurred_at", _parse_timestamp("occurred_at", occurred_at))
        metadata = self.metadata
        setter(self, "metadata", _freeze(validate_metadata({} if metadata is None else metadata)))
        if not self.idempotency_key:
            setter(self, "idempotency_key", new_idempotency_key())

    def __hash__(self) -> int:
        return hash(self.idempotency_key)

    def __getattr__(self, name: str) -> Any:
        # Reached only for an unset slot: ``occurred_at`` of an event built by
        # ``@audit`` before its first read (see ``_Clock``).
        ns = getattr(self, "_ns", None) if name == "occurred_at" else None
        if ns is not None:
            value = _EPOCH + timedelta(microseconds=ns // 1000)  # floor, as now() does
            object.__setattr__(self, "occurred_at", value)
            return value
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def to_dict(self) -> dict[str, Any]:
        """The seed's JSON object for ``POST /events``: its ten keys, in order."""
        return {
            "group": self.group,
            "action": self.action,
            "action_type": self.action_type.value,
            "actor_name": self.actor_name,
            "actor_id": self.actor_id,
            "target_name": self.target_name,
            "target_id": self.target_id,
            "location": self.location,
            "occurred_at": format_timestamp(self.occurred_at),
            "metadata": _metadata_json(self.metadata),
        }

    def to_record(self) -> dict[str, Any]:
        """:meth:`to_dict` plus ``user_agent`` and ``idempotency_key``: the whole event.

        This is what files and stores keep, so that ``AuditEvent.from_dict(
        event.to_record()) == event`` and a replay keeps the idempotency key.
        """
        record = self.to_dict()
        record["user_agent"] = self.user_agent
        record["idempotency_key"] = self.idempotency_key
        return record

    def to_json(self) -> str:
        """:meth:`to_record` as compact JSON: what files and the outbox store.

        The same text as ``json.dumps(event.to_record(), ensure_ascii=False,
        separators=(",", ":"))``, built about 2.5 times faster (an outbox
        writes one per event).

        >>> AuditEvent.from_dict(json.loads(event.to_json())) == event  # doctest: +SKIP
        True
        """
        q = _quote
        return (
            f'{{"group":{q(self.group)},"action":{q(self.action)},'
            f'"action_type":"{self.action_type.value}",'
            f'"actor_name":{q(self.actor_name)},"actor_id":{q(self.actor_id)},'
            f'"target_name":{q(self.target_name)},"target_id":{q(self.target_id)},'
            f'"location":{q(self.location)},"occurred_at":"{format_timestamp(self.occurred_at)}",'
            f'"metadata":{_metadata_text(self.metadata)},"user_agent":{q(self.user_agent)},'
            f'"idempotency_key":{q(self.idempotency_key)}}}'
        )

    def to_audit_logs_dict(
        self,
        *,
        actor_type: str = "user",
        target_type: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """The JSON body for the current ``POST /audit_logs/events`` API.

        ``group`` becomes ``organization_id``; actor and target become objects
        (the target's type defaults to the action's category: ``tweet.update``
        → ``tweet``); ``occurred_at`` has milliseconds.
        """
        context: dict[str, str] = {"location": self.location}
        if self.user_agent:
            context["user_agent"] = self.user_agent
        event: dict[str, Any] = {
            "action": self.action,
            "occurred_at": format_timestamp(self.occurred_at, milliseconds=True),
            "actor": {"id": self.actor_id, "type": actor_type, "name": self.actor_name},
            "targets": [
                {
                    "id": self.target_id,
                    "type": target_type or self.action.split(".", 1)[0],
                    "name": self.target_name,
                }
            ],
            "context": context,
            "metadata": _metadata_json(self.metadata),
        }
        if version is not None:
            event["version"] = version
        return {"organization_id": self.group, "event": event}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """Build an event from :meth:`to_dict` or :meth:`to_record` output.

        Unknown keys are refused. Metadata strings in the exact timestamp form
        (``2019-05-01T01:15:55.619355Z``) come back as datetimes.
        """
        if not isinstance(data, Mapping):
            raise AuditValidationError("event", "must be a mapping", data)
        unknown = set(data) - set(_SEED_KEYS) - set(_EXTRA_KEYS)
        if unknown:
            raise AuditValidationError(
                "event",
                f"unknown keys {sorted(map(str, unknown))}; "
                f"allowed: {', '.join(_SEED_KEYS + _EXTRA_KEYS)}",
            )
        missing = [k for k in _SEED_KEYS[:7] if k not in data]
        if missing:
            raise AuditValidationError(missing[0], "required key is missing")
        kwargs = dict(data)
        metadata = kwargs.get("metadata")
        if isinstance(metadata, Mapping):
            kwargs["metadata"] = _metadata_from_json(metadata)
        return cls(**kwargs)


class _Draft(_Clock):
    """A mutable twin of :class:`AuditEvent` (same slots) used by ``_build_event``."""

    __slots__ = AuditEvent.__slots__
    group: str
    action: str
    action_type: ActionType
    actor_name: str
    actor_id: str
    target_name: str
    target_id: str
    location: str
    occurred_at: datetime
    metadata: Mapping[str, MetadataValue]
    user_agent: str
    idempotency_key: str


def _build_event(
    group: str,
    action: str,
    action_type: ActionType,
    actor_name: str,
    actor_id: str,
    target_name: str,
    target_id: str,
    location: str,
    occurred_at: datetime | None,
    metadata: dict[str, Any] | None,
    user_agent: str,
) -> AuditEvent:
    """Build an event from parts ``@audit`` already checked.

    The action and action type were validated at decoration time, actor and
    target by :func:`~audit_instrument.context.resolve_party`; group,
    location, time and metadata are still validated here. About a third of
    the cost of the public constructor: this is the ``@audit`` hot path.
    """
    if type(group) is not str or not group:
        raise AuditValidationError("group", "required: a non-empty string", group)
    if type(location) is not str:
        raise AuditValidationError("location", "must be a string", location)
    draft = _Draft()
    if occurred_at is None:
        draft._ns = _time_ns()  # occurred_at is made from it when first read
    elif type(occurred_at) is datetime and occurred_at.tzinfo is _UTC:
        draft.occurred_at = occurred_at
    else:
        draft.occurred_at = _parse_timestamp("occurred_at", occurred_at)
    draft.group = group
    draft.action = action
    draft.action_type = action_type
    draft.actor_name = actor_name
    draft.actor_id = actor_id
    draft.target_name = target_name
    draft.target_id = target_id
    draft.location = location
    draft.metadata = _freeze(validate_metadata(metadata)) if metadata else _NO_METADATA
    draft.user_agent = user_agent
    draft.idempotency_key = _key_pool.pop() if _key_pool else _refill_keys()
    # Same slots, same layout: the finished draft becomes the frozen event,
    # ~4x cheaper than the twelve object.__setattr__ calls of __init__.
    draft.__class__ = AuditEvent  # type: ignore[assignment]
    return draft  # type: ignore[return-value]
