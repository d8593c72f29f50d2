"""The delivery engine: a bounded queue drained by background threads over one connection pool.

Any HTTP destination plugs in through :class:`Destination` (it builds the
request for an event and reads the server's error message); the engine owns
queueing, concurrency, retries, deadlines, signals, exit and fork handling.

Concurrency model, chosen by measurement (``benchmarks/bench_delivery.py``):
a few worker threads share one keep-alive connection pool
(:mod:`.http`). On this project's machine a sync httpx pool driven from
threads delivered 2-3x the requests/s of :class:`httpx.AsyncClient` in one
loop thread, and the gap widened with more requests in flight; within the
threaded model, CPU per request bounds the rate, so the default pool is a
lean ``http.client`` one and any httpx transport can be plugged in.

The caller's cost is validation, a handle and a deque append under a lock; no
network I/O. With an :class:`~audit_instrument.delivery.outbox.Outbox` the
event is also committed to SQLite (group commit) before ``submit`` returns,
and the in-memory queue holds only what is being worked on: the rest waits
on disk.

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
import os
import random
import threading
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Literal, Protocol

import httpx

from .. import signals
from ..errors import AuditConfigError, AuditError, DeliveryError
from ..event import AuditEvent
from .handle import DeliveryHandle
from .http import Answer, NoAnswerError, Poster, make_poster
from .retry import RetryPolicy, is_retryable_status, parse_retry_after

if TYPE_CHECKING:
    from .outbox import Outbox

__all__ = ["DeliveryEngine", "Destination"]

logger = logging.getLogger("audit_instrument")

_monotonic = time.monotonic
_getpid = os.getpid
_random = random.random
# Retryable failures in a row, with no answer from the server in between, that
# mean it is down (or refusing us): every worker then pauses instead of each
# event retrying on its own, which burned a core against a dead port.
_OUTAGE_FAILURES = 4
_engines: weakref.WeakSet[DeliveryEngine] = weakref.WeakSet()


class Destination(Protocol):
    """What the engine needs from an HTTP sender (e.g. :class:`~audit_instrument.WorkOS`)."""

    def request_parts(self, event: AuditEvent) -> tuple[str, bytes, Mapping[str, str]]:
        """``(path, body, headers)`` of the POST that delivers ``event``."""
        ...

    def error_message(self, response: Answer) -> str:
        """The server's explanation of a failed answer, for errors and dead letters."""
        ...


class _Item:
    __slots__ = ("abandoned", "attempts", "deadline", "event", "handle", "last_error")

    def __init__(self, event: AuditEvent, handle: DeliveryHandle | None, deadline: float) -> None:
        self.event = event
        self.handle = handle
        self.deadline = deadline
        self.attempts = 0
        self.abandoned = False  # shutdown gave up on it while its request was in flight
        self.last_error: DeliveryError | None = None


class DeliveryEngine:
    """Deliver events to ``destination`` in the background, with retries.

    ``max_in_flight`` worker threads (started on first use) share one pooled
    client. At most ``queue_size`` events wait in memory; when full,
    ``when_full="block"`` waits up to ``block_timeout`` seconds for room then
    drops, ``"drop"`` drops at once (counted in :attr:`dropped`, reported on
    ``signals.event_dropped`` and to the handle). ``retry`` sets backoff and
    the per-event deadline. ``atexit_timeout`` bounds the flush at exit.
    ``outbox`` makes delivery durable (see :mod:`.outbox`).
    """

    def __init__(
        self,
        destination: Destination,
        *,
        base_url: str,
        timeout: float = 10.0,
        max_in_flight: int = 4,
        queue_size: int = 10_000,
        when_full: Literal["block", "drop"] = "block",
        block_timeout: float = 0.1,
        retry: RetryPolicy | None = None,
        outbox: Outbox | None = None,
        atexit_timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        if not isinstance(max_in_flight, int) or max_in_flight < 1:
            raise AuditConfigError(f"max_in_flight must be an int >= 1, not {max_in_flight!r}")
        if not isinstance(queue_size, int) or queue_size < 1:
            raise AuditConfigError(f"queue_size must be an int >= 1, not {queue_size!r}")
        if when_full not in ("block", "drop"):
            raise AuditConfigError(f"when_full must be 'block' or 'drop', not {when_full!r}")
        for name, value in (("timeout", timeout), ("block_timeout", block_timeout),
                            ("atexit_timeout", atexit_timeout), ("poll_interval", poll_interval)):
            if not isinstance(value, (int, float)) or value < 0:
                raise AuditConfigError(f"{name} must be a number of seconds >= 0, not {value!r}")
        self.destination = destination
        self.base_url = base_url
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.queue_size = queue_size
        self.when_full = when_full
        self.block_timeout = block_timeout
        self.retry = retry or RetryPolicy()
        self.outbox = outbox
        self.atexit_timeout = atexit_timeout
        self.poll_interval = poll_interval
        self._transport = transport
        self._atexit_registered = False
        self._setup()
        _engines.add(self)

    # -- per-process state ---------------------------------------------------------------
    def _setup(self) -> None:
        """(Re)create everything that must not cross a fork: lock, queue, threads, client."""
        self._pid = _getpid()
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # workers wait here for items
        self._changed = threading.Condition(self._lock)  # flush / blocked producers wait here
        self._ready: collections.deque[_Item] = collections.deque()
        self._delayed: list[tuple[float, int, _Item]] = []
        self._in_flight: set[_Item] = set()
        self._seq = itertools.count()
        self._pending = 0  # items held in memory: ready + delayed + in flight
        self._idle = 0
        self._waking = 0  # notified workers that have not resumed yet
        self._threads: list[threading.Thread] = []
        self._client: Poster | None = None
        self._stopping = False
        self._closed = False
        self._refilling = False
        self._next_refill = 0.0
        self._failures = 0  # retryable failures in a row (see _OUTAGE_FAILURES)
        self._outages = 0  # pauses in a row: each one longer, up to retry.max_backoff
        self._paused_until = 0.0  # no new attempt before this (monotonic): the server is down
        self._pause_asked = False  # the pause is the server's Retry-After: it holds
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def _after_fork(self) -> None:
        # The parent's queue, threads and connections belong to the parent: the
        # child starts empty and builds its own on first use.
        self._setup()
        if self.outbox is not None:
            self.outbox._after_fork()

    def _check_pid(self) -> None:
        if self._pid != _getpid():  # a fork that skipped os.register_at_fork hooks
            self._after_fork()

    def _ensure_started(self) -> None:
        if self._threads:
            return
        with self._lock:
            if self._threads or self._closed:
                return
            self._client = make_poster(self.base_url, timeout=self.timeout,
                                       max_connections=self.max_in_flight,
                                       transport=self._transport)
            for number in range(self.max_in_flight):
                # A fresh, empty context: the engine's own work never carries
                # the caller's audit actor, so it cannot produce audit events.
                thread = threading.Thread(
                    target=contextvars.Context().run, args=(self._run,),
                    name=f"audit-instrument-delivery-{number}", daemon=True,
                )
                self._threads.append(thread)
                thread.start()
            if not self._atexit_registered:
                self._atexit_registered = True
                atexit.register(_flush_at_exit, weakref.ref(self))

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
        item = _Item(event, handle, _monotonic() + self.retry.deadline)
        if self.outbox is not None:
            self._submit_durable([item])
            return handle
        with self._lock:
            if self._pending >= self.queue_size and not self._wait_for_room():
                self.dropped += 1
                room = False
            else:
                room = True
                self._pending += 1
                self._ready.append(item)
                if self._idle and not self._waking:
                    self._wake_one()
        if not room:
            self._drop(event, handle, "queue full")
            return handle
        if not self._threads:
            self._ensure_started()
        return handle

    def _wake_one(self) -> None:
        # With the lock held. Callers wake at most one worker at a time and that
        # worker wakes the next if more is queued: a burst of submits costs the
        # callers one futex wake-up, not one each.
        self._waking += 1
        self._work.notify()

    def _wait_for_room(self) -> bool:
        # called with the lock held
        if self.when_full == "drop" or self.block_timeout <= 0:
            return False
        deadline = _monotonic() + self.block_timeout
        while self._pending >= self.queue_size:
            left = deadline - _monotonic()
            if left <= 0 or self._closed:
                return False
            self._changed.wait(left)
        return True

    def submit_many(self, events: Iterable[AuditEvent]) -> list[DeliveryHandle]:
        """Queue several events at once and return their handles, in order.

        With an outbox they are committed together: one transaction (two if
        only part fits the queue; the rest waits on disk) instead of one
        wait per event, for bulk producers (imports, replays, batch jobs).
        Each event is otherwise handled as by :meth:`submit`.
        """
        events = list(events)
        if self.outbox is None:
            return [self.submit(event) for event in events]
        self._check_pid()
        handles = [DeliveryHandle(event) for event in events]
        if self._closed:
            for event, handle in zip(events, handles, strict=True):
                self._drop(event, handle, "shut down")
            return handles
        deadline = _monotonic() + self.retry.deadline
        self._submit_durable([_Item(event, handle, deadline)
                              for event, handle in zip(events, handles, strict=True)])
        return handles

    def _submit_durable(self, items: list[_Item]) -> None:
        """Commit ``items`` to the outbox; those the queue has room for are also queued.

        The rest wait on disk (unowned) for a refill, settled by whoever sends them.
        """
        outbox = self.outbox
        assert outbox is not None
        room = max(0, self.queue_size - self._pending)
        kept, parked = items[:room], items[room:]
        lease = self.retry.deadline + 60.0
        for part, owned in ((kept, True), (parked, False)):
            if not part:
                continue
            if not owned:
                for item in part:
                    assert item.handle is not None
                    outbox.watch(item.handle)
            try:
                outbox.add_many([item.event for item in part], owned=owned, lease=lease)
            except AuditError as exc:
                error = exc if isinstance(exc, DeliveryError) else DeliveryError(str(exc))
                logger.error("audit_instrument: %d event(s) (%s) not written to the outbox: %s",
                             len(part), part[0].event.action, error)
                for item in part:
                    self._give_up(item, error)
                if owned:
                    kept = []
        if kept:
            with self._lock:
                self._pending += len(kept)
                self._ready.extend(kept)
                if self._idle and not self._waking:
                    self._wake_one()
        if not self._threads:
            self._ensure_started()

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
            on_disk = self._on_disk()
            left = None if deadline is None else max(0.0, deadline - _monotonic())
            if (pending == 0 and on_disk == 0) or self._closed or left == 0.0:
                if self.outbox is not None and not self._closed:
                    self.outbox.sync(left)
                return pending + on_disk
            if pending == 0:  # events wait on disk: make a worker claim them now
                self._ensure_started()
                with self._lock:
                    self._next_refill = 0.0
                    self._work.notify()
                    self._changed.wait(0.05 if left is None else min(left, 0.05))

    def _on_disk(self) -> int:
        if self.outbox is None or self._closed:
            return 0
        try:
            return self.outbox.claimable()
        except AuditError:
            return 0

    def shutdown(self, timeout: float | None = None) -> int:
        """Flush for at most ``timeout`` seconds, then stop the threads and close.

        Events still undelivered are dropped (``signals.event_dropped``,
        reason ``"shutdown"``) — or, with an outbox, left pending on disk for
        the next start. Backoff waits are interrupted at once. Returns how
        many events were not delivered.
        """
        self._check_pid()
        start = _monotonic()
        remaining = self.flush(timeout) if self._threads else self._pending + self._on_disk()
        with self._lock:
            if self._closed:
                return remaining
            self._stopping = self._closed = True
            leftovers = list(self._ready) + [entry[2] for entry in self._delayed]
            self._ready.clear()
            self._delayed.clear()
            self._pending -= len(leftovers)
            self._work.notify_all()
            self._changed.notify_all()
        for item in leftovers:
            self._abandon(item, "shutdown")
        for thread in self._threads:
            thread.join(None if timeout is None else max(0.0, start + timeout - _monotonic()))
        with self._lock:  # requests still hanging after the deadline: give up on them too
            stranded = list(self._in_flight)
            self._in_flight.clear()
            for item in stranded:
                item.abandoned = True
            self._pending -= len(stranded)
            self._changed.notify_all()
        for item in stranded:
            self._abandon(item, "shutdown")
        client = self._client
        if client is not None:
            try:
                client.close()  # also aborts requests still in flight on a hung server
            except Exception:
                logger.debug("audit_instrument: closing the HTTP client failed", exc_info=True)
        if self.outbox is not None:
            self.outbox.close()
        return remaining

    # -- the workers' side -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            item = self._take()
            if item is None:
                return
            client = self._client
            if client is None:
                return
            self._attempt(client, item)

    def _take(self) -> _Item | None:
        with self._lock:
            while True:
                if self._stopping:
                    return None
                now = _monotonic()
                if now < self._paused_until:  # the server is down: wait, then probe again
                    self._wait_for_work(self._paused_until - now)
                    continue
                delayed = self._delayed
                if delayed and delayed[0][0] <= now:
                    item = heapq.heappop(delayed)[2]
                    self._in_flight.add(item)
                    return item
                if self._ready:
                    item = self._ready.popleft()
                    self._in_flight.add(item)
                    if self._ready and self._idle and not self._waking:
                        self._wake_one()  # pass the wake-up on: callers only wake one
                    return item
                wait = delayed[0][0] - now if delayed else None
                if self.outbox is not None and not self._refilling:
                    if now >= self._next_refill and self._pending < self.queue_size:
                        self._refill()
                        continue
                    until_refill = max(0.0, self._next_refill - now)
                    wait = until_refill if wait is None else min(wait, until_refill)
                self._wait_for_work(wait)

    def _wait_for_work(self, timeout: float | None) -> None:
        # With the lock held, as an idle worker.
        self._idle += 1
        self._work.wait(timeout)
        # Count down on any return, notified or timed out: undercounting only
        # costs a spare wake-up later, overcounting would leave work asleep.
        if self._waking:
            self._waking -= 1
        self._idle -= 1

    def _server_failed(self, retry_after: float | None) -> None:
        """A retryable failure. After several in a row, or when the server sets
        ``Retry-After``, all workers pause; the first attempts after the pause
        probe the server, and each failed probe doubles the next pause."""
        with self._lock:
            self._failures += 1
            if retry_after is None:
                if self._failures < _OUTAGE_FAILURES or _monotonic() < self._paused_until:
                    return
                self._outages += 1
                retry = self.retry
                ceiling = min(retry.max_backoff,
                              retry.initial_backoff * 2.0 ** min(self._outages - 1, 62))
                pause = ceiling * (0.5 + 0.5 * _random())
            else:
                pause = retry_after
                self._pause_asked = True
            self._paused_until = max(self._paused_until, _monotonic() + pause)
        if retry_after is None and self._outages == 1:
            logger.warning("audit_instrument: %s is not answering; deliveries pause, then "
                           "probe it with growing waits (events wait, none is dropped)",
                           self.base_url)

    def _server_answered(self) -> None:
        """The server answered (accepted or refused an event): it is up.

        Ends a pause of ours, not one the server asked for with Retry-After
        (an answer to a request sent before it does not lift that)."""
        if self._failures or self._paused_until:
            with self._lock:
                recovered = self._outages > 0
                self._failures = self._outages = 0
                if not self._pause_asked or _monotonic() >= self._paused_until:
                    self._paused_until = 0.0
                    self._pause_asked = False
                    self._work.notify_all()
            if recovered:
                logger.info("audit_instrument: %s answers again; deliveries resume",
                            self.base_url)

    def _refill(self) -> None:
        """Claim pending events from the outbox (called with the lock held, releases it)."""
        outbox = self.outbox
        assert outbox is not None
        self._refilling = True
        limit = self.queue_size - self._pending
        self._lock.release()
        try:
            claimed = outbox.claim(min(limit, 1000), lease=self.retry.deadline + 60.0)
        except AuditError as exc:
            logger.error("audit_instrument: cannot read the outbox: %s", exc)
            claimed = []
        finally:
            self._lock.acquire()
            self._refilling = False
        self._next_refill = _monotonic() + (0.0 if len(claimed) >= min(limit, 1000) else
                                            self.poll_interval)
        deadline = _monotonic() + self.retry.deadline
        for event, handle in claimed:
            self._ready.append(_Item(event, handle, deadline))
        self._pending += len(claimed)
        if claimed and self._idle:
            self._work.notify(len(claimed))
        self._changed.notify_all()

    def _attempt(self, client: Poster, item: _Item) -> None:
        item.attempts += 1
        event = item.event
        try:
            path, body, headers = self.destination.request_parts(event)
            response = client.post(path, body, headers)
        except NoAnswerError as exc:  # timeouts, refused, reset, protocol errors
            if not self._landed(item):
                return
            kind = "timed out" if exc.timeout else "connection failed"
            self._server_failed(None)
            self._retry_later(item, DeliveryError(f"request {kind}: {exc}", retryable=True),
                              None)
            return
        except Exception as exc:  # a bug must not kill the worker
            if not self._landed(item):
                return
            if self._stopping:
                self._release(item)
                self._abandon(item, "shutdown")
                return
            logger.exception("audit_instrument: cannot send event %s", event.action)
            self._finish_failed(item, DeliveryError(f"cannot send event: {exc!r}"), dead=False)
            return
        if not self._landed(item):
            return
        status = response.status
        if 200 <= status < 300:
            self._server_answered()
            self._finish_delivered(item)
        elif is_retryable_status(status):
            error = DeliveryError(f"HTTP {status}: {self.destination.error_message(response)}",
                                  status=status, retryable=True)
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            self._server_failed(retry_after)
            self._retry_later(item, error, retry_after)
        else:
            self._server_answered()
            message = self.destination.error_message(response)
            self._finish_failed(item, DeliveryError(
                f"rejected with HTTP {status}: {message}", status=status, retryable=False),
                dead=True)

    def _record(self, what: str, *args: object, **kwargs: object) -> None:
        """Tell the outbox an outcome; a closed or failing outbox is logged, not raised
        (the event stays pending on disk and is sent again, with the same key)."""
        assert self.outbox is not None
        try:
            getattr(self.outbox, what)(*args, **kwargs)
        except AuditError as exc:
            logger.warning("audit_instrument: outbox %s not recorded: %s", what, exc)

    def _landed(self, item: _Item) -> bool:
        """The request of ``item`` ended; ``False`` if shutdown already gave up on it."""
        with self._lock:
            self._in_flight.discard(item)
        return not item.abandoned

    def _retry_later(self, item: _Item, error: DeliveryError, retry_after: float | None) -> None:
        item.last_error = error
        delay = retry_after if retry_after is not None else self.retry.backoff(item.attempts)
        due = _monotonic() + delay
        if self._stopping:
            self._release(item)
            self._abandon(item, "shutdown")
            return
        if due > item.deadline:
            self._expire(item, error)
            return
        logger.debug("audit_instrument: attempt %d for event %s failed (%s); retrying in %.2fs",
                     item.attempts, item.event.action, error, delay)
        with self._lock:
            if self._stopping:
                abandon = True
            else:
                abandon = False
                first = not self._delayed or due < self._delayed[0][0]
                heapq.heappush(self._delayed, (due, next(self._seq), item))
                if first and self._idle:
                    self._work.notify()
        if abandon:
            self._release(item)
            self._abandon(item, "shutdown")

    def _release(self, item: _Item) -> None:
        with self._lock:
            self._pending -= 1
            self._changed.notify_all()

    def _expire(self, item: _Item, error: DeliveryError) -> None:
        message = (f"not delivered within the {self.retry.deadline:g}s deadline after "
                   f"{item.attempts} attempt(s); last error: {error}")
        if self.outbox is not None:
            # Durable: not given up, only handed back to the outbox for a later retry.
            self._record("release", item.event.idempotency_key, retry_in=self.retry.max_backoff)
            self._release(item)
            if item.handle is not None:
                item.handle._settle(DeliveryError(message + " (still pending in the outbox)",
                                                  status=error.status, retryable=True))
            return
        self._finish_failed(item, DeliveryError(message, status=error.status, retryable=True),
                            dead=False)

    def _finish_delivered(self, item: _Item) -> None:
        if self.outbox is not None:
            self._record("delivered", item.event.idempotency_key)
        with self._lock:
            self._pending -= 1
            self.delivered += 1
            self._changed.notify_all()
        if item.handle is not None:
            item.handle._settle(None)
        signals.report_delivered(item.event, self.destination)

    def _finish_failed(self, item: _Item, error: DeliveryError, *, dead: bool) -> None:
        if self.outbox is not None:
            if dead:
                self._record("dead", item.event.idempotency_key, error.status, str(error))
            else:
                self._record("release", item.event.idempotency_key, retry_in=self.retry.max_backoff)
        with self._lock:
            self._pending -= 1
            self.failed += 1
            self._changed.notify_all()
        logger.warning("audit_instrument: event %s (%s) not delivered: %s",
                       item.event.action, item.event.idempotency_key, error)
        self._give_up(item, error)

    def _give_up(self, item: _Item, error: DeliveryError) -> None:
        if item.handle is not None:
            item.handle._settle(error)
        signals.report_failed(item.event, self.destination, error)

    def _abandon(self, item: _Item, reason: str) -> None:
        """An item leaves memory undelivered because the engine stops."""
        if self.outbox is not None:
            self._record("release", item.event.idempotency_key, retry_in=0.0)
            if item.handle is not None:
                item.handle._settle(DeliveryError(
                    f"engine {reason} before delivery (still pending in the outbox)",
                    retryable=True))
            return
        self.dropped += 1
        self._drop(item.event, item.handle, reason)

    def _drop(self, event: AuditEvent, handle: DeliveryHandle | None, reason: str) -> None:
        if handle is not None:
            handle._settle(DeliveryError(f"event dropped: {reason}", retryable=False))
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
