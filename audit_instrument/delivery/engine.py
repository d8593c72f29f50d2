"""The delivery engine: paced worker threads send events from a backlog, with retries.

Any HTTP destination plugs in through :class:`Destination` (it builds the
request for an event and reads the server's error message). The engine
owns what happens around the request:

* **where work comes from** — a :mod:`backlog <.backlog>`: in memory, or
  the durable outbox; the events being worked on are held here (ready,
  in flight, waiting to retry);
* **pacing** (:mod:`.pacing`) — at most ``requests_per_second``, slowing
  down on 429; the number of worker threads follows the rate and the
  latency observed (Little's law: in flight = rate * latency), up to
  ``max_in_flight``;
* **outages** (:mod:`.outage`) — a server that is down is probed, not hammered;
* retries with capped, jittered backoff and a per-event deadline; signals
  on the return path; a bounded flush at exit; fresh state after ``fork()``.

The caller's cost is a handle and a queue append under a lock (with an
outbox in ``commit`` mode, also the wait for the group commit); no network
I/O. Requests go through one shared httpx transport (:mod:`.http`).

>>> engine = DeliveryEngine(my_destination, base_url="https://api.workos.com")  # doctest: +SKIP
>>> engine.submit(event).result(timeout=5)                                     # doctest: +SKIP
"""

from __future__ import annotations

import atexit
import collections
import contextvars
import heapq
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol

import httpx

from .. import signals
from .._stats import note_failure
from ..errors import AuditConfigError, DeliveryError
from ..event import AuditEvent
from .backlog import Backlog, Job, MemoryBacklog, OutboxBacklog
from .handle import DeliveryHandle
from .http import Answer, NoAnswerError, Poster, make_poster, route
from .outage import OutageGate
from .outbox import Outbox
from .pacing import Pacer
from .retry import RetryPolicy, is_retryable_status

__all__ = ["DeliveryEngine", "Destination", "default_max_in_flight"]

logger = logging.getLogger("audit_instrument")

_monotonic = time.monotonic
_getpid = os.getpid
_LATENCY_GUESS = 0.1  # seconds per request assumed before any was measured
_LATENCY_WINDOW = 10.0  # seconds over which the lowest request time is remembered
_HEADROOM = 1.5  # workers beyond rate * latency, so jitter doesn't cost rate
_engines: weakref.WeakSet[DeliveryEngine] = weakref.WeakSet()
_thread_numbers = itertools.count()


def default_max_in_flight(requests_per_second: float | None) -> int:
    """The default cap on requests in flight: enough for the rate at 200 ms of latency.

    (8 to 256; 16 without a rate.) It is a cap: fewer threads run while the
    latency is lower.
    """
    if requests_per_second is None:
        return 16
    return max(8, min(256, math.ceil(requests_per_second * 0.2)))


class Destination(Protocol):
    """What the engine needs from an HTTP sender (e.g. :class:`~audit_instrument.WorkOS`)."""

    def request_parts(self, event: AuditEvent) -> tuple[str, bytes, Mapping[str, str]]:
        """``(path, body, headers)`` of the POST that delivers ``event``."""
        ...

    def error_message(self, response: Answer) -> str:
        """The server's explanation of a failed answer, for errors and dead letters."""
        ...


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
    """

    def __init__(
        self,
        destination: Destination,
        *,
        base_url: str,
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
        if requests_per_second is not None and (
                isinstance(requests_per_second, bool)
                or not isinstance(requests_per_second, (int, float))
                or not 0 < requests_per_second < math.inf):
            raise AuditConfigError(f"requests_per_second must be a number > 0 (or None), "
                                   f"not {requests_per_second!r}")
        for name, count in (("max_in_flight", max_in_flight), ("burst", burst)):
            if count is not None and (not isinstance(count, int) or count < 1):
                raise AuditConfigError(f"{name} must be an int >= 1, not {count!r}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise AuditConfigError(f"queue_size must be an int >= 1, not {queue_size!r}")
        if when_full not in ("block", "drop"):
            raise AuditConfigError(f"when_full must be 'block' or 'drop', not {when_full!r}")
        for name, value in (("timeout", timeout), ("block_timeout", block_timeout),
                            ("atexit_timeout", atexit_timeout), ("poll_interval", poll_interval)):
            if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
                raise AuditConfigError(f"{name} must be a number of seconds >= 0, not {value!r}")
        self.destination = destination
        self.base_url = route(base_url).base_url
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
        self._transport = transport
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
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # workers wait here for jobs
        self._changed = threading.Condition(self._lock)  # flush / blocked producers wait here
        self._stopped = threading.Event()  # interrupts pacing waits at shutdown
        self._ready: collections.deque[Job] = collections.deque()
        self._delayed: list[tuple[float, int, Job]] = []
        self._in_flight: set[Job] = set()
        self._seq = itertools.count()
        self._pending = 0  # jobs held in memory: ready + delayed + in flight
        self._idle = 0  # workers waiting for work
        self._workers = 0  # worker threads running
        self._threads: list[threading.Thread] = []
        self._client: Poster | None = None
        self._stopping = False
        self._closed = False
        self._refilling = False
        self._next_refill = 0.0
        self._latency = _LATENCY_GUESS  # lowest request time lately (see _observe)
        self._latency_at = 0.0
        self._pacer = Pacer(self.requests_per_second, burst=self.burst,
                            store=self._backlog.pace_store(),
                            horizon=self.retry.max_backoff + 1.0)
        self._gate = OutageGate(self.retry, self.base_url, on_resume=self._wake_all)
        self._target = self._in_flight_for(self._latency)
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def _after_fork(self) -> None:
        # The parent's queue, threads and connections belong to the parent: the
        # child starts empty and builds its own on first use.
        self._setup()
        self._backlog.after_fork()

    def _check_pid(self) -> None:
        if self._pid != _getpid():  # a fork that skipped os.register_at_fork hooks
            self._after_fork()

    @property
    def rate(self) -> float | None:
        """Requests/s the engine paces to now (lower than configured after 429s)."""
        return self._pacer.rate

    @property
    def in_flight_target(self) -> int:
        """How many requests the engine keeps in flight now (rate * latency, capped)."""
        return self._target

    def _in_flight_for(self, latency: float) -> int:
        rate = self._pacer.rate
        if rate is None:
            return self.max_in_flight
        return max(1, min(self.max_in_flight, math.ceil(rate * latency * _HEADROOM) + 1))

    def _observe(self, seconds: float) -> None:
        """A request took ``seconds``: update the latency estimate and the worker target.

        The estimate is the lowest request time of the last few seconds (as
        TCP BBR keeps its minimum round trip): the network's latency, not
        the time requests spent waiting for this process's CPU, which more
        workers would only lengthen.
        """
        now = _monotonic()
        if seconds <= self._latency or now - self._latency_at > _LATENCY_WINDOW:
            self._latency = seconds
            self._latency_at = now
            self._target = self._in_flight_for(seconds)

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
            self._client = make_poster(self.base_url, timeout=self.timeout,
                                       max_connections=self.max_in_flight,
                                       transport=self._transport)
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
            self._work.notify_all()

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
            self._drop(event, handle, "shut down")
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
                self._drop(handle.event, handle, "shut down")
            return handles
        if handles:
            deadline = _monotonic() + self.retry.deadline
            self._admit([Job(handle.event, handle, deadline) for handle in handles])
        return handles

    def _admit(self, jobs: Sequence[Job]) -> None:
        """Hand ``jobs`` to the backlog; queue in memory what it gives back."""
        count = len(jobs)
        with self._lock:
            room = self.queue_size - self._pending
            if room < count and self.when_full == "block" and not self._backlog.durable:
                room = self._wait_for_room(count)
            room = max(0, min(room, count))
            self._pending += room  # reserved while the backlog takes them in
        try:
            queued, dropped = self._backlog.accept(jobs, room)
        except DeliveryError as error:
            with self._lock:
                self._pending -= room
                self._changed.notify_all()
            note_failure("outbox write", f"{count} event(s) ({jobs[0].event.action}) not "
                         f"written to the outbox: {error}", error=error)
            for job in jobs:
                self._give_up(job.event, job.handle, error)
            return
        with self._lock:
            self._pending -= room - len(queued)
            if queued:
                self._ready.extend(queued)
                if self._idle:
                    self._work.notify(len(queued))
            self.dropped += len(dropped)
        for job in dropped:
            self._drop(job.event, job.handle, "queue full")
        if not self._workers:
            self._ensure_started()

    def _wait_for_room(self, count: int) -> int:
        # With the lock held: wait up to block_timeout for room for ``count`` jobs.
        deadline = _monotonic() + self.block_timeout
        while self._pending + count > self.queue_size and not self._closed:
            left = deadline - _monotonic()
            if left <= 0:
                break
            self._changed.wait(left)
        return self.queue_size - self._pending

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every queued event is settled, at most ``timeout`` seconds.

        Returns how many are still undelivered (``0`` when all are done).
        With an outbox this includes events pending on disk that this
        process could claim.
        """
        self._check_pid()
        deadline = None if timeout is None else _monotonic() + timeout
        while True:
            with self._lock:
                # (a refill in progress holds rows claimed from disk but not yet queued)
                while (self._pending or self._refilling) and not self._closed:
                    left = None if deadline is None else deadline - _monotonic()
                    if left is not None and left <= 0:
                        break
                    self._changed.wait(left)
                pending = self._pending
            left = None if deadline is None else max(0.0, deadline - _monotonic())
            if self._closed:
                return pending
            self._backlog.sync(left)  # written events are counted below
            outside = self._backlog.waiting()
            if (pending == 0 and outside == 0) or left == 0.0:
                return pending + outside
            if pending == 0:  # events wait outside memory: make a worker claim them now
                self._ensure_started()
                with self._lock:
                    self._next_refill = 0.0
                    self._work.notify()
                    self._changed.wait(0.05 if left is None else min(left, 0.05))

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
            remaining = self._pending + (0 if self._closed else self._backlog.waiting())
        with self._lock:
            if self._closed:
                return remaining
            self._stopping = self._closed = True
            self._stopped.set()
            leftovers = list(self._ready) + [entry[2] for entry in self._delayed]
            self._ready.clear()
            self._delayed.clear()
            self._pending -= len(leftovers)
            self._work.notify_all()
            self._changed.notify_all()
        for job in leftovers:
            self._abandon(job, "shutdown")
        for thread in self._threads:
            thread.join(None if timeout is None else max(0.0, start + timeout - _monotonic()))
        with self._lock:  # requests still hanging after the deadline: give up on them too
            stranded = list(self._in_flight)
            self._in_flight.clear()
            for job in stranded:
                job.abandoned = True
            self._pending -= len(stranded)
            self._changed.notify_all()
        for job in stranded:
            self._abandon(job, "shutdown")
        client = self._client
        if client is not None:
            try:
                client.close()
            except Exception as exc:
                note_failure("http close", "closing the HTTP client failed", error=exc,
                             level=logging.DEBUG)
        self._backlog.close()
        return remaining

    # -- the workers' side -----------------------------------------------------------------
    def _run(self) -> None:
        """A worker: take a job, wait for its turn, send it; never dies of an exception."""
        while True:
            job = None
            try:
                job = self._take()
                if job is None:
                    return
                if not self._pacer.wait_turn(self._stopped):
                    if self._landed(job):
                        self._release(job)
                        self._abandon(job, "shutdown")
                    continue
                client = self._client
                assert client is not None
                self._attempt(client, job)
            except Exception as exc:
                note_failure("delivery worker", f"delivery worker error (it carries on): "
                             f"{exc!r}", error=exc)
                if job is not None:
                    self._salvage(job, exc)
                self._stopped.wait(0.05)  # no hot loop if the error repeats

    def _salvage(self, job: Job, exc: Exception) -> None:
        """After an unexpected error: fail ``job`` if nothing else settled it."""
        with self._lock:
            mine = job in self._in_flight
        if mine and self._landed(job):
            self._finish_failed(job, DeliveryError(f"cannot send event: {exc!r}"), dead=False)

    def _take(self) -> Job | None:
        with self._lock:
            while True:
                if self._stopping:
                    self._workers -= 1
                    return None
                pause = self._gate.paused_for()
                if pause > 0:  # the server is down: wait, then probe again
                    self._wait_for_work(pause)
                    continue
                now = _monotonic()
                delayed = self._delayed
                if delayed and delayed[0][0] <= now:
                    job = heapq.heappop(delayed)[2]
                elif self._ready:
                    job = self._ready.popleft()
                else:
                    job = None
                if job is not None:
                    self._in_flight.add(job)
                    if self._ready and not self._idle and self._workers < self._target:
                        self._spawn()  # more work than hands, and room for another
                    return job
                if self._workers > self._target:  # more hands than the rate needs
                    self._workers -= 1
                    return None
                wait = delayed[0][0] - now if delayed else None
                if self._backlog.durable and not self._refilling:
                    if now >= self._next_refill and self._pending < self.queue_size:
                        self._refill()
                        continue
                    until_refill = max(0.0, self._next_refill - now)
                    wait = until_refill if wait is None else min(wait, until_refill)
                self._wait_for_work(wait)

    def _wait_for_work(self, timeout: float | None) -> None:
        # With the lock held, as an idle worker.
        self._idle += 1
        try:
            self._work.wait(None if timeout is None else min(timeout, 3600.0))
        finally:
            self._idle -= 1

    def _refill(self) -> None:
        """Take jobs from outside memory (called with the lock held, releases it)."""
        self._refilling = True
        limit = min(self.queue_size - self._pending, 1000)
        self._lock.release()
        try:
            jobs = self._backlog.refill(limit, _monotonic() + self.retry.deadline)
        finally:
            self._lock.acquire()
            self._refilling = False
        self._next_refill = _monotonic() + (0.0 if len(jobs) >= limit else self.poll_interval)
        self._ready.extend(jobs)
        self._pending += len(jobs)
        if jobs and self._idle:
            self._work.notify(len(jobs))
        self._changed.notify_all()

    def _attempt(self, client: Poster, job: Job) -> None:
        job.attempts += 1
        event = job.event
        sent_at = time.time()
        started = _monotonic()
        try:
            path, body, headers = self.destination.request_parts(event)
            response = client.post(path, body, headers)
        except NoAnswerError as exc:  # timeouts, refused, reset, protocol errors
            self._observe(_monotonic() - started)
            if not self._landed(job):
                return
            kind = "timed out" if exc.timeout else "connection failed"
            self._gate.failed(None)
            self._retry_later(job, DeliveryError(f"request {kind}: {exc}", retryable=True),
                              None)
            return
        except Exception as exc:  # a bug (ours, the destination's, a transport's)
            if not self._landed(job):
                return
            if self._stopping:
                self._release(job)
                self._abandon(job, "shutdown")
                return
            note_failure("delivery request", f"cannot send event {event.action}: {exc!r}",
                         error=exc)
            self._finish_failed(job, DeliveryError(f"cannot send event: {exc!r}"), dead=False)
            return
        self._observe(_monotonic() - started)
        if not self._landed(job):
            return
        status = response.status
        if 200 <= status < 300:
            self._gate.answered()
            self._finish_delivered(job)
        elif is_retryable_status(status):
            error = DeliveryError(f"HTTP {status}: {self.destination.error_message(response)}",
                                  status=status, retryable=True)
            wait = self.retry.server_wait(response.headers.get("retry-after"))
            if status == 429:  # the server is up, and we are too fast
                self._gate.answered()
                self._pacer.throttled(wait, sent_at)
            else:
                self._gate.failed(wait)
            self._retry_later(job, error, wait)
        else:
            self._gate.answered()
            message = self.destination.error_message(response)
            self._finish_failed(job, DeliveryError(
                f"rejected with HTTP {status}: {message}", status=status, retryable=False),
                dead=True)

    def _landed(self, job: Job) -> bool:
        """The request of ``job`` ended; ``False`` if shutdown already gave up on it."""
        with self._lock:
            self._in_flight.discard(job)
        return not job.abandoned

    def _retry_later(self, job: Job, error: DeliveryError, wait: float | None) -> None:
        job.last_error = error
        delay = wait if wait is not None else self.retry.backoff(job.attempts)
        due = _monotonic() + delay
        if due > job.deadline:
            self._expire(job, error)
            return
        logger.debug("audit_instrument: attempt %d for event %s failed (%s); retrying in %.2fs",
                     job.attempts, job.event.action, error, delay)
        with self._lock:
            abandon = self._stopping
            if not abandon:
                first = not self._delayed or due < self._delayed[0][0]
                heapq.heappush(self._delayed, (due, next(self._seq), job))
                if first and self._idle:
                    self._work.notify()
        if abandon:
            self._release(job)
            self._abandon(job, "shutdown")

    def _release(self, job: Job) -> None:
        with self._lock:
            self._pending -= 1
            self._changed.notify_all()

    def _expire(self, job: Job, error: DeliveryError) -> None:
        message = (f"not delivered within the {self.retry.deadline:g}s deadline after "
                   f"{job.attempts} attempt(s); last error: {error}")
        if self._backlog.keep(job, self.retry.max_backoff):  # not given up: retried later
            self._release(job)
            if job.handle is not None:
                job.handle.settle(DeliveryError(message + " (still pending in the outbox)",
                                                 status=error.status, retryable=True))
            return
        self._finish_failed(job, DeliveryError(message, status=error.status, retryable=True),
                            dead=False)

    def _finish_delivered(self, job: Job) -> None:
        self._backlog.delivered(job)
        with self._lock:
            self._pending -= 1
            self.delivered += 1
            self._changed.notify_all()
        if job.handle is not None:
            job.handle.settle(None)
        signals.report_delivered(job.event, self.destination)

    def _finish_failed(self, job: Job, error: DeliveryError, *, dead: bool) -> None:
        if dead:
            self._backlog.rejected(job, error)
        else:
            self._backlog.keep(job, self.retry.max_backoff)
        with self._lock:
            self._pending -= 1
            self.failed += 1
            self._changed.notify_all()
        logger.warning("audit_instrument: event %s (%s) not delivered: %s",
                       job.event.action, job.event.idempotency_key, error)
        self._give_up(job.event, job.handle, error)

    def _lost(self, event: AuditEvent, handle: DeliveryHandle | None,
              error: DeliveryError) -> None:
        """An event the backlog could not keep after its caller returned."""
        with self._lock:
            self.failed += 1
        self._give_up(event, handle, error)

    def _give_up(self, event: AuditEvent, handle: DeliveryHandle | None,
                 error: DeliveryError) -> None:
        if handle is not None:
            handle.settle(error)
        signals.report_failed(event, self.destination, error)

    def _abandon(self, job: Job, reason: str) -> None:
        """A job leaves memory undelivered because the engine stops."""
        if self._backlog.keep(job, 0.0):
            if job.handle is not None:
                job.handle.settle(DeliveryError(
                    f"engine {reason} before delivery (still pending in the outbox)",
                    retryable=True))
            return
        with self._lock:
            self.dropped += 1
        self._drop(job.event, job.handle, reason)

    def _drop(self, event: AuditEvent, handle: DeliveryHandle | None, reason: str) -> None:
        if handle is not None:
            handle.settle(DeliveryError(f"event dropped: {reason}", retryable=False))
        signals.report_dropped(event, self.destination, reason)

    def __repr__(self) -> str:
        return (f"<DeliveryEngine {self.base_url} pending={self._pending} "
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
                       "(waited %.1fs; %s)", remaining, engine.base_url,
                       engine.atexit_timeout, where)


def _reinit_after_fork() -> None:
    for engine in list(_engines):
        engine._after_fork()


os.register_at_fork(after_in_child=_reinit_after_fork)
