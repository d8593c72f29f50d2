"""What the senders that deliver through the delivery engine share (WorkOS, OpenTelemetry)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .. import _stats as stats
from .. import signals
from ..delivery.engine import DeliveryEngine
from ..delivery.handle import DeliveryHandle
from ..delivery.outbox import Outbox
from ..errors import DeliveryError
from ..event import AuditEvent

__all__ = ["QueuedSender"]


class QueuedSender:
    """A sender whose events wait in the delivery engine (memory or an outbox).

    Subclasses make ``self._engine`` and define :meth:`create_event` and
    :meth:`create_events`; the rest — the sender API :func:`configure` uses,
    flushing, shutting down — is the same for all of them.
    """

    _engine: DeliveryEngine

    @property
    def engine(self) -> DeliveryEngine:
        """The delivery engine (counters ``delivered``, ``failed``, ``dropped``)."""
        return self._engine

    @property
    def outbox(self) -> Outbox | None:
        """The durable outbox, when one was given."""
        return self._engine.outbox

    def create_event(self, event: AuditEvent | Mapping[str, Any]) -> DeliveryHandle:
        raise NotImplementedError

    def create_events(
        self, events: Iterable[AuditEvent | Mapping[str, Any]]
    ) -> list[DeliveryHandle]:
        raise NotImplementedError

    def send(self, event: AuditEvent) -> DeliveryHandle | None:
        """What :func:`~audit_instrument.configure` connects: ``create_event`` that never raises.

        An event this destination cannot take (the legacy WorkOS format and
        several targets, say) is reported on ``signals.event_failed``,
        counted, and logged once per cause.
        """
        try:
            return self.create_event(event)
        except Exception as error:
            name = type(self).__name__
            stats.note_failure(f"{name} refused: {type(error).__name__}",
                               f"{self!r} could not queue event {event.action!r}: {error}",
                               error=error)
            signals.report_failed(event, self, DeliveryError(
                f"not queued for {name}: {error}", retryable=False))
            return None

    def flush(self, timeout: float | None = None) -> int:
        """Wait up to ``timeout`` seconds for queued events; return how many are left."""
        return self._engine.flush(timeout)

    def shutdown(self, timeout: float | None = None) -> int:
        """Flush up to ``timeout`` seconds, then stop; return how many were not delivered
        (with an outbox they stay pending on disk for the next start)."""
        remaining = self._engine.shutdown(timeout)
        self._stopped()
        return remaining

    def _stopped(self) -> None:
        """After :meth:`shutdown`: release what the subclass holds."""

    def __enter__(self) -> QueuedSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown(self._engine.atexit_timeout)
