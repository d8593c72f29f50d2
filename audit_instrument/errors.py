"""The exceptions audit_instrument raises: one base class, one per kind of failure.

Catch :class:`AuditError` to handle anything this library raises on purpose.
"""

from __future__ import annotations

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
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            message += f" (got {shown})"
        super().__init__(message)

    def __reduce__(self) -> tuple[type[AuditValidationError], tuple[str, str]]:
        return (type(self), (self.field, self.rule))


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
