"""Pacing: send at most a given number of requests per second, and slow down on 429.

WorkOS limits each IP address to 6,000 requests per 60 seconds. The engine
paces its requests to a rate a little under that (``requests_per_second``)
instead of leaving it to a thread count: a token bucket (GCRA: each request
takes the next free slot, ``1/rate`` apart; an idle client may send ``burst``
at once), whatever the latency.

On ``429 Too Many Requests`` the rate drops to 70 % of what it was (once per
episode: answers to requests sent before the cut don't cut again) and every
sender sharing the budget pauses for the server's ``Retry-After`` (already
capped by the caller). The rate then grows back by 5 % a second up to the
configured one (AIMD, as TCP does).

The numbers live in a :class:`PaceState`, kept by a store: in memory for one
process, or in a row of the outbox database, so that the processes of a host
sharing one outbox file share one budget. Wall-clock time is used so that
processes agree; a slot more than ``horizon`` seconds ahead (a clock that
jumped back) is pulled in.

>>> pacer = Pacer(100.0, burst=2)
>>> pacer.wait_turn(threading.Event())
True
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

__all__ = ["MemoryPaceStore", "PaceState", "PaceStore", "Pacer", "default_burst"]

_CUT = 0.7  # the rate after a 429, as a share of the rate before it
_GROWTH = 1.05  # per second, after a cut, up to the configured rate
_FLOOR = 1.0  # requests/s never paced below this (or the configured rate, if lower)
_SHARED_BLOCK = 0.05  # seconds of slots a process reserves at once from a shared store
_MIN_SLEEP = 0.001  # a slot closer than this is taken at once (a wake-up costs more)

_time = time.time


class PaceState(NamedTuple):
    """What processes sharing a budget agree on."""

    tat: float
    """Wall-clock time of the next free slot."""
    rate: float
    """Requests/s set by the last cut (``0``: never cut, the configured rate)."""
    cut_at: float
    """Wall-clock time of the last cut."""


class PaceStore(Protocol):
    """Keeps a :class:`PaceState`; ``update`` applies a change atomically."""

    shared: bool

    def update(self, change: Callable[[PaceState], PaceState]) -> PaceState:
        """Apply ``change`` to the state as one atomic step; return the new state."""
        ...


class MemoryPaceStore:
    """A :class:`PaceStore` for one process."""

    shared = False

    def __init__(self) -> None:
        self._state = PaceState(0.0, 0.0, 0.0)
        self._lock = threading.Lock()

    def update(self, change: Callable[[PaceState], PaceState]) -> PaceState:
        with self._lock:
            self._state = change(self._state)
            return self._state

    def after_fork(self) -> None:
        self._lock = threading.Lock()


def default_burst(rate: float) -> int:
    """The burst for ``rate``: 2 % of a second's requests, at least 1.

    Any one-second window then sees at most ``1.02 * rate`` requests.
    """
    return max(1, int(rate / 50))


def current_rate(state: PaceState, ceiling: float, now: float) -> float:
    """The rate in force at ``now``: recovering from the last cut, at most ``ceiling``."""
    if state.rate <= 0:
        return ceiling
    grown: float = state.rate * _GROWTH ** max(0.0, min(now - state.cut_at, 3600.0))
    return min(ceiling, grown)


class Pacer:
    """Hands out send slots at ``rate`` requests/s (``None``: no limit, pauses only).

    Each worker calls :meth:`wait_turn` before a request and
    :meth:`throttled` when the server answered 429.
    """

    def __init__(self, rate: float | None, *, burst: int | None = None,
                 store: PaceStore | None = None, horizon: float = 60.0) -> None:
        self.ceiling = rate
        self.burst = burst if burst is not None else default_burst(rate or 0.0)
        self.store: PaceStore = store if store is not None else MemoryPaceStore()
        self.horizon = horizon
        self._setup()

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._slots: collections.deque[float] = collections.deque()
        self._rate = self.ceiling
        self._paused_until = 0.0  # without a rate: until when a 429 paused us

    def after_fork(self) -> None:
        """In a forked child: fresh lock, no slots reserved by the parent."""
        self._setup()
        if isinstance(self.store, MemoryPaceStore):
            self.store.after_fork()

    @property
    def rate(self) -> float | None:
        """Requests/s in force (as of this process's last look at the budget)."""
        return self._rate

    # -- taking a turn ------------------------------------------------------------------------
    def next_slot(self) -> float:
        """Reserve the next slot; its wall-clock time (maybe now or in the past)."""
        with self._lock:
            now = _time()
            slots = self._slots
            rate = self._rate
            if rate:
                stale = now - self.burst / rate
                while slots and slots[0] < stale:  # reserved but not used in time
                    slots.popleft()
            if not slots:
                count = 1
                if self.store.shared and self.ceiling:
                    count = math.ceil(self.ceiling * _SHARED_BLOCK)
                self._reserve(count, now)
            return slots.popleft()

    def wait_turn(self, stopped: threading.Event) -> bool:
        """Block until this request's slot; ``False`` if ``stopped`` was set meanwhile."""
        if self.ceiling is None:  # no rate: only a 429's pause holds requests back
            delay = self._paused_until - _time()
        else:
            delay = self.next_slot() - _time()
        if delay > _MIN_SLEEP:
            return not stopped.wait(min(delay, self.horizon))
        return not stopped.is_set()

    def _reserve(self, count: int, now: float) -> None:
        ceiling, burst, horizon = self.ceiling, self.burst, self.horizon
        slots: list[float] = []

        def take(state: PaceState) -> PaceState:
            slots.clear()
            tat = min(state.tat, now + horizon)
            if ceiling is None:  # no rate: only a pause (tat) holds requests back
                slots.extend([max(tat, now)] * count)
                return state
            rate = current_rate(state, ceiling, now)
            interval = 1.0 / rate
            start = max(tat, now - (burst - 1) * interval)
            slots.extend(start + n * interval for n in range(count))
            self._rate = rate
            return state._replace(tat=start + count * interval)

        self.store.update(take)
        self._slots.extend(slots)

    # -- the server said 429 ------------------------------------------------------------------
    def throttled(self, retry_after: float | None, sent_at: float) -> None:
        """A request sent at ``sent_at`` (wall clock) got 429: cut the rate, pause.

        ``retry_after`` is the server's wait in seconds, already capped.
        """
        now = _time()
        pause = 0.0 if retry_after is None else min(retry_after, self.horizon)
        ceiling = self.ceiling
        if ceiling is None:  # no rate to cut: only pause
            with self._lock:
                self._paused_until = max(self._paused_until, now + pause)
            return

        def cut(state: PaceState) -> PaceState:
            if sent_at < state.cut_at:  # sent before the last cut: that one covered it
                return state._replace(tat=max(state.tat, now + pause) if pause else state.tat)
            tat = max(min(state.tat, now + self.horizon), now + pause)
            rate = max(min(_FLOOR, ceiling), current_rate(state, ceiling, now) * _CUT)
            self._rate = rate
            return PaceState(tat=tat, rate=rate, cut_at=now)

        with self._lock:
            self._slots.clear()  # reserved at the old pace
            self.store.update(cut)
