"""Outage pausing: when the server is down, every worker waits instead of each retrying alone.

After :data:`FAILURES_FOR_OUTAGE` retryable failures in a row with no answer
in between (timeouts, refused connections, 5xx), all workers pause; the
first attempts after the pause probe the server, and each failed probe
doubles the next pause (with jitter, up to ``max_backoff``). A server's
``Retry-After`` on a 5xx pauses everyone for that long (already capped by
the caller). The first answer ends a pause of ours, not one the server
asked for.

>>> gate = OutageGate(RetryPolicy(), "https://api.workos.com")
>>> gate.paused_for()
0.0
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable

from .retry import RetryPolicy

__all__ = ["FAILURES_FOR_OUTAGE", "OutageGate"]

logger = logging.getLogger("audit_instrument")

FAILURES_FOR_OUTAGE = 4
"""Retryable failures in a row that mean the server is down (or refusing us)."""

_monotonic = time.monotonic


class OutageGate:
    """Whether deliveries to one server should wait, and for how long.

    ``on_resume`` is called (outside the gate's lock) when a pause ends early
    because the server answered: the engine wakes its workers then.
    """

    def __init__(self, retry: RetryPolicy, where: str,
                 on_resume: Callable[[], None] | None = None) -> None:
        self.retry = retry
        self.where = where
        self.on_resume = on_resume
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._failures = 0  # retryable failures in a row
        self._outages = 0  # pauses in a row: each one longer, up to retry.max_backoff
        self._paused_until = 0.0  # monotonic
        self._asked = False  # the pause is the server's Retry-After: an answer doesn't lift it

    def after_fork(self) -> None:
        """In a forked child: a fresh lock and no pause."""
        self._setup()

    def paused_for(self) -> float:
        """Seconds until attempts may start again (``0.0``: now)."""
        until = self._paused_until
        if not until:
            return 0.0
        return max(0.0, until - _monotonic())

    def failed(self, retry_after: float | None) -> None:
        """A retryable failure; ``retry_after`` is the server's (capped) wait, if it gave one."""
        with self._lock:
            self._failures += 1
            now = _monotonic()
            if retry_after is None:
                if self._failures < FAILURES_FOR_OUTAGE or now < self._paused_until:
                    return
                self._outages += 1
                first = self._outages == 1
                retry = self.retry
                ceiling = min(retry.max_backoff,
                              retry.initial_backoff * 2.0 ** min(self._outages - 1, 62))
                pause = ceiling * (0.5 + 0.5 * random.random())
            else:
                first = False
                pause = retry_after
                self._asked = True
            self._paused_until = max(self._paused_until, now + pause)
        if first:
            logger.warning("audit_instrument: %s is not answering; deliveries pause, then "
                           "probe it with growing waits (events wait, none is dropped)",
                           self.where)

    def answered(self) -> None:
        """The server answered (accepted or refused an event): it is up."""
        if not (self._failures or self._paused_until):
            return
        resumed = False
        with self._lock:
            recovered = self._outages > 0
            self._failures = self._outages = 0
            if not self._asked or _monotonic() >= self._paused_until:
                resumed = self._paused_until > 0.0
                self._paused_until = 0.0
                self._asked = False
        if recovered:
            logger.info("audit_instrument: %s answers again; deliveries resume", self.where)
        if resumed and self.on_resume is not None:
            self.on_resume()
