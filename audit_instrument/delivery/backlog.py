"""The backlog seam: where the engine's work comes from and where its outcomes go.

The engine keeps the events it is working on in memory (ready, in flight,
waiting to retry). A :class:`Backlog` is everything around that:

* :class:`MemoryBacklog` — nothing outside memory: an event that does not
  fit the queue is dropped, one given up on is lost (fast; gone on a crash).
* :class:`OutboxBacklog` — the durable :class:`~.outbox.Outbox`: every event
  is written to SQLite; what does not fit in memory waits on disk and is
  claimed later; outcomes are recorded there; an event the engine gives up
  on stays on disk for a later attempt. Its pacing budget lives in the same
  file, shared by the processes that share it.

The outbox stores events only; the handles of events waiting on disk are
kept here and settled when this process sends them.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Protocol

from .._stats import note_failure
from ..errors import AuditError, DeliveryError
from ..event import AuditEvent
from .handle import DeliveryHandle
from .jobs import Job
from .outbox import Outbox
from .pacing import MemoryPaceStore, PaceState, PaceStore

__all__ = ["Backlog", "Job", "MemoryBacklog", "OutboxBacklog"]

logger = logging.getLogger("audit_instrument")


Lost = Callable[[AuditEvent, DeliveryHandle | None, DeliveryError], None]


class Backlog(Protocol):
    """What the engine needs around its in-memory queue (see the module docstring)."""

    durable: bool
    """Whether events outlive the process (kept on disk until delivered)."""

    def accept(self, jobs: Sequence[Job], room: int) -> tuple[Sequence[Job], Sequence[Job]]:
        """Take in new jobs; return ``(to queue in memory now, dropped)``.

        ``room`` is how many the in-memory queue can take. Jobs in neither
        list wait outside memory. Raises :class:`DeliveryError` if none
        could be kept.
        """
        ...

    def refill(self, limit: int, deadline: float) -> list[Job]:
        """Up to ``limit`` jobs waiting outside memory, now this process's to send."""
        ...

    def waiting(self) -> int:
        """How many events wait outside memory that this process could take."""
        ...

    def delivered(self, job: Job) -> None:
        """The server accepted ``job``'s event."""
        ...

    def rejected(self, job: Job, error: DeliveryError) -> None:
        """The server refused ``job``'s event for good."""
        ...

    def keep(self, job: Job, retry_in: float) -> bool:
        """The engine stops working on ``job``; ``True`` if the backlog keeps it for later."""
        ...

    def pace_store(self) -> PaceStore:
        """Where the pacing budget lives (shared with whoever shares this backlog)."""
        ...

    def sync(self, timeout: float | None) -> None:
        """Wait (at most ``timeout``) until recorded outcomes are written."""
        ...

    def close(self) -> None: ...

    def after_fork(self) -> None: ...


class MemoryBacklog:
    """Nothing outside memory: overflow is dropped, an event given up on is lost."""

    durable = False

    def accept(self, jobs: Sequence[Job], room: int) -> tuple[Sequence[Job], Sequence[Job]]:
        return jobs[:room], jobs[room:]

    def refill(self, limit: int, deadline: float) -> list[Job]:
        return []

    def waiting(self) -> int:
        return 0

    def delivered(self, job: Job) -> None:
        pass

    def rejected(self, job: Job, error: DeliveryError) -> None:
        pass

    def keep(self, job: Job, retry_in: float) -> bool:
        return False

    def pace_store(self) -> PaceStore:
        return MemoryPaceStore()

    def sync(self, timeout: float | None) -> None:
        pass

    def close(self) -> None:
        pass

    def after_fork(self) -> None:
        pass


class OutboxBacklog:
    """The durable outbox as a backlog (see the module docstring).

    ``lease`` is how long a claimed event stays this process's; ``on_lost``
    hears about events waiting on disk whose write failed after the caller
    returned (``durability="batch"``), so their handles can be settled.
    """

    durable = True

    def __init__(self, outbox: Outbox, *, lease: float, on_lost: Lost) -> None:
        self.outbox = outbox
        self.lease = lease
        self._on_lost = on_lost
        self._parked: weakref.WeakValueDictionary[str, DeliveryHandle] = (
            weakref.WeakValueDictionary())

    def accept(self, jobs: Sequence[Job], room: int) -> tuple[Sequence[Job], Sequence[Job]]:
        events = [job.event for job in jobs]
        fits = len(jobs) <= room
        if not fits:  # all wait on disk, in order, for a refill
            for job in jobs:
                if job.handle is not None:
                    self._parked[job.event.idempotency_key] = job.handle
        try:
            self.outbox.add_many(events, owned=fits, lease=self.lease, on_error=(
                self._owned_not_written if fits else self._parked_not_written))
        except AuditError as exc:
            for job in jobs:
                self._parked.pop(job.event.idempotency_key, None)
            if isinstance(exc, DeliveryError):
                raise
            raise DeliveryError(str(exc), retryable=True) from None
        return (jobs if fits else ()), ()

    def _not_written(self, events: Sequence[AuditEvent], error: Exception) -> None:
        note_failure("outbox write", f"outbox {str(self.outbox.path)!r}: {len(events)} "
                     f"event(s) not written: {error}", error=error)

    def _owned_not_written(self, events: Sequence[AuditEvent], error: Exception) -> None:
        # Still in the engine's memory and delivered from there, but not durable.
        self._not_written(events, error)

    def _parked_not_written(self, events: Sequence[AuditEvent], error: Exception) -> None:
        # Nowhere but in that failed write: lost.
        self._not_written(events, error)
        failure = DeliveryError(f"not written to the outbox: {error}", retryable=True)
        for event in events:
            self._on_lost(event, self._parked.pop(event.idempotency_key, None), failure)

    def refill(self, limit: int, deadline: float) -> list[Job]:
        try:
            events = self.outbox.claim(min(limit, 1000), lease=self.lease)
        except AuditError as exc:
            note_failure("outbox read", f"cannot read the outbox: {exc}", error=exc)
            return []
        return [Job(event, self._parked.pop(event.idempotency_key, None), deadline)
                for event in events]

    def waiting(self) -> int:
        try:
            return self.outbox.claimable()
        except AuditError:
            return 0

    def _record(self, what: str, record: Callable[[], None]) -> None:
        # A closed or failing outbox is logged, not raised: the event stays
        # pending on disk and is sent again later, with the same key.
        try:
            record()
        except AuditError as exc:
            note_failure(f"outbox {what}", f"outbox {what} not recorded: {exc}", error=exc,
                         level=logging.WARNING)

    def delivered(self, job: Job) -> None:
        key = job.event.idempotency_key
        self._record("delivered", lambda: self.outbox.delivered(key))

    def rejected(self, job: Job, error: DeliveryError) -> None:
        key = job.event.idempotency_key
        self._record("dead letter", lambda: self.outbox.dead(key, error.status, str(error)))

    def keep(self, job: Job, retry_in: float) -> bool:
        key = job.event.idempotency_key
        self._record("release", lambda: self.outbox.release(key, retry_in=retry_in))
        return True

    def pace_store(self) -> PaceStore:
        return _OutboxPaceStore(self.outbox)

    def sync(self, timeout: float | None) -> None:
        self.outbox.sync(timeout)

    def close(self) -> None:
        self.outbox.close()

    def after_fork(self) -> None:
        self._parked = weakref.WeakValueDictionary()
        self.outbox.after_fork()


class _OutboxPaceStore:
    """The pacing budget in the outbox file: one budget for the processes sharing it.

    If the file cannot be used for it, pacing carries on in memory (logged once).
    """

    shared = True

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox
        self._fallback = MemoryPaceStore()

    def update(self, change: Callable[[PaceState], PaceState]) -> PaceState:
        try:
            def apply(row: tuple[float, float, float]) -> tuple[float, float, float]:
                tat, rate, cut_at = change(PaceState(*row))
                return tat, rate, cut_at

            return PaceState(*self._outbox.update_pace(apply))
        except AuditError as exc:
            note_failure("outbox pacing", f"cannot share the pacing budget through the "
                         f"outbox (pacing this process alone): {exc}", error=exc,
                         level=logging.WARNING)
            return self._fallback.update(change)
