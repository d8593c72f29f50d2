"""Group commit: many threads hand over writes, one transaction commits them together.

The durable outbox and the audit store both write one small row per event
from many threads, and a transaction's cost is mostly its flush to disk.
:class:`GroupCommit` lets every caller that arrives while a transaction is
being committed share the next one:

* A caller that wants to wait (``submit(..., wait=True)``) becomes the
  committer if nobody is committing: it takes everything queued, calls
  ``write(batch)`` outside the lock, then wakes exactly the callers whose
  submissions were in it, and hands the committer's role to one caller
  that arrived meanwhile (leader/follower): nobody wakes only to sleep again.
* A caller that does not wait (``wait=False``) returns at once; a flusher
  thread commits what is queued within ``max_delay`` seconds (sooner when a
  waiting caller commits first). It is woken once per batch, not per call.
* **One bad write never costs another.** When ``write`` raises for a batch
  of several submissions, each submission is written again on its own, so
  only the one that fails gets the error. ``write`` must leave nothing behind
  when it raises (roll back).

>>> commits = GroupCommit(lambda batch: print(len(batch)), name="demo")
>>> commits.submit(["a", "b"])
2
>>> commits.close()
"""

from __future__ import annotations

import logging
import os
import threading
import time
from _thread import allocate_lock
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from ..errors import AuditError

__all__ = ["CommitTimeoutError", "GroupCommit"]

logger = logging.getLogger("audit_instrument")

T = TypeVar("T")


class CommitTimeoutError(AuditError):
    """A waiting caller's write was not committed within its timeout (it may still be)."""


class _Submission(Generic[T]):
    """One caller's items: written together, in one transaction, or not at all."""

    __slots__ = ("done", "error", "gate", "items", "lead", "waited")

    def __init__(self, items: Sequence[T], waited: bool) -> None:
        self.items = items
        self.waited = waited
        self.done = False
        self.error: Exception | None = None
        # A held lock the waiting caller sleeps on; released when its submission
        # is done or the committer's role is handed to it (``lead``).
        self.gate: threading.Lock | None = None
        self.lead = False


class GroupCommit(Generic[T]):
    """Commit the items of many callers in shared transactions.

    ``write(items)`` writes a list of items in one transaction, or raises and
    keeps none of them. ``on_error(items, error)`` hears about submissions
    that failed when nobody waited for them (``wait=False``). ``max_delay``
    bounds how long such a submission waits for its commit.
    ``retry_alone(error)`` says whether a failed shared write is worth
    retrying submission by submission (default: always); return ``False``
    for errors of the database itself (locked, gone), which would only fail
    again once per submission.
    """

    def __init__(
        self,
        write: Callable[[list[T]], None],
        *,
        name: str,
        max_delay: float = 0.005,
        on_error: Callable[[Sequence[T], Exception], None] | None = None,
        retry_alone: Callable[[Exception], bool] | None = None,
    ) -> None:
        self._write = write
        self._name = name
        self.max_delay = max_delay
        self._on_error = on_error
        self._retry_alone = retry_alone
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._flusher_wake = threading.Condition(self._lock)  # the flusher waits here
        self._settled = threading.Condition(self._lock)  # flush() waits here, per batch
        self._queue: list[_Submission[T]] = []
        self._batch: list[_Submission[T]] = []  # being written
        self._writing = False  # some thread holds the committer's role
        self._closed = False
        self._flusher: threading.Thread | None = None
        self._flusher_idle = False
        self._pid = os.getpid()

    def after_fork(self) -> None:
        """In a forked child: fresh lock and queue; the parent's queued writes stay the parent's."""
        self._setup()

    def submit(
        self, items: Sequence[T], *, wait: bool = True, timeout: float | None = None
    ) -> None:
        """Queue ``items`` to be committed together.

        With ``wait`` return once they are committed, raising the error of a
        failed write (:class:`CommitTimeoutError` after ``timeout`` seconds);
        without, return at once. Raises :class:`~audit_instrument.AuditError`
        once closed.
        """
        if self._pid != os.getpid():
            self._setup()
        submission = _Submission(items, wait)
        with self._lock:
            if self._closed:
                raise AuditError(f"{self._name} is closed")
            self._queue.append(submission)
            if not wait:
                if self._flusher is None:
                    self._start_flusher()
                elif self._flusher_idle:
                    self._flusher_idle = False
                    self._flusher_wake.notify()
                return
            lead = not self._writing
            if lead:
                self._writing = True
            else:
                gate = submission.gate = allocate_lock()
                gate.acquire()
        if not lead:
            gate.acquire(True, -1 if timeout is None else max(0.0, timeout))
            with self._lock:
                if not submission.done and not submission.lead:
                    submission.gate = None  # never handed the role now: nobody waits on it
                    raise CommitTimeoutError(
                        f"{self._name}: commit did not finish within {timeout}s")
                lead = submission.lead
        if lead:
            self._lead()
        if submission.error is not None:
            raise submission.error

    def flush(self, timeout: float | None = None) -> bool:
        """Commit everything queued so far; ``False`` if ``timeout`` ran out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            waiting_for = [*self._batch, *self._queue]
        while True:
            with self._lock:
                if all(submission.done for submission in waiting_for):
                    return True
                if self._writing:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        return False
                    self._settled.wait(left)
                    continue
                self._writing = True
            self._lead()

    def close(self, timeout: float | None = None) -> bool:
        """Refuse new submissions, then commit what is queued; ``False`` if time ran out.

        Once it returns (in time), no write is running or will start.
        """
        with self._lock:
            self._closed = True  # first: nothing new slips in after the last commit
            self._flusher_wake.notify_all()
        flushed = self.flush(timeout)
        with self._lock:
            flusher = self._flusher
        if flusher is not None and flusher is not threading.current_thread():
            flusher.join(timeout)
        return flushed

    @property
    def queued(self) -> int:
        """Items waiting for a commit (not counting the one being written)."""
        return sum(len(s.items) for s in self._queue)

    # -- the committer (holds the role: ``_writing`` is set, the lock is not held) ------------
    def _lead(self) -> None:
        """Commit what is queued, then hand the role to a waiting caller, or give it up."""
        with self._lock:
            batch, self._queue = self._queue, []
            self._batch = batch
        try:
            self._write_batch(batch)
        finally:
            with self._lock:
                for submission in batch:
                    submission.done = True
                self._batch = []
                heir = next((s for s in self._queue if s.gate is not None), None)
                if heir is not None:
                    heir.lead = True
                else:
                    self._writing = False
                    if self._queue and self._flusher_idle:  # unwaited items arrived meanwhile
                        self._flusher_idle = False
                        self._flusher_wake.notify()
                self._settled.notify_all()
                gates = [s.gate for s in batch]
                if heir is not None:
                    gates.append(heir.gate)
            for gate in gates:
                if gate is not None:
                    gate.release()

    def _write_batch(self, batch: list[_Submission[T]]) -> None:
        try:
            self._write([item for submission in batch for item in submission.items])
            return
        except Exception as error:
            if len(batch) == 1 or (self._retry_alone is not None
                                   and not self._retry_alone(error)):
                for submission in batch:
                    self._failed(submission, error)
                return
        # One submission spoiled the shared write: each goes alone, so only it fails.
        for submission in batch:
            try:
                self._write(list(submission.items))
            except Exception as error:
                self._failed(submission, error)

    def _failed(self, submission: _Submission[T], error: Exception) -> None:
        submission.error = error
        if not submission.waited and self._on_error is not None:
            try:
                self._on_error(submission.items, error)
            except Exception:
                logger.exception("audit_instrument: %s: error handler failed", self._name)

    # -- the flusher thread, for submissions nobody waits for --------------------------------
    def _start_flusher(self) -> None:
        self._flusher = threading.Thread(
            target=self._flush_loop, name=f"audit-instrument-{self._name}", daemon=True
        )
        self._flusher.start()

    def _flush_loop(self) -> None:
        lock = self._lock
        with lock:
            while True:
                while not self._queue and not self._closed:
                    self._flusher_idle = True
                    self._flusher_wake.wait()
                self._flusher_idle = False
                if not self._queue:  # closed and drained
                    self._flusher = None
                    return
                # Let more writes gather for up to max_delay (a waiting caller may
                # commit them first), then commit whatever is still queued.
                deadline = time.monotonic() + self.max_delay
                while not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._flusher_wake.wait(left)
                while self._writing:
                    self._settled.wait()
                if self._queue:
                    self._writing = True
                    lock.release()
                    try:
                        self._lead()
                    finally:
                        lock.acquire()
