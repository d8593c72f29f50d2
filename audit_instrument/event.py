"""The audit event: who did what, to which objects, from where, when.

An :class:`AuditEvent` is frozen and validated when it is built (the rules
are in :mod:`audit_instrument.rules`), so any event that exists is one that
can be encoded and sent; masked metadata is already masked. Its JSON forms
are in :mod:`audit_instrument._json`: :meth:`AuditEvent.to_dict` gives the
legacy ``POST /events`` object, :meth:`AuditEvent.to_audit_logs_dict` the
current ``POST /audit_logs/events`` one, :meth:`AuditEvent.to_record` the
whole event as files and stores keep it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from . import _json
from ._idempotency import new_idempotency_key
from ._json import format_timestamp
from .errors import AuditValidationError, _shown
from .rules import (
    MAX_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_STRING_LENGTH,
    ActionType,
    MetadataValue,
    Primitive,
    check_idempotency_key,
    check_text,
    check_version,
    encodable,
    parse_timestamp,
    validate_action,
    validate_action_type,
    validate_metadata,
)

__all__ = [
    "MAX_KEY_LENGTH",
    "MAX_METADATA_KEYS",
    "MAX_STRING_LENGTH",
    "ActionType",
    "AuditEvent",
    "MetadataValue",
    "Primitive",
    "Target",
    "format_timestamp",
    "new_idempotency_key",
    "validate_action",
    "validate_action_type",
    "validate_metadata",
]

_LEGACY_KEYS = (
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
_RECORD_KEYS = (*_LEGACY_KEYS, "user_agent", "idempotency_key",
                "targets", "actor_type", "actor_metadata", "version")
_TARGET_KEYS = ("id", "name", "type", "metadata")
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


def _frozen_metadata(metadata: object, where: str) -> Mapping[str, MetadataValue]:
    """Validated, masked, read-only metadata; ``None`` or empty is the shared empty map."""
    if metadata is None or (type(metadata) is dict and not metadata):
        return _NO_METADATA
    checked = validate_metadata(metadata, where)
    return MappingProxyType(checked) if checked else _NO_METADATA


@dataclass(frozen=True, slots=True)
class Target:
    """One object an event acted on: ``id``, ``name``, optional ``type`` and ``metadata``.

    ``type`` left ``None`` becomes, in the current WorkOS format, the sender's
    ``target_type`` or else the action's category (``tweet.update`` → ``tweet``).
    ``metadata`` obeys the same rules (and mask) as the event's.

    >>> Target("tweet_5", "What time is it?", type="tweet")
    Target(id='tweet_5', name='What time is it?', type='tweet', metadata={})
    """

    id: str
    name: str
    type: str | None = None
    metadata: Mapping[str, MetadataValue] = None  # type: ignore[assignment]  # {} when not given

    def __post_init__(self) -> None:
        check_text("target.id", self.id, required=True)
        check_text("target.name", self.name, required=True)
        if self.type is not None:
            check_text("target.type", self.type, required=True)
        object.__setattr__(self, "metadata", _frozen_metadata(self.metadata, "target.metadata"))

    def __repr__(self) -> str:
        return (f"Target(id={self.id!r}, name={self.name!r}, type={self.type!r}, "
                f"metadata={dict(self.metadata)!r})")

    def __hash__(self) -> int:
        return hash((self.id, self.name, self.type))


def _target_from(index: int, value: object) -> Target:
    """A :class:`Target` from a Target, an ``(id, name)`` tuple or a mapping."""
    if isinstance(value, Target):
        return value
    where = f"targets[{index}]"
    if isinstance(value, tuple) and len(value) == 2:
        parts: dict[str, Any] = {"id": value[0], "name": value[1]}
    elif isinstance(value, Mapping):
        unknown = [key for key in value if key not in _TARGET_KEYS]
        if unknown:
            raise AuditValidationError(where, f"unknown keys; allowed: {', '.join(_TARGET_KEYS)}",
                                       unknown)
        parts = dict(value)
        if isinstance(parts.get("metadata"), Mapping):
            parts["metadata"] = _json.metadata_from_json(parts["metadata"])
    else:
        raise AuditValidationError(
            where, "must be a Target, an (id, name) tuple or a mapping with id and name", value
        )
    for key in ("id", "name"):
        check_text(f"{where}.{key}", parts.get(key), required=True)
    try:
        return Target(**parts)
    except AuditValidationError as exc:  # name the target by its place in the list
        raise AuditValidationError(where + exc.field.removeprefix("target"), exc.rule) from None


def _plain_target(target_id: str, target_name: str) -> Target:
    """``Target(target_id, target_name)`` for an id and name already checked."""
    target = _TargetTwin()
    target.id = target_id
    target.name = target_name
    target.type = None
    target.metadata = _NO_METADATA
    target.__class__ = Target
    return target  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEvent:
    """One audit-log entry: who did what, to which objects, from where, when.

    Every field is checked when the event is built; a bad one raises
    :class:`~audit_instrument.AuditValidationError` naming it. Metadata is
    masked (:func:`~audit_instrument.configure`'s ``mask``) and stored as a
    read-only copy. ``idempotency_key`` (a UUID4 unless given) identifies
    this event on every delivery attempt, for ever.

    The target is ``target_id``/``target_name``, or ``targets``: a list of
    :class:`Target` (or ``(id, name)`` tuples, or mappings), of which the
    first is also ``target_id``/``target_name``. Either way ``targets`` holds
    them all. ``actor_type``, ``actor_metadata``, ``version`` and targets
    beyond the first (or with a type or metadata) exist only in the current
    WorkOS format; ``None`` leaves them to the sender's defaults.

    >>> from datetime import datetime, timezone
    >>> event = AuditEvent(group="organization_1", action="user.login", action_type="C",
    ...                    actor_name="user@email.com", actor_id="user_1",
    ...                    target_name="user@email.com", target_id="user_1",
    ...                    occurred_at=datetime(1970, 1, 1, tzinfo=timezone.utc))
    >>> event.to_dict()["occurred_at"]
    '1970-01-01T00:00:00.000000Z'
    >>> event.targets
    (Target(id='user_1', name='user@email.com', type=None, metadata={}),)
    """

    group: str
    action: str
    action_type: ActionType
    actor_name: str
    actor_id: str
    target_name: str = None  # type: ignore[assignment]  # from targets[0] when not given
    target_id: str = None  # type: ignore[assignment]  # from targets[0] when not given
    location: str = ""
    occurred_at: datetime = None  # type: ignore[assignment]  # now, when not given
    metadata: Mapping[str, MetadataValue] = None  # type: ignore[assignment]  # {} when not given
    user_agent: str = ""
    targets: tuple[Target, ...] = ()
    actor_type: str | None = None
    actor_metadata: Mapping[str, MetadataValue] = None  # type: ignore[assignment]
    version: int | None = None
    idempotency_key: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        setter = object.__setattr__
        validate_action(self.action)
        setter(self, "action_type", validate_action_type(self.action_type))
        for name in ("group", "actor_name", "actor_id"):
            check_text(name, getattr(self, name), required=True)
        targets = self._checked_targets()
        setter(self, "targets", targets)
        setter(self, "target_id", targets[0].id)
        setter(self, "target_name", targets[0].name)
        check_text("location", self.location, required=False)
        check_text("user_agent", self.user_agent, required=False)
        occurred_at = self.occurred_at
        if occurred_at is None:
            setter(self, "occurred_at", datetime.now(UTC))
        elif type(occurred_at) is not datetime or occurred_at.tzinfo is not UTC:
            setter(self, "occurred_at", parse_timestamp("occurred_at", occurred_at))
        setter(self, "metadata", _frozen_metadata(self.metadata, "metadata"))
        if self.actor_type is not None:
            check_text("actor_type", self.actor_type, required=True)
        setter(self, "actor_metadata", _frozen_metadata(self.actor_metadata, "actor_metadata"))
        check_version(self.version)
        if self.idempotency_key == "":
            setter(self, "idempotency_key", new_idempotency_key())
        else:
            check_idempotency_key(self.idempotency_key)

    def _checked_targets(self) -> tuple[Target, ...]:
        given: object = self.targets
        target_id, target_name = self.target_id, self.target_name
        if not given:
            check_text("target_id", target_id, required=True)
            check_text("target_name", target_name, required=True)
            return (_plain_target(target_id, target_name),)
        if isinstance(given, (str, bytes, Mapping, Target)) or not isinstance(given, Sequence):
            raise AuditValidationError(
                "targets", "must be a list of Target (or (id, name) tuples, or mappings)", given
            )
        targets = tuple(_target_from(index, value) for index, value in enumerate(given))
        first = targets[0]
        for name, value, expected in (("target_id", target_id, first.id),
                                      ("target_name", target_name, first.name)):
            if value is not None and value != expected:
                raise AuditValidationError(
                    name,
                    f"disagrees with targets[0].{name[7:]}: give the first target once, "
                    f"in targets= or in target_id/target_name",
                )
        return targets

    def __hash__(self) -> int:
        return hash(self.idempotency_key)

    def to_dict(self) -> dict[str, Any]:
        """The legacy ``POST /events`` JSON object: its ten keys, in order.

        An event that format cannot carry whole (several targets, a target
        type or metadata, actor type or metadata, a version) raises
        :class:`~audit_instrument.AuditValidationError` instead of being cut.
        """
        return _json.legacy_dict(self)

    def to_record(self) -> dict[str, Any]:
        """The whole event: :meth:`to_dict`'s keys, ``user_agent``, ``idempotency_key``,
        then whichever current-format fields the event uses.

        This is what files and stores keep, so that ``AuditEvent.from_dict(
        event.to_record()) == event`` and a replay keeps the idempotency key.
        """
        return _json.record_dict(self)

    def to_json(self) -> str:
        """:meth:`to_record` as compact JSON: what files and the outbox store.

        The same text as ``json.dumps(event.to_record(), ensure_ascii=False,
        separators=(",", ":"))``.
        """
        return _json.record_json(self)

    def to_audit_logs_dict(
        self,
        *,
        actor_type: str = "user",
        target_type: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """The JSON body for the current ``POST /audit_logs/events`` API.

        ``group`` becomes ``organization_id``; actor and targets become
        objects; ``location`` and ``user_agent`` go under ``context``;
        ``occurred_at`` has milliseconds. ``actor_type``, ``target_type``
        (else the action's category: ``tweet.update`` → ``tweet``) and
        ``version`` apply where the event sets none of its own.
        """
        return _json.audit_logs_dict(
            self, actor_type=actor_type, target_type=target_type, version=version
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditEvent:
        """Build an event from :meth:`to_dict` or :meth:`to_record` output.

        Unknown keys are refused. Metadata strings in the exact timestamp form
        (``2019-05-01T01:15:55.619355Z``) come back as datetimes. Like every
        way of building an event, it validates and masks.
        """
        if not isinstance(data, Mapping):
            raise AuditValidationError("event", "must be a mapping", data)
        unknown = [key for key in data if key not in _RECORD_KEYS]
        if unknown:
            names = sorted(key if isinstance(key, str) else _shown(key) for key in unknown)
            raise AuditValidationError(
                "event", f"unknown keys {names[:10]}; allowed: {', '.join(_RECORD_KEYS)}"
            )
        required = _LEGACY_KEYS[:5] if data.get("targets") else _LEGACY_KEYS[:7]
        missing = [key for key in required if key not in data]
        if missing:
            raise AuditValidationError(missing[0], "required key is missing")
        kwargs = dict(data)
        for key in ("metadata", "actor_metadata"):
            if isinstance(kwargs.get(key), Mapping):
                kwargs[key] = _json.metadata_from_json(kwargs[key])
        return cls(**kwargs)


def _mutable_twin(frozen: type) -> Any:
    """A plain class with the same slots as the frozen dataclass ``frozen``.

    ``_build_event`` fills a twin with plain attribute stores and then sets its
    ``__class__`` to ``frozen`` (same slots, same layout, so Python allows it):
    the result is an ordinary frozen instance. A frozen dataclass's fields can
    only be set with ``object.__setattr__``, which for the 16 fields of an event
    and the 4 of its target costs about 1.8 µs more per event here: an ``@audit``
    call with a memory receiver in ``benchmarks/bench_core.py`` costs half as
    much again without the twin, far past that benchmark's guardrail.
    tests/test_event.py checks that the slots match.
    """
    slots: tuple[str, ...] = frozen.__slots__  # type: ignore[attr-defined]
    return type(f"_{frozen.__name__}Twin", (), {"__slots__": slots})


_EventTwin = _mutable_twin(AuditEvent)
_TargetTwin = _mutable_twin(Target)


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
    *,
    targets: Sequence[object] | None = None,
    actor_type: str | None = None,
    actor_metadata: Mapping[str, Any] | None = None,
    version: int | None = None,
) -> AuditEvent:
    """Build an event from parts ``@audit`` already checked: the ``@audit`` hot path.

    The action and action type were validated at decoration time, actor and
    target by :func:`~audit_instrument.context.resolve_party` (here only
    checked to be encodable); group, location, user agent, time and metadata
    are validated, and metadata masked, as by the constructor. With any of
    the keyword-only fields the public constructor is used instead.
    """
    if targets is not None or actor_type is not None or actor_metadata or version is not None:
        fields: dict[str, Any] = {
            "group": group, "action": action, "action_type": action_type,
            "actor_name": actor_name, "actor_id": actor_id, "target_name": target_name,
            "target_id": target_id, "location": location, "occurred_at": occurred_at,
            "metadata": metadata, "user_agent": user_agent, "targets": tuple(targets or ()),
            "actor_type": actor_type, "actor_metadata": actor_metadata, "version": version,
        }
        return AuditEvent(**fields)
    if type(group) is not str or not group or not (group.isascii() or encodable(group)):
        check_text("group", group, required=True)
    if type(location) is not str or not (location.isascii() or encodable(location)):
        check_text("location", location, required=False)
    try:
        plain = (actor_name.isascii() and actor_id.isascii() and target_name.isascii()
                 and target_id.isascii() and user_agent.isascii())
    except AttributeError:  # not a string: the checks below say which
        plain = False
    if not plain:
        check_text("actor_name", actor_name, required=True)
        check_text("actor_id", actor_id, required=True)
        check_text("target_name", target_name, required=True)
        check_text("target_id", target_id, required=True)
        check_text("user_agent", user_agent, required=False)
    if occurred_at is None:
        occurred_at = datetime.now(UTC)
    elif type(occurred_at) is not datetime or occurred_at.tzinfo is not UTC:
        occurred_at = parse_timestamp("occurred_at", occurred_at)
    event = _EventTwin()
    event.group = group
    event.action = action
    event.action_type = action_type
    event.actor_name = actor_name
    event.actor_id = actor_id
    event.target_name = target_name
    event.target_id = target_id
    event.location = location
    event.occurred_at = occurred_at
    event.metadata = _frozen_metadata(metadata, "metadata") if metadata else _NO_METADATA
    event.user_agent = user_agent
    event.targets = (_plain_target(target_id, target_name),)
    event.actor_type = None
    event.actor_metadata = _NO_METADATA
    event.version = None
    event.idempotency_key = new_idempotency_key()
    event.__class__ = AuditEvent
    return event  # type: ignore[no-any-return]
