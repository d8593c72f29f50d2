"""What becomes of a job: its handle is settled, the return path told, the backlog and the
counters updated — in one place, so every way out of the engine is handled alike.

* delivered — the destination accepted the event;
* failed — refused for good (``dead``: kept as a dead letter by a durable
  backlog) or given up on; the error goes to the handle and ``event_failed``;
* expired — out of time: a durable backlog keeps the event for later, so
  the handle hears "still pending"; otherwise it failed;
* abandoned — the engine stops: kept by a durable backlog, else dropped;
* dropped — never queued (queue full, shut down): ``event_dropped``.
"""

from __future__ import annotations

import logging

from .. import _stats as stats
from .. import signals
from ..errors import DeliveryError
from ..event import AuditEvent
from .backlog import Backlog
from .handle import DeliveryHandle
from .jobs import Job, JobQueue
from .retry import RetryPolicy

__all__ = ["Outcomes"]

class Outcomes:
    """Settles jobs of ``jobs`` delivering to ``destination`` (see the module docstring)."""

    def __init__(self, destination: object, retry: RetryPolicy, backlog: Backlog,
                 jobs: JobQueue) -> None:
        self.destination = destination
        self.retry = retry
        self.backlog = backlog
        self.jobs = jobs

    def delivered(self, job: Job) -> None:
        self.backlog.delivered(job)
        self.jobs.finish(delivered=1)
        if job.handle is not None:
            job.handle.settle(None)
        signals.report_delivered(job.event, self.destination)

    def failed(self, job: Job, error: DeliveryError, *, dead: bool) -> None:
        if dead:
            self.backlog.rejected(job, error)
        else:
            self.backlog.keep(job, self.retry.max_backoff)
        self.jobs.finish(failed=1)
        kind = f"HTTP {error.status}" if error.status is not None else type(error).__name__
        stats.note_failure(
            f"{type(self.destination).__name__} gave up: {kind}",
            f"event {job.event.action} ({job.event.idempotency_key}) not delivered: {error}",
            level=logging.WARNING,
        )
        self.gave_up(job.event, job.handle, error)

    def expired(self, job: Job, error: DeliveryError) -> None:
        message = (f"not delivered within the {self.retry.deadline:g}s deadline after "
                   f"{job.attempts} attempt(s); last error: {error}")
        if self.backlog.keep(job, self.retry.max_backoff):  # not given up: retried later
            self.jobs.finish()
            if job.handle is not None:
                job.handle.settle(DeliveryError(message + " (still pending in the outbox)",
                                                status=error.status, retryable=True))
            return
        self.failed(job, DeliveryError(message, status=error.status, retryable=True),
                    dead=False)

    def lost(self, event: AuditEvent, handle: DeliveryHandle | None,
             error: DeliveryError) -> None:
        """An event the backlog could not keep after its caller returned."""
        self.jobs.count(failed=1)
        self.gave_up(event, handle, error)

    def gave_up(self, event: AuditEvent, handle: DeliveryHandle | None,
                error: DeliveryError) -> None:
        if handle is not None:
            handle.settle(error)
        signals.report_failed(event, self.destination, error)

    def abandoned(self, job: Job, reason: str) -> None:
        """``job`` leaves memory undelivered because the engine stops."""
        if self.backlog.keep(job, 0.0):
            if job.handle is not None:
                job.handle.settle(DeliveryError(
                    f"engine {reason} before delivery (still pending in the outbox)",
                    retryable=True))
            return
        self.jobs.count(dropped=1)
        self.dropped(job.event, job.handle, reason)

    def dropped(self, event: AuditEvent, handle: DeliveryHandle | None, reason: str) -> None:
        if handle is not None:
            handle.settle(DeliveryError(f"event dropped: {reason}", retryable=False))
        signals.report_dropped(event, self.destination, reason)
