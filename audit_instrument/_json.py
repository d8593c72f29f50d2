"""Every JSON form of an audit event, in one place.

- :func:`record_dict` / :func:`record_json`: the whole event (the legacy
  ``POST /events`` keys, then ``user_agent``, ``idempotency_key`` and the
  current-format fields the event uses), compact. Files, logs and the outbox
  keep this; :meth:`AuditEvent.from_dict` reads it back.
- :func:`canonical_json`: the record with sorted keys, what the local store
  hashes. Its text must never change for an event that could be built before
  (stores written then must still verify).
- :func:`legacy_dict` (``POST /events``), :func:`audit_logs_dict`
  (``POST /audit_logs/events``) and :func:`request_body`: what goes to WorkOS.

Datetimes are written ``2019-05-01T01:15:55.619355Z`` (UTC, microseconds, ``Z``;
milliseconds in the current WorkOS format).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from json.encoder import encode_basestring as _quote  # C-accelerated; ensure_ascii=False's
from typing import TYPE_CHECKING, Any

from .rules import as_utc, check_legacy

if TYPE_CHECKING:
    from .event import AuditEvent, Target
    from .rules import MetadataValue

__all__ = [
    "audit_logs_dict",
    "canonical_json",
    "compact",
    "format_timestamp",
    "legacy_dict",
    "metadata_from_json",
    "metadata_json",
    "record_dict",
    "record_json",
    "request_body",
]

_STAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


def format_timestamp(value: datetime, *, milliseconds: bool = False) -> str:
    """``2019-05-01T01:15:55.619355Z``: UTC, ISO 8601, microseconds (or ms), ``Z``."""
    text = as_utc(value).isoformat(timespec="microseconds")  # ends with "+00:00"
    return text[:-9 if milliseconds else -6] + "Z"


def compact(value: object) -> str:
    """``value`` as compact JSON text, non-ASCII kept as is."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def metadata_json(metadata: Mapping[str, MetadataValue]) -> dict[str, Any]:
    """``metadata`` with datetimes written as timestamps: ready for ``json.dumps``."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, datetime):
            out[key] = format_timestamp(value)
        elif isinstance(value, Mapping):
            out[key] = metadata_json(value)
        else:
            out[key] = value
    return out


def _value_from_json(value: object) -> object:
    if isinstance(value, str) and _STAMP.fullmatch(value):
        try:
            return datetime.fromisoformat(value)
        except ValueError:  # the shape of a timestamp, not a real one: a string
            return value
    return value


def metadata_from_json(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Undo :func:`metadata_json`: exact timestamps become datetimes again.

    Goes one map deep, as deep as metadata may be; deeper maps are left for
    validation to refuse (so a hostile, deeply nested map cannot recurse).
    """
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, Mapping):
            out[key] = {k: _value_from_json(v) for k, v in value.items()}
        else:
            out[key] = _value_from_json(value)
    return out


def _metadata_text(metadata: Mapping[str, MetadataValue]) -> str:
    """``compact(metadata_json(metadata))``, written directly (see :func:`record_json`)."""
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


# -- the record: what files, logs, the outbox and the store keep ------------------------------


def _has_more_than_legacy_target(event: AuditEvent) -> bool:
    targets = event.targets
    return len(targets) > 1 or targets[0].type is not None or bool(targets[0].metadata)


def _target_record(target: Target) -> dict[str, Any]:
    out: dict[str, Any] = {"id": target.id, "name": target.name}
    if target.type is not None:
        out["type"] = target.type
    if target.metadata:
        out["metadata"] = metadata_json(target.metadata)
    return out


def _current_format_fields(event: AuditEvent) -> dict[str, Any]:
    """The record's keys for what only the current format carries, those the event uses.

    An event that uses none of them has exactly the record (and canonical
    JSON) it had before these fields existed.
    """
    extra: dict[str, Any] = {}
    if _has_more_than_legacy_target(event):
        extra["targets"] = [_target_record(target) for target in event.targets]
    if event.actor_type is not None:
        extra["actor_type"] = event.actor_type
    if event.actor_metadata:
        extra["actor_metadata"] = metadata_json(event.actor_metadata)
    if event.version is not None:
        extra["version"] = event.version
    return extra


def _legacy_fields(event: AuditEvent) -> dict[str, Any]:
    return {
        "group": event.group,
        "action": event.action,
        "action_type": event.action_type.value,
        "actor_name": event.actor_name,
        "actor_id": event.actor_id,
        "target_name": event.target_name,
        "target_id": event.target_id,
        "location": event.location,
        "occurred_at": format_timestamp(event.occurred_at),
        "metadata": metadata_json(event.metadata),
    }


def record_dict(event: AuditEvent) -> dict[str, Any]:
    """The whole event as a JSON-ready dict; ``AuditEvent.from_dict`` reads it back."""
    record = _legacy_fields(event)
    record["user_agent"] = event.user_agent
    record["idempotency_key"] = event.idempotency_key
    record.update(_current_format_fields(event))
    return record


def record_json(event: AuditEvent) -> str:
    """``compact(record_dict(event))``, written directly: the outbox writes one per event."""
    q = _quote
    text = (
        f'{{"group":{q(event.group)},"action":{q(event.action)},'
        f'"action_type":"{event.action_type.value}",'
        f'"actor_name":{q(event.actor_name)},"actor_id":{q(event.actor_id)},'
        f'"target_name":{q(event.target_name)},"target_id":{q(event.target_id)},'
        f'"location":{q(event.location)},"occurred_at":"{format_timestamp(event.occurred_at)}",'
        f'"metadata":{_metadata_text(event.metadata)},"user_agent":{q(event.user_agent)},'
        f'"idempotency_key":{q(event.idempotency_key)}'
    )
    extra = _current_format_fields(event)
    if extra:
        return text + "," + compact(extra)[1:]
    return text + "}"


def canonical_json(event: AuditEvent) -> str:
    """The text the local store keeps and hashes: the record, sorted keys, no spaces."""
    return json.dumps(record_dict(event), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


# -- the WorkOS request bodies ------------------------------------------------------------------


def legacy_dict(event: AuditEvent) -> dict[str, Any]:
    """The legacy ``POST /events`` object: its ten keys, in order.

    Raises :class:`~audit_instrument.AuditValidationError` for an event that
    format cannot carry whole (several targets, a target type or metadata,
    actor type or metadata, a version).
    """
    check_legacy(event)
    return _legacy_fields(event)


def audit_logs_dict(
    event: AuditEvent,
    *,
    actor_type: str = "user",
    target_type: str | None = None,
    version: int | None = None,
) -> dict[str, Any]:
    """The ``POST /audit_logs/events`` body: ``{"organization_id": group, "event": {...}}``.

    ``actor_type``, ``target_type`` (else the action's category: ``tweet.update``
    → ``tweet``) and ``version`` apply where the event sets none of its own.
    """
    context: dict[str, str] = {"location": event.location}
    if event.user_agent:
        context["user_agent"] = event.user_agent
    actor: dict[str, Any] = {
        "id": event.actor_id,
        "type": event.actor_type or actor_type,
        "name": event.actor_name,
    }
    if event.actor_metadata:
        actor["metadata"] = metadata_json(event.actor_metadata)
    default_type = target_type or event.action.split(".", 1)[0]
    targets = []
    for target in event.targets:
        entry: dict[str, Any] = {
            "id": target.id,
            "type": target.type or default_type,
            "name": target.name,
        }
        if target.metadata:
            entry["metadata"] = metadata_json(target.metadata)
        targets.append(entry)
    body: dict[str, Any] = {
        "action": event.action,
        "occurred_at": format_timestamp(event.occurred_at, milliseconds=True),
        "actor": actor,
        "targets": targets,
        "context": context,
        "metadata": metadata_json(event.metadata),
    }
    version = event.version if event.version is not None else version
    if version is not None:
        body["version"] = version
    return {"organization_id": event.group, "event": body}


def request_body(body: Mapping[str, Any]) -> bytes:
    """A request body (:func:`legacy_dict` or :func:`audit_logs_dict`) as UTF-8 JSON."""
    return compact(body).encode("utf-8")
