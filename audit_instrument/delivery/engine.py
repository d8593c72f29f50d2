"""The delivery engine: paced worker threads send events from a backlog, with retries.

An HTTP sender plugs in as a :class:`~.http.Destination`; a sender that delivers
several events per call itself (an OpenTelemetry exporter) as a :class:`~.channel.Channel`
with a ``batch_size``. Around each request:

* **where work comes from** — a :mod:`backlog <.backlog>` (memory, or the
  durable outbox); the jobs being worked on are held in a :mod:`.jobs` queue;
* **pacing** (:mod:`.pacing`) — at most ``requests_per_second``, slower
  after a 429; the workers follow rate * latency (:mod:`.concurrency`), up
  to ``max_in_flight``;
* **outages** (:mod:`.outage`) — a server that is down is probed, not hammered;
* retries with capped, jittered backoff and a per-event deadline; outcomes
  on the return path (:mod:`.outcomes`); a bounded flush at exit; fresh
  state after ``fork()``.

The caller's cost is a handle and a queue append (with an outbox in
``commit`` mode, also the wait for the group commit); no network I/O.
HTTP requests go through httpx (:mod:`.http`).

>>> engine = DeliveryEngine(my_destination, base_url="https://api.workos.com")  # doctest: +SKIP
>>> engine.submit(event).result(timeout=5)                                     # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import contextvars
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Literal, cast

import httpx

from .._stats import note_failure
from ..errors import AuditConfigError, DeliveryError
from ..event import AuditEvent
from .backlog import Backlog, MemoryBacklog, OutboxBacklog
from .channel import Channel, HttpChannel
from .concurrency import InFlight, check_options, default_max_in_flight
from .handle import DeliveryHandle
from .http import Destination, NoAnswerError, route
from .jobs import Job, JobQueue
from .outage import OutageGate
from .outbox import Outbox
from .outcomes import Outcomes
from .pacing import Pacer
from .retry import RetryPolicy, is_retryable_status

__all__ = ["DeliveryEngine", "Destination", "default_max_in_flight"]

logger = logging.getLogger("audit_instrument")

_monotonic = time.monotonic
_getpid = os.getpid
_engines: weakref.WeakSet[DeliveryEngine] = weakref.WeakSet()
_thread_numbers = itertools.count()


class DeliveryEngine:
    """Deliver events to ``destination`` in the background, paced, with retries.

    ``requests_per_second`` paces requests (``None``: no limit); ``burst``
    is how many an idle engine may send at once (default: 2 % of the rate).
    ``max_in_flight`` caps concurrent requests (default
    :func:`default_max_in_flight`). At most ``queue_size`` events wait in
    memory; when full, ``when_full="block"`` waits up to ``block_timeout``
    seconds for room then drops, ``"drop"`` drops at once (counted in
    :attr:`dropped`, reported on ``signals.event_dropped`` and to the
    handle) — with an ``outbox`` the rest waits on disk instead. ``retry``
    sets backoff and the per-event deadline. ``atexit_timeout`` bounds the
    flush at exit.

    ``destination`` is a :class:`~.http.Destination` whose requests go to
    ``base_url``, or, with ``channel`` (a factory of :class:`~.channel.Channel`,
    called on first send and in a forked child), any object the outcomes are
    reported for; ``where`` names it in logs. Each send carries up to
    ``batch_size`` events (1 over HTTP).
    """

    def __init__(
        self,
        destination: object,
        *,
        base_url: str | None = None,
        channel: Callable[[], Channel] | None = None,
        where: str | None = None,
        batch_size: int = 1,
        timeout: float = 10.0,
        requests_per_second: float | None = None,
        burst: int | None = None,
        max_in_flight: int | None = None,
        queue_size: int = 10_000,
        when_full: Literal["block", "drop"] = "block",
        block_timeout: float = 0.1,
        retry: RetryPolicy | None = None,
        outbox: Outbox | None = None,
        atexit_timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        check_options(requests_per_second=requests_per_second, max_in_flight=max_in_flight,
                      burst=burst, batch_size=batch_size, queue_size=queue_size,
                      when_full=when_full,
                      seconds={"timeout": timeout, "block_timeout": block_timeout,
                               "atexit_timeout": atexit_timeout,
                               "poll_interval": poll_interval})
        self.destination = destination
        self.base_url = None if base_url is None else route(base_url).base_url
        if channel is None and self.base_url is not None and batch_size == 1:
            channel = partial(HttpChannel, cast(Destination, destination), self.base_url,
                              timeout=timeout, transport=transport)
        elif channel is None or self.base_url is not None:
            raise AuditConfigError("DeliveryEngine needs base_url= (HTTP, one event per "
                                   "request) or channel= (any batch_size): exactly one")
        self._open_channel: Callable[[], Channel] = channel
        self.where = where or self.base_url or repr(destination)
        self.batch_size = batch_size
        self.timeout = timeout
        self.requests_per_second = requests_per_second
        self.burst = burst
        self.max_in_flight = (max_in_flight if max_in_flight is not None
                              else default_max_in_flight(requests_per_second))
        self.queue_size = queue_size
        self.when_full = when_full
        self.block_timeout = block_timeout
        self.retry = retry or RetryPolicy()
        self.outbox = outbox
        self.atexit_timeout = atexit_timeout
        self.poll_interval = poll_interval
        self._backlog: Backlog = (
            MemoryBacklog() if outbox is None else
            OutboxBacklog(outbox, lease=self.retry.deadline + 60.0, on_lost=self._lost))
        self._atexit_registered = False
        self._setup()
        _engines.add(self)

    # -- per-process state ---------------------------------------------------------------
    def _setup(self) -> None:
        """(Re)create everything that must not cross a fork: locks, queue, threads, client."""
        self._pid = _getpid()
        self._jobs = JobQueue(self.queue_size)
        self._lock = self._jobs.lock
        self._work = self._jobs.work  # workers wait here for jobs
        self._stopped = threading.Event()  # interrupts pacing waits at shutdown
        self._workers = 0  # worker threads running
        self._threads: list[threading.Thread] = []
        self._client: Channel | None = None
        self._stopping = False
        self._closed = False
        self._refilling = False
        self._refills = 0  # refills started (flush counts memory and disk between two)
        self._next_refill = 0.0
        self._in_flight = InFlight(self.max_in_flight)
        self._pacer = Pacer(self.requests_per_second, burst=self.burst,
                            store=self._backlog.pace_store(),
                            horizon=self.retry.max_backoff + 1.0)
        self._gate = OutageGate(self.retry, self.where, on_resume=self._wake_all)
        self._outcomes = Outcomes(self.destination, self.retry, self._backlog, self._jobs)

    def _after_fork(self) -> None:
        # The parent's queue, threads and connections belong to the parent: the
        # child starts empty and builds its own on first use.
        self._setup()
        self._backlog.after_fork()

    def _check_pid(self) -> None:
        if self._pid != _getpid():  # a fork that skipped os.register_at_fork hooks
            self._after_fork()

    @property
    def delivered(self) -> int:
        """Events the destination accepted."""
        return self._jobs.delivered

    @property
    def failed(self) -> int:
        """Events given up on (refused, or out of time, or lost with the backlog)."""
        return self._jobs.failed

    @property
    def dropped(self) -> int:
        """Events dropped before delivery (queue full, shut down)."""
        return self._jobs.dropped

    @property
    def rate(self) -> float | None:
        """Requests/s the engine paces to now (lower than configured after 429s)."""
        return self._pacer.rate

    @property
    def in_flight_target(self) -> int:
        """How many requests the engine keeps in flight now (rate * latency, capped)."""
        return self._in_flight.target(self._pacer.rate)

    def _ensure_started(self) -> None:
        if self._workers:
            return
        with self._lock:
            if self._workers or self._closed:
                return
            self._spawn()
            if not self._atexit_registered:
                self._atexit_registered = True
                atexit.register(_flush_at_exit, weakref.ref(self))

    def _spawn(self) -> None:
        """Start one more worker (with the lock held)."""
        if self._client is None:
            self._client = self._open_channel()
        # A fresh, empty context: the engine's own work never carries the
        # caller's audit actor, so it cannot produce audit events.
        thread = threading.Thread(target=contextvars.Context().run, args=(self._run,),
                                  name=f"audit-instrument-delivery-{next(_thread_numbers)}",
                                  daemon=True)
        self._workers += 1
        self._threads = [t for t in self._threads if t.is_alive()]
        self._threads.append(thread)
        thread.start()

    def _wake_all(self) -> None:
        with self._lock:
            self._jobs.work.notify_all()

    # -- the caller's side -------------------------------------------------------------------
    def submit(self, event: AuditEvent) -> DeliveryHandle:
        """Queue ``event`` for delivery and return its handle at once.

        Never raises for delivery problems: a full queue, a closed engine or
        an outbox that cannot be written settle the handle with
        :class:`DeliveryError` (and report on the signals).
        """
        if self._pid != _getpid():
            self._after_fork()
        handle = DeliveryHandle(event)
        if self._closed:
            self._outcomes.dropped(event, handle, "shut down")
            return handle
        self._admit([Job(event, handle, _monotonic() + self.retry.deadline)])
        return handle

    def submit_many(self, events: Iterable[AuditEvent]) -> list[DeliveryHandle]:
        """Queue several events at once and return their handles, in order.

        With an outbox they are written together: one transaction instead of
        one per event, for bulk producers (imports, replays, batch jobs).
        """
        self._check_pid()
        handles = [DeliveryHandle(event) for event in events]
        if self._closed:
            for handle in handles:
                self._outcomes.dropped(handle.event, handle, "shut down")
            return handles
        if handles:
            deadline = _monotonic() + self.retry.deadline
            self._admit([Job(handle.event, handle, deadline) for handle in handles])
        return handles

    def _admit(self, jobs: Sequence[Job]) -> None:
        """Hand ``jobs`` to the backlog; queue in memory what it gives back."""
        blocks = self.when_full == "block" and not self._backlog.durable
        room = self._jobs.reserve(len(jobs), self.block_timeout if blocks else 0.0)
        try:
            queued, dropped = self._backlog.accept(jobs, room)
        except DeliveryError as error:
            self._jobs.put((), room)
            note_failure("outbox write", f"{len(jobs)} event(s) ({jobs[0].event.action}) not "
                         f"written to the outbox: {error}", error=error)
            for job in jobs:
                self._outcomes.gave_up(job.event, job.handle, error)
            return
        self._jobs.put(queued, room)
        if dropped:
            self._jobs.count(dropped=len(dropped))
            for job in dropped:
                self._outcomes.dropped(job.event, job.handle, "queue full")
        if not self._workers:
            self._ensure_started()

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every queued event is settled, at most ``timeout`` seconds.

        Returns how many are still undelivered (``0`` when all are done).
        With an outbox this includes events pending on disk that this
        process could claim.
        """
        self._check_pid()
        deadline = None if timeout is None else _monotonic() + timeout
        jobs = self._jobs
        while True:
            with self._lock:
                # (a refill in progress holds rows claimed from disk but not yet queued)
                while (jobs.pending or self._refilling) and not self._closed:
                    left = None if deadline is None else deadline - _monotonic()
                    if left is not None and left <= 0:
                        break
                    jobs.changed.wait(left)
                pending = jobs.pending
                refills = self._refills
            left = None if deadline is None else max(0.0, deadline - _monotonic())
            if self._closed:
                return pending
            self._backlog.sync(left)  # written events are counted below
            outside = self._backlog.waiting()
            with self._lock:
                moved = self._refills != refills or self._refilling
            if moved and left != 0.0:  # rows moved from disk to memory while counting
                continue
            if (pending == 0 and outside == 0) or left == 0.0:
                return pending + outside
            if pending == 0:  # events wait outside memory: make a worker claim them now
                self._ensure_started()
                with self._lock:
                    self._next_refill = 0.0
                    jobs.work.notify()
                    jobs.changed.wait(0.05 if left is None else min(left, 0.05))

    def shutdown(self, timeout: float | None = None) -> int:
        """Flush for at most ``timeout`` seconds, then stop the threads and close.

        Events still undelivered are dropped (``signals.event_dropped``,
        reason ``"shutdown"``) — or, with an outbox, left pending on disk for
        the next start. Waits (backoff, pacing, pauses) are interrupted at
        once. Returns how many events were not delivered.
        """
        self._check_pid()
        start = _monotonic()
        if self._workers:
            remaining = self.flush(timeout)
        else:
            remaining = self._jobs.pending + (0 if self._closed else self._backlog.waiting())
        with self._lock:
            if self._closed:
                return remaining
            self._stopping = self._closed = True
            self._stopped.set()
            leftovers = self._jobs.take_all_waiting()
        for job in leftovers:
            self._outcomes.abandoned(job, "shutdown")
        for thread in self._threads:
            thread.join(None if timeout is None else max(0.0, start + timeout - _monotonic()))
        for job in self._jobs.take_in_flight():  # requests still hanging after the deadline
            self._outcomes.abandoned(job, "shutdown")
        client = self._client
        if client is not None:
            try:
                client.close()
            except Exception as exc:
                note_failure("http close", f"closing the client of {self.where} failed",
                             error=exc, level=logging.DEBUG)
        self._backlog.close()
        return remaining

    # -- the workers' side -----------------------------------------------------------------
    def _run(self) -> None:
        """A worker: take jobs, wait for its turn, send them; never dies of an exception."""
        while True:
            batch: list[Job] = []
            try:
                batch = self._take()
                if not batch:
                    client = self._client
                    if client is not None:
                        client.thread_done()
                    return
                if not self._pacer.wait_turn(self._stopped):
                    for job in self._jobs.land(batch):
                        self._jobs.finish()
                        self._outcomes.abandoned(job, "shutdown")
                    continue
                client = self._client
                assert client is not None
                self._attempt(client, batch)
            except Exception as exc:
                note_failure("delivery worker", f"delivery worker error (it carries on): "
                             f"{exc!r}", error=exc)
                for job in batch:
                    self._salvage(job, exc)
                self._stopped.wait(0.05)  # no hot loop if the error repeats

    def _salvage(self, job: Job, exc: Exception) -> None:
        """After an unexpected error: fail ``job`` if nothing else settled it."""
        if self._jobs.is_in_flight(job) and self._jobs.landed(job):
            self._outcomes.failed(job, DeliveryError(f"cannot send event: {exc!r}"), dead=False)

    def _take(self) -> list[Job]:
        """Up to ``batch_size`` jobs to send now; none when this worker should stop."""
        jobs = self._jobs
        with self._lock:
            while True:
                if self._stopping:
                    self._workers -= 1
                    return []
                pause = self._gate.paused_for()
                if pause > 0:  # the server is down: wait, then probe again
                    jobs.wait_for_work(pause)
                    continue
                target = self._in_flight.target(self._pacer.rate)
                if self._workers > target:  # more hands than the rate needs
                    self._workers -= 1
                    return []
                now = _monotonic()
                batch = jobs.pop_due(now, self.batch_size)
                if batch:
                    if jobs.ready and not jobs.idle and self._workers < target:
                        self._spawn()  # more work than hands, and room for another
                    return batch
                wait = jobs.next_due_in(now)
                if self._backlog.durable and not self._refilling:
                    if now >= self._next_refill and jobs.pending < jobs.capacity:
                        self._refill()
                        continue
                    until_refill = max(0.0, self._next_refill - now)
                    wait = until_refill if wait is None else min(wait, until_refill)
                jobs.wait_for_work(wait)

    def _refill(self) -> None:
        """Take jobs from outside memory (called with the lock held, releases it)."""
        self._refilling = True
        self._refills += 1
        limit = min(self._jobs.capacity - self._jobs.pending, 1000)
        self._lock.release()
        try:
            claimed = self._backlog.refill(limit, _monotonic() + self.retry.deadline)
        finally:
            self._lock.acquire()
            self._refilling = False
        self._next_refill = _monotonic() + (0.0 if len(claimed) >= limit else self.poll_interval)
        self._jobs.add_claimed(claimed)

    def _attempt(self, client: Channel, batch: list[Job]) -> None:
        for job in batch:
            job.attempts += 1
        sent_at = time.time()
        started = _monotonic()
        try:
            response = client.send([job.event for job in batch])
        except NoAnswerError as exc:  # timeouts, refused, reset, protocol errors
            self._in_flight.observe(_monotonic() - started)
            batch = self._jobs.land(batch)
            if batch:
                self._gate.failed(None)
                self._retry_later(batch, DeliveryError(f"{exc.kind}: {exc}", retryable=True),
                                  None)
            return
        except Exception as exc:  # a bug (ours, the destination's, a transport's)
            batch = self._jobs.land(batch)
            for job in batch:
                if self._stopping:
                    self._jobs.finish()
                    self._outcomes.abandoned(job, "shutdown")
                    continue
                note_failure("delivery request", f"cannot send event {job.event.action}: "
                             f"{exc!r}", error=exc)
                self._outcomes.failed(job, DeliveryError(f"cannot send event: {exc!r}"),
                                      dead=False)
            return
        self._in_flight.observe(_monotonic() - started)
        batch = self._jobs.land(batch)
        if not batch:
            return
        status = response.status
        if 200 <= status < 300:
            self._gate.answered()
            for job in batch:
                self._outcomes.delivered(job)
        elif is_retryable_status(status):
            error = DeliveryError(f"HTTP {status}: {client.error_message(response)}",
                                  status=status, retryable=True)
            wait = self.retry.server_wait(response.headers.get("retry-after"))
            if status == 429:  # the server is up, and we are too fast
                self._gate.answered()
                self._pacer.throttled(wait, sent_at)
            else:
                self._gate.failed(wait)
            self._retry_later(batch, error, wait)
        else:
            self._gate.answered()
            message = client.error_message(response)
            for job in batch:
                self._outcomes.failed(job, DeliveryError(
                    f"rejected with HTTP {status}: {message}", status=status, retryable=False),
                    dead=True)

    def _retry_later(self, batch: list[Job], error: DeliveryError, wait: float | None) -> None:
        """Send ``batch`` again after ``wait`` (else a backoff), together."""
        delay = wait if wait is not None else self.retry.backoff(
            max(job.attempts for job in batch))
        due = _monotonic() + delay
        logger.debug("audit_instrument: attempt %d for event %s failed (%s); retrying in %.2fs",
                     batch[0].attempts, batch[0].event.action, error, delay)
        for job in batch:
            job.last_error = error
            if due > job.deadline:
                self._outcomes.expired(job, error)
            elif not self._jobs.retry_at(job, due, self._stopping):
                self._jobs.finish()
                self._outcomes.abandoned(job, "shutdown")

    def _lost(self, event: AuditEvent, handle: DeliveryHandle | None,
              error: DeliveryError) -> None:
        self._outcomes.lost(event, handle, error)

    def __repr__(self) -> str:
        return (f"<DeliveryEngine {self.where} pending={self._jobs.pending} "
                f"delivered={self.delivered} failed={self.failed} dropped={self.dropped}>")


def _flush_at_exit(ref: weakref.ref[DeliveryEngine]) -> None:
    engine = ref()
    if engine is None or engine._closed or engine._pid != _getpid():
        return
    remaining = engine.shutdown(engine.atexit_timeout)
    if remaining:
        where = ("left pending in the outbox for the next start" if engine.outbox is not None
                 else "lost")
        logger.warning("audit_instrument: %d event(s) not delivered to %s at exit "
                       "(waited %.1fs; %s)", remaining, engine.where,
                       engine.atexit_timeout, where)


def _reinit_after_fork() -> None:
    for engine in list(_engines):
        engine._after_fork()


os.register_at_fork(after_in_child=_reinit_after_fork)
