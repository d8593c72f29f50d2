"""The exceptions audit_instrument raises: one base class, one per kind of failure.

Catch :class:`AuditError` to handle anything this library raises on purpose.
"""

from __future__ import annotations

import reprlib

__all__ = ["AuditConfigError", "AuditError", "AuditValidationError", "DeliveryError"]


class AuditError(Exception):
    """Base class of every error audit_instrument raises on purpose."""


class AuditValidationError(AuditError, ValueError):
    """A field of an event (or of an ``@audit`` declaration) breaks a rule.

    ``field`` names the field (``"metadata.body"`` for a metadata key) and
    ``rule`` says what the value must be; both are in the message.

    >>> AuditValidationError("action", "must be 'category.name'", "tweet")
    AuditValidationError("action: must be 'category.name' (got 'tweet')")
    """

    def __init__(self, field: str, rule: str, value: object = ...) -> None:
        self.field = field
        self.rule = rule
        message = f"{field}: {rule}"
        if value is not ...:
            message += f" (got {_shown(value)})"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[AuditValidationError], tuple[str, str]]:
        return (type(self), (self.field, self.rule))


_REPR = reprlib.Repr()
_REPR.maxlevel = 2
_REPR.maxstring = _REPR.maxother = 80


def _shown(value: object) -> str:
    """A short repr of ``value`` that cannot fail: for error messages."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"  # repr() refuses over 4300 digits
    try:
        shown = _REPR.repr(value)
    except Exception:  # a broken __repr__, or one nested too deep
        return f"<{type(value).__name__} object>"
    return shown if len(shown) <= 80 else shown[:77] + "..."


class AuditConfigError(AuditError):
    """The library is configured wrongly (a missing API key, a bad URL, ...)."""


class DeliveryError(AuditError):
    """An event could not be delivered to its destination.

    ``status`` is the last HTTP status seen (``None`` for network errors and
    deadlines), ``retryable`` whether another attempt could have succeeded.
    """

    def __init__(self, message: str, *, status: int | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
