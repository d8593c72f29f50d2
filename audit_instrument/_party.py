"""Users and objects as ``(id, name)``: the shapes an actor or a target may take."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .errors import AuditValidationError

__all__ = ["Party", "resolve_party"]

Party = tuple[str, str]
"""An actor or target as ``(id, name)``."""

_NAME_KEYS = ("email", "name", "username")
_SHAPES = (
    "an object with an 'id' attribute (and 'email', 'name' or 'username'), a mapping with an "
    "'id' key, an (id, name) tuple, or None for nobody"
)


def _party_from(ident: object, name: object, what: str) -> Party | None:
    if ident is None or ident == "":
        return None
    ident = ident if type(ident) is str else _text_of(ident, f"{what}.id")
    if not name:
        return ident, ident
    return ident, name if type(name) is str else _text_of(name, f"{what}.name")


def _text_of(value: object, field: str) -> str:
    """``str(value)`` for ids and names given as ints, UUIDs and the like; never a container."""
    rule = "must be a string, or a value such as an int or UUID that prints as one"
    if isinstance(value, (Mapping, list, tuple, set, bytes, bytearray)):
        raise AuditValidationError(field, rule)
    try:
        return str(value)
    except Exception:  # an int too long to print, a __str__ that raises
        raise AuditValidationError(field, rule) from None


def resolve_party(value: object, what: str = "actor") -> Party | None:
    """Turn a user-ish value into ``(id, name)``; ``None`` for nobody (an anonymous user).

    Understood: an ``(id, name)`` tuple; a mapping with an ``"id"`` key; an
    object with an ``id`` attribute; and ``None``. The name is the first of
    ``email``, ``name``, ``username`` that is set, else the id. Ids that are
    not strings are converted with ``str()``; an id of ``None`` means nobody.
    Anything else raises :class:`~audit_instrument.AuditValidationError`
    naming the shapes that are understood.

    >>> resolve_party({"id": 7, "email": "ada@example.com"})
    ('7', 'ada@example.com')
    """
    if value is None:
        return None
    if isinstance(value, tuple):
        if len(value) != 2:
            raise AuditValidationError(what, "a tuple must be (id, name)", value)
        return _party_from(*value, what)
    if type(value) is dict or isinstance(value, Mapping):
        if "id" not in value:
            raise AuditValidationError(what, f"must be {_SHAPES}; the mapping has no 'id'", value)
        return _party_from(value["id"], _first_name(value.get), what)
    if isinstance(value, (str, int, float)) or not hasattr(value, "id"):
        raise AuditValidationError(what, f"must be {_SHAPES}", value)
    return _party_from(value.id, _first_name(lambda key: getattr(value, key, None)), what)


def _first_name(get: Callable[[str], object]) -> object:
    """The first of ``email``, ``name``, ``username`` that is set (else ``None``)."""
    for key in _NAME_KEYS:
        name = get(key)
        if name:
            return name
    return None


