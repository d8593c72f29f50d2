"""A sender that runs another sender's ``send`` on a thread of its own.

The JSONL sender and the local store write a file in ``send()``; on an
asyncio event loop that write would stall every other request. Wrapped in a
:class:`BackgroundSender`, an event emitted on an event loop's thread is put
on a bounded queue and returns at once; one worker thread hands the queued
events to the wrapped sender, in order. Called from any other thread (sync
views, a Django/Flask worker, a script) the wrapped sender runs right there,
as it would unwrapped — unless ``always=True``.

>>> from audit_instrument import AuditStore, configure
>>> from audit_instrument.senders import BackgroundSender
>>> store = AuditStore("audit.db")                      # doctest: +SKIP
>>> configure(BackgroundSender(store))                  # doctest: +SKIP

An event still on the queue lives in memory only: :meth:`BackgroundSender.flush`
waits until the queue is empty, and an exit hook flushes with a bounded wait
(logging what it could not hand over). For a guarantee that survives a crash
of the process, use ``WorkOS(outbox=...)`` unwrapped.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from asyncio import _get_running_loop
from collections import deque
from collections.abc import Callable

from .. import _stats as stats
from .. import signals
from ..config import _send_of
from ..errors import AuditConfigError
from ..event import AuditEvent

__all__ = ["BackgroundSender"]

logger = logging.getLogger("audit_instrument")


class BackgroundSender:
    """Hand events to ``sender`` from a worker thread instead of the event loop.

    ``sender`` is anything :func:`~audit_instrument.configure` takes (an
    object with ``send(event)`` or a callable). ``queue_size`` bounds the
    events waiting; when it is full the event is dropped, logged and reported
    on ``signals.event_dropped`` (the caller never waits). ``always=True``
    queues events from every thread, not only from event loops.
    ``atexit_timeout`` bounds the flush at interpreter exit.
    """

    def __init__(
        self,
        sender: object,
        *,
        queue_size: int = 10_000,
        always: bool = False,
        atexit_timeout: float = 5.0,
    ) -> None:
        send = _send_of(sender)
        if send is None:
            raise AuditConfigError(
                f"BackgroundSender wraps a sender (an object with .send(event), or a callable), "
                f"not {type(sender).__name__}"
            )
        if type(queue_size) is not int or queue_size < 1:
            raise AuditConfigError(f"queue_size must be a positive int, not {queue_size!r}")
        self.sender = sender
        self.queue_size = queue_size
        self.always = always
        self.atexit_timeout = atexit_timeout
        self.dropped = 0
        self._send: Callable[[AuditEvent], object] = send
        self._start()
        atexit.register(_flush_at_exit, weakref.ref(self))

    def _start(self) -> None:
        """Fresh queue, lock and (lazily) worker: at construction and in a forked child."""
        self._pid = os.getpid()
        self._queue: deque[AuditEvent] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._unfinished = 0
        self._worker: threading.Thread | None = None
        self._closed = False

    def send(self, event: AuditEvent) -> None:
        """Queue ``event`` (on an event loop, or always), else send it here."""
        if not (self.always or self._unfinished or self._closed) and _get_running_loop() is None:
            self._send(event)
            return
        if self._pid != os.getpid():  # forked: the parent's worker and queue stay there
            self._start()
        with self._cond:
            if self._closed or self._unfinished >= self.queue_size:
                reason = "closed" if self._closed else "queue full"
                self.dropped += 1
            else:
                reason = ""
                self._queue.append(event)
                self._unfinished += 1
                if self._worker is None:
                    self._worker = threading.Thread(
                        target=self._run, name="audit-background-sender", daemon=True
                    )
                    self._worker.start()
                else:
                    self._cond.notify()
        if reason:
            logger.error("audit_instrument: %r dropped event %r: %s", self, event.action, reason)
            signals.report_dropped(event, self, reason)

    def _run(self) -> None:
        cond, queue = self._cond, self._queue
        while True:
            with cond:
                while not queue:
                    if self._closed:
                        return
                    cond.wait()
                event = queue.popleft()
            try:
                self._send(event)
            except Exception as error:
                stats.note_failure(
                    f"background sender {self._send!r}",
                    f"{self!r}: sender {self.sender!r} failed: {type(error).__name__}",
                    error=error,
                )
            with cond:
                self._unfinished -= 1
                if not self._unfinished:
                    cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event was handed over; False if ``timeout`` ran out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._unfinished and self._pid == os.getpid():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float | None = None) -> bool:
        """Flush, then stop the worker; later events are dropped. False if events were left."""
        flushed = self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            worker = self._worker
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
        return flushed

    @property
    def pending(self) -> int:
        """Events queued and not yet handed to the wrapped sender."""
        return self._unfinished

    def __enter__(self) -> BackgroundSender:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<BackgroundSender of {self.sender!r} pending={self._unfinished}>"


def _flush_at_exit(ref: weakref.ref[BackgroundSender]) -> None:
    sender = ref()
    if sender is None or not sender.pending:
        return
    if not sender.flush(sender.atexit_timeout):
        logger.error(
            "audit_instrument: %d events were still queued at exit and are lost", sender.pending
        )

