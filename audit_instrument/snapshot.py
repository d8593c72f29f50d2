"""Before/after snapshots of an object and the diff that becomes metadata.

``capture(obj, fields)`` reads the chosen fields (attributes, mapping keys or
dataclass fields) into metadata primitives at once, so a later change to the
same object doesn't rewrite history. ``diff(before, after)`` turns two
captures into ``<field>_was`` / ``<field>`` pairs for the fields that changed.

A field whose value is ``None`` (or a snapshot that is ``None``: the object
does not exist yet, or any more) is left out, so a create event only has
``<field>`` keys and a delete event only ``<field>_was`` keys.
"""

from __future__ import annotations

import dataclasses
import enum
import uuid
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from .errors import AuditValidationError
from .event import MAX_KEY_LENGTH, MetadataValue
from .rules import MASKED, is_masked

__all__ = ["Snapshot", "capture", "check_fields", "diff", "to_metadata_value"]

Snapshot = dict[str, MetadataValue | None]
_WAS = "_was"


def check_fields(fields: Sequence[str] | None) -> tuple[str, ...] | None:
    """Validate a ``fields=`` declaration (at decoration time)."""
    if fields is None:
        return None
    if isinstance(fields, str):
        raise AuditValidationError("fields", "must be a list of names, not one string", fields)
    names = tuple(fields)
    for name in names:
        if not isinstance(name, str) or not name:
            raise AuditValidationError("fields", "names must be non-empty strings", name)
        if len(name) + len(_WAS) > MAX_KEY_LENGTH:
            raise AuditValidationError(
                "fields",
                f"names are at most {MAX_KEY_LENGTH - len(_WAS)} characters, so that "
                f"'<name>_was' fits the {MAX_KEY_LENGTH}-character key limit",
                name,
            )
    return names


def to_metadata_value(field: str, value: object, *, nested: bool = False) -> MetadataValue | None:
    """Convert ``value`` to a metadata primitive, or raise naming ``field``.

    str, bool, int, float and datetime stay as they are; enums become their
    value, UUIDs and Decimals strings, dates ISO strings, mappings one-level
    maps. ``None`` stays ``None`` (meaning: left out).
    """
    if value is None or isinstance(value, (str, bool, int, float, datetime)):
        return value
    if isinstance(value, enum.Enum):
        return to_metadata_value(field, value.value, nested=nested)
    if isinstance(value, (uuid.UUID, Decimal)):
        return str(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Mapping) and not nested:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise AuditValidationError(field, "keys must be strings", key)
            converted = to_metadata_value(f"{field}.{key}", item, nested=True)
            if converted is not None:
                out[str(key)] = converted
        return out
    if is_masked(field.rsplit(".", 1)[-1]):
        return MASKED  # masked anyway: never look at (or report) the value
    raise AuditValidationError(
        field,
        "must convert to str, bool, int, float, datetime or a map of those",
        value,
    )


def _all_fields(obj: object) -> list[str]:
    if isinstance(obj, Mapping):
        return [str(key) for key in obj]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [f.name for f in dataclasses.fields(obj) if not f.name.startswith("_")]
    try:
        names = vars(obj)
    except TypeError:
        raise AuditValidationError(
            "snapshot", "give fields=[...] for objects without __dict__", obj
        ) from None
    return [name for name in names if not name.startswith("_")]


def capture(obj: object, fields: Sequence[str] | None) -> Snapshot:
    """Read ``fields`` of ``obj`` now; ``{}`` when ``obj`` is ``None``."""
    if obj is None:
        return {}
    names = _all_fields(obj) if fields is None else fields
    out: Snapshot = {}
    is_mapping = isinstance(obj, Mapping)
    for name in names:
        try:
            value = obj[name] if is_mapping else getattr(obj, name)  # type: ignore[index]
        except (KeyError, AttributeError):
            raise AuditValidationError(
                f"fields.{name}", f"not found on the snapshot ({type(obj).__name__})"
            ) from None
        out[name] = to_metadata_value(name, value)
    return out


def diff(
    before: Snapshot, after: Snapshot, *, include_unchanged: bool = False
) -> dict[str, MetadataValue]:
    """``<field>_was`` / ``<field>`` metadata for each field that changed."""
    out: dict[str, MetadataValue] = {}
    for name in dict.fromkeys([*before, *after]):
        old = before.get(name)
        new = after.get(name)
        if old == new and type(old) is type(new) and not include_unchanged:
            continue
        if old is not None:
            out[name + _WAS] = old
        if new is not None:
            out[name] = new
    return out
