"""The events the engine holds in memory: ready, waiting to retry, in flight.

One lock guards it all; workers wait on :attr:`JobQueue.work` for jobs,
producers and ``flush()`` on :attr:`JobQueue.changed` for room and for
outcomes. ``pending`` counts every job held here (ready + delayed + in
flight) and is what bounds memory (``capacity``).
"""

from __future__ import annotations

import collections
import heapq
import itertools
import threading
import time
from collections.abc import Sequence

from ..event import AuditEvent
from .handle import DeliveryHandle

__all__ = ["Job", "JobQueue"]

_monotonic = time.monotonic
_LONGEST_WAIT = 3600.0  # no single wait longer than this (it is re-checked after)


class Job:
    """One event the engine is working on."""

    __slots__ = ("abandoned", "attempts", "deadline", "event", "handle", "last_error")

    def __init__(self, event: AuditEvent, handle: DeliveryHandle | None, deadline: float) -> None:
        self.event = event
        self.handle = handle
        self.deadline = deadline
        self.attempts = 0
        self.abandoned = False  # shutdown gave up on it while its request was in flight
        self.last_error: Exception | None = None


class JobQueue:
    """Jobs in memory, at most ``capacity``; counts of what became of them."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)  # workers wait here for jobs
        self.changed = threading.Condition(self.lock)  # producers and flush wait here
        self.ready: collections.deque[Job] = collections.deque()
        self._delayed: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self.in_flight: set[Job] = set()
        self.pending = 0
        self.idle = 0  # workers waiting for work
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    # -- producers -------------------------------------------------------------------------------
    def reserve(self, count: int, wait: float) -> int:
        """Reserve room for up to ``count`` jobs, waiting up to ``wait`` s for all to fit."""
        with self.lock:
            if self.pending + count > self.capacity and wait > 0:
                deadline = _monotonic() + wait
                while self.pending + count > self.capacity:
                    left = deadline - _monotonic()
                    if left <= 0:
                        break
                    self.changed.wait(left)
            room = max(0, min(self.capacity - self.pending, count))
            self.pending += room
            return room

    def put(self, jobs: Sequence[Job], reserved: int) -> None:
        """Queue ``jobs`` (at most ``reserved``); give back the room not used."""
        with self.lock:
            self.pending -= reserved - len(jobs)
            if jobs:
                self.ready.extend(jobs)
                if self.idle:
                    self.work.notify(len(jobs))
            if reserved > len(jobs):
                self.changed.notify_all()

    def count(self, *, dropped: int = 0, failed: int = 0) -> None:
        with self.lock:
            self.dropped += dropped
            self.failed += failed

    # -- workers (with the lock held) ------------------------------------------------------------
    def pop_due(self, now: float, limit: int = 1) -> list[Job]:
        """Up to ``limit`` jobs to send (due retries first), now in flight; ``[]`` if none."""
        delayed, ready = self._delayed, self.ready
        batch: list[Job] = []
        while len(batch) < limit:
            if delayed and delayed[0][0] <= now:
                batch.append(heapq.heappop(delayed)[2])
            elif ready:
                batch.append(ready.popleft())
            else:
                break
        self.in_flight.update(batch)
        return batch

    def next_due_in(self, now: float) -> float | None:
        """Seconds until the next retry is due (``None``: none waits)."""
        return self._delayed[0][0] - now if self._delayed else None

    def wait_for_work(self, timeout: float | None) -> None:
        self.idle += 1
        try:
            self.work.wait(None if timeout is None else min(timeout, _LONGEST_WAIT))
        finally:
            self.idle -= 1

    def add_claimed(self, jobs: Sequence[Job]) -> None:
        """Jobs taken in from outside memory (with the lock held)."""
        self.ready.extend(jobs)
        self.pending += len(jobs)
        if jobs and self.idle:
            self.work.notify(len(jobs))
        self.changed.notify_all()

    # -- outcomes -------------------------------------------------------------------------------
    def land(self, batch: list[Job]) -> list[Job]:
        """:meth:`landed` for each job of ``batch``: those shutdown did not give up on."""
        with self.lock:
            for job in batch:
                self.in_flight.discard(job)
        return [job for job in batch if not job.abandoned]

    def landed(self, job: Job) -> bool:
        """The request of ``job`` ended; ``False`` if shutdown already gave up on it."""
        with self.lock:
            self.in_flight.discard(job)
        return not job.abandoned

    def is_in_flight(self, job: Job) -> bool:
        with self.lock:
            return job in self.in_flight

    def retry_at(self, job: Job, due: float, stopping: bool) -> bool:
        """Hold ``job`` until ``due`` (monotonic); ``False`` if ``stopping``."""
        with self.lock:
            if stopping:
                return False
            first = not self._delayed or due < self._delayed[0][0]
            heapq.heappush(self._delayed, (due, next(self._seq), job))
            if first and self.idle:
                self.work.notify()
            return True

    def finish(self, *, delivered: int = 0, failed: int = 0) -> None:
        """A job left memory (delivered, failed, or kept outside memory)."""
        with self.lock:
            self.pending -= 1
            self.delivered += delivered
            self.failed += failed
            self.changed.notify_all()

    # -- flush and shutdown ---------------------------------------------------------------------
    def take_all_waiting(self) -> list[Job]:
        """Remove every job not in flight (with the lock held); wake everyone."""
        leftovers = list(self.ready) + [entry[2] for entry in self._delayed]
        self.ready.clear()
        self._delayed.clear()
        self.pending -= len(leftovers)
        self.work.notify_all()
        self.changed.notify_all()
        return leftovers

    def take_in_flight(self) -> list[Job]:
        """Give up on requests still in flight: they are abandoned when they end."""
        with self.lock:
            stranded = list(self.in_flight)
            self.in_flight.clear()
            for job in stranded:
                job.abandoned = True
            self.pending -= len(stranded)
            self.changed.notify_all()
        return stranded
