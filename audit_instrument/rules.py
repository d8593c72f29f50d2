"""The rules an audit event obeys, and the mask that hides secrets in its metadata.

Every check raises :class:`~audit_instrument.AuditValidationError` naming the
field and the rule, and nothing else: a value that cannot be checked (a huge
int, a string with a lone surrogate, a datetime that overflows once made UTC,
a map nested thousands deep) is refused the same way. What passes can always
be encoded as UTF-8 JSON, so one event can never break a batch it shares with
others (an outbox or store write, a request body).

The WorkOS rules (each metadata map: at most 50 keys, key names of at most 40
characters, string values of at most 500 characters; ``action`` reads
``category.name``; ``action_type`` is C, R, U or D) are checked here, before
sending, where the caller can still act on the error.

Masking: a metadata value whose key matches a mask pattern is replaced with
``"[masked]"`` when the event is built, before its value is looked at, so a
masked value never reaches a sender, a file or an error message.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import AuditConfigError, AuditValidationError

if TYPE_CHECKING:
    from .event import AuditEvent

__all__ = [
    "DEFAULT_MASK",
    "MASKED",
    "MAX_INT",
    "MAX_KEY_LENGTH",
    "MAX_METADATA_KEYS",
    "MAX_STRING_LENGTH",
    "MIN_INT",
    "ActionType",
    "MetadataValue",
    "Primitive",
    "as_utc",
    "check_idempotency_key",
    "check_legacy",
    "check_text",
    "check_version",
    "is_masked",
    "mask_patterns",
    "parse_timestamp",
    "set_mask",
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
MIN_INT = -(2**63)
MAX_INT = 2**63 - 1
"""Metadata integers are 64-bit signed: what JSON decoders other than JavaScript's
read as an integer (Go, Java, Rust, PostgreSQL ``bigint``, SQLite ``INTEGER``).
A JavaScript reader keeps only 53 bits of precision: send larger ids as strings."""
MAX_IDEMPOTENCY_KEY_LENGTH = 255

_ACTION = re.compile(r"[^\s.]+(?:\.[^\s.]+)+")
# visible ASCII, inner spaces allowed: the key travels as an HTTP header value
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


class ActionType(enum.StrEnum):
    """What an event did to its target: Create, Read, Update or Delete."""

    CREATE = "C"
    READ = "R"
    UPDATE = "U"
    DELETE = "D"


_ACTION_TYPES: dict[object, ActionType] = {t.value: t for t in ActionType}
_ACTION_TYPES.update({t: t for t in ActionType})


# -- strings and times ---------------------------------------------------------------------


def encodable(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8 (no lone surrogates)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(where: str, value: object, *, required: bool) -> str:
    """Return ``value`` if it is a string encodable as UTF-8 (non-empty if ``required``)."""
    if not isinstance(value, str) or (required and not value):
        rule = "required: a non-empty string" if required else "must be a string"
        raise AuditValidationError(where, rule, value)
    if not encodable(value):
        raise AuditValidationError(where, "must be valid Unicode text (no lone surrogates)", value)
    return value


def as_utc(value: datetime, where: str = "occurred_at") -> datetime:
    """``value`` in UTC: a naive datetime is taken as UTC, an aware one converted."""
    if value.tzinfo is UTC:
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except Exception:  # OverflowError at the ends of the calendar, or a broken tzinfo
        raise AuditValidationError(
            where, "must be a date and time that exists in UTC (years 1-9999)"
        ) from None


def parse_timestamp(where: str, value: object) -> datetime:
    """A UTC datetime from a datetime or an ISO 8601 string, else raise."""
    if isinstance(value, datetime):
        return as_utc(value, where)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return as_utc(parsed, where)
    raise AuditValidationError(
        where, "must be a datetime or an ISO 8601 string like 2019-05-01T01:15:55.619355Z", value
    )


# -- action, version, idempotency key -----------------------------------------------------


def validate_action(action: object) -> str:
    """Return ``action`` if it reads ``category.name``, else raise."""
    if not isinstance(action, str) or not _ACTION.fullmatch(action):
        raise AuditValidationError(
            "action", "must be 'category.name': dot-separated, no empty parts or spaces", action
        )
    return check_text("action", action, required=True)


def validate_action_type(action_type: object) -> ActionType:
    """Return the :class:`ActionType` for ``"C"``/``"R"``/``"U"``/``"D"``, else raise."""
    try:
        return _ACTION_TYPES[action_type]
    except (KeyError, TypeError):
        raise AuditValidationError(
            "action_type", "must be one of 'C', 'R', 'U', 'D' (or ActionType)", action_type
        ) from None


def check_version(version: object) -> int | None:
    """``None``, or the event schema version: an int from 1 to :data:`MAX_INT`."""
    if version is None:
        return None
    if type(version) is not int or not 1 <= version <= MAX_INT:
        raise AuditValidationError("version", "must be a positive integer or None", version)
    return version


def check_idempotency_key(key: object) -> str:
    """A given idempotency key: 1-255 visible ASCII characters (it is an HTTP header)."""
    if not isinstance(key, str) or not _IDEMPOTENCY_KEY.fullmatch(key):
        raise AuditValidationError(
            "idempotency_key",
            "must be 1-255 visible ASCII characters (it is sent as an HTTP header)",
            key if isinstance(key, str) and len(key) <= 80 else ...,
        )
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise AuditValidationError(
            "idempotency_key", f"at most {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
        )
    return key


# -- metadata ------------------------------------------------------------------------------


def _check_key(where: str, key: object) -> str:
    if not isinstance(key, str) or not key:
        raise AuditValidationError(where, "keys must be non-empty strings", key)
    if not encodable(key):
        raise AuditValidationError(where, "keys must be valid Unicode text (no lone surrogates)",
                                   key)
    if len(key) > MAX_KEY_LENGTH:
        raise AuditValidationError(
            f"{where}.{key}", f"key names are at most {MAX_KEY_LENGTH} characters"
        )
    return key


def _check_primitive(where: str, value: object) -> Primitive:
    kind = type(value)
    if kind is str:
        text: str = value  # type: ignore[assignment]
        if len(text) > MAX_STRING_LENGTH:
            raise AuditValidationError(
                where, f"strings are at most {MAX_STRING_LENGTH} characters (got {len(text)})"
            )
        if not encodable(text):
            raise AuditValidationError(where, "strings must be valid Unicode text "
                                              "(no lone surrogates)")
        return text
    if kind is bool:
        return value  # type: ignore[return-value]
    if kind is int:
        if not MIN_INT <= value <= MAX_INT:  # type: ignore[operator]
            raise AuditValidationError(where, "integers must fit in 64 bits (-2**63 to 2**63-1)")
        return value  # type: ignore[return-value]
    if kind is float:
        if not math.isfinite(value):  # type: ignore[arg-type]
            raise AuditValidationError(where, "numbers must be finite (no NaN or inf)", value)
        return value  # type: ignore[return-value]
    if isinstance(value, datetime):
        return as_utc(value, where)
    if isinstance(value, (str, int, float)) and not isinstance(value, enum.Enum):
        # subclasses of str/int/float that are not enums: keep the plain value
        plain: object
        if isinstance(value, str):
            plain = str.__str__(value)
        elif isinstance(value, int):
            plain = int.__int__(value)
        else:
            plain = float.__float__(value)
        return _check_primitive(where, plain)
    raise AuditValidationError(
        where, "values must be str, bool, int, float or datetime, or a map of those", value
    )


def _check_map(where: str, metadata: object, *, nested: bool) -> dict[str, Any]:
    if type(metadata) is not dict and not isinstance(metadata, Mapping):
        raise AuditValidationError(where, "must be a mapping of str to values", metadata)
    if len(metadata) > MAX_METADATA_KEYS:
        raise AuditValidationError(where, f"at most {MAX_METADATA_KEYS} keys (got {len(metadata)})")
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if (type(key) is not str or not key or len(key) > MAX_KEY_LENGTH
                or not (key.isascii() or encodable(key))):
            _check_key(where, key)  # raises, naming the rule (or passes a str subclass)
        if _mask_pattern is not None and is_masked(key):
            out[key] = MASKED  # before the value is looked at: it never shows in an error
        elif type(value) is str and len(value) <= MAX_STRING_LENGTH and value.isascii():
            out[key] = value  # the common case, checked inline
        elif isinstance(value, Mapping):
            if nested:
                raise AuditValidationError(f"{where}.{key}", "maps may be nested one level only")
            out[key] = MappingProxyType(_check_map(f"{where}.{key}", value, nested=True))
        else:
            out[key] = _check_primitive(f"{where}.{key}", value)
    return out


def validate_metadata(
    metadata: object, where: str = "metadata", *, nested: bool = False
) -> dict[str, MetadataValue]:
    """Check ``metadata`` against the rules, mask it, and return a normalised copy.

    Values are primitives (datetimes made UTC-aware) or one-level maps of them;
    at most 50 keys per map, key names of at most 40 characters, strings of at
    most 500 characters, integers within 64 bits, finite floats; every string
    valid Unicode. Values under masked keys become ``"[masked]"`` (at any level)
    and are never checked or shown. Nested maps come back read-only. ``where``
    names the map in errors; ``nested=True`` checks a map that is itself a
    metadata value (no maps in it).
    """
    return _check_map(where, metadata, nested=nested)


# -- the legacy POST /events format --------------------------------------------------------


def check_legacy(event: AuditEvent) -> None:
    """Raise unless the legacy ``POST /events`` format can carry all of ``event``.

    That format has one target (id and name) and no actor type, actor or
    target metadata, or schema version; an event using any of them is
    refused rather than cut. (``user_agent`` has never been part of it.)
    """
    targets = event.targets
    if len(targets) > 1:
        raise AuditValidationError(
            "targets",
            f"the legacy POST /events format carries one target (this event has "
            f"{len(targets)}); send it to POST /audit_logs/events (WorkOS(api='audit_logs'))",
        )
    first = targets[0]
    for field, used in (
        ("targets[0].type", first.type is not None),
        ("targets[0].metadata", bool(first.metadata)),
        ("actor_type", event.actor_type is not None),
        ("actor_metadata", bool(event.actor_metadata)),
        ("version", event.version is not None),
    ):
        if used:
            raise AuditValidationError(
                field,
                "the legacy POST /events format cannot carry it; send the event to "
                "POST /audit_logs/events (WorkOS(api='audit_logs'))",
            )


# -- masking -------------------------------------------------------------------------------

MASKED = "[masked]"
"""What a masked metadata value is replaced with."""

DEFAULT_MASK: tuple[str, ...] = (
    "password",
    "passwd",
    "pwd",
    "secret",
    "token",
    "api_key",
    "apikey",
    "x-api-key",
    "authorization",
    "cookie",
    "session",
    "private",
    "private_key",
    "credential",
    "credit_card",
    "card_number",
    "cvv",
)
"""Metadata keys containing any of these are masked (see :func:`is_masked`)."""


def _normalise(text: str) -> str:
    return "".join(char for char in text.lower() if char.isalnum())


_mask_pattern: re.Pattern[str] | None = None
_mask: tuple[str, ...] = ()


def set_mask(patterns: Iterable[str]) -> tuple[str, ...]:
    """Mask metadata keys containing any of ``patterns``; return them lower-cased.

    Called by :func:`~audit_instrument.configure` (``mask=``). A pattern that
    is not a string, or has no letter or digit, raises
    :class:`~audit_instrument.AuditConfigError`.
    """
    global _mask_pattern, _mask
    if isinstance(patterns, str):
        raise AuditConfigError(f"mask must be a list of key patterns, not one string {patterns!r}")
    try:
        given = tuple(patterns)
    except TypeError:
        raise AuditConfigError(
            f"mask must be a list of key patterns, not {type(patterns).__name__}"
        ) from None
    for pattern in given:
        if not isinstance(pattern, str) or not _normalise(pattern):
            raise AuditConfigError(
                f"mask patterns must be strings with a letter or digit, not {pattern!r}"
            )
    normalised = sorted({_normalise(pattern) for pattern in given}, key=len)
    _mask = tuple(pattern.lower() for pattern in given)
    _mask_pattern = re.compile("|".join(map(re.escape, normalised))) if normalised else None
    _mask_cache.clear()
    return _mask


def mask_patterns() -> tuple[str, ...]:
    """The patterns in force (lower-cased, as given to :func:`set_mask`)."""
    return _mask


def is_masked(key: str) -> bool:
    """Whether metadata under ``key`` is replaced with ``"[masked]"``.

    Key and patterns are compared *normalised*: lower-cased, with everything
    but letters and digits dropped. So the pattern ``credit_card`` masks
    ``credit_card``, ``credit-card``, ``creditCard`` and ``CreditCardNumber``,
    and ``api_key`` masks ``X-API-Key``. A key is masked when any pattern is
    a substring of it.
    """
    known = _mask_cache.get(key)
    if known is None:
        pattern = _mask_pattern
        known = pattern is not None and pattern.search(_normalise(key)) is not None
        if len(_mask_cache) >= 4096:  # metadata keys are few and repeat on every event
            _mask_cache.clear()
        _mask_cache[key] = known
    return known


_mask_cache: dict[str, bool] = {}
set_mask(DEFAULT_MASK)
