"""A sender that writes each event as one JSON line on a :mod:`logging` logger."""

from __future__ import annotations

import logging

from ..event import AuditEvent

__all__ = ["LoggingSender"]


class LoggingSender:
    """Log each event as one JSON object (``to_record()``) on ``logger``.

    ``logger`` is a name or a :class:`logging.Logger` (default ``"audit"``).
    The event is also attached to the log record as ``record.audit_event``
    for handlers that want the structured value.

    >>> from audit_instrument import configure
    >>> configure(LoggingSender("myapp.audit", level=logging.INFO))
    """

    def __init__(
        self, logger: str | logging.Logger = "audit", *, level: int = logging.INFO
    ) -> None:
        self.logger = logging.getLogger(logger) if isinstance(logger, str) else logger
        self.level = level

    def send(self, event: AuditEvent) -> None:
        """Log ``event`` if the logger is enabled for the level."""
        if self.logger.isEnabledFor(self.level):
            self.logger.log(
                self.level,
                event.to_json(),
                extra={"audit_event": event},
            )

    def __repr__(self) -> str:
        return (
            f"<LoggingSender logger={self.logger.name!r} level={logging.getLevelName(self.level)}>"
        )
