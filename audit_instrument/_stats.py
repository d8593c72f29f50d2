"""Counters since start, and failures logged once per cause.

:func:`stats` is cheap enough for a health endpoint: events built and
emitted, events that could not be built (by cause), what each sender
delivered, failed or dropped, and instrumentation failures by cause.

>>> from audit_instrument import stats
>>> snapshot = stats()
>>> snapshot.emitted >= 0
True
>>> sorted(snapshot.as_dict())
['built', 'emitted', 'failures', 'invalid', 'senders']

A failure is never silent and never floods the log: the first one of each
cause is logged with its traceback; repeats are counted and summarised (how
many, and the last message) at most once a minute.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SenderStats", "Stats", "note_failure", "stats"]

logger = logging.getLogger("audit_instrument")

SUMMARY_INTERVAL = 60.0
"""Seconds between two log records of the same cause (the first one is logged at once)."""
_MAX_CAUSES = 1000  # distinct causes remembered; later new ones are counted under "other"

_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # A thread of the parent (a delivery worker counting an outcome) may hold the
    # lock at fork time; in the child that thread is gone and the lock stays taken.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


class _Counter:
    """A counter bumped without a lock on the hot path.

    ``bump`` is ``itertools.count().__next__``: one C call, atomic under the
    GIL (a lock would cost more than the rest of counting an event, as
    ``benchmarks/bench_core.py`` shows). Reading also advances the count, so
    :meth:`value` subtracts its own reads.
    """

    __slots__ = ("_count", "_reads", "bump")

    def __init__(self) -> None:
        self._count = itertools.count()
        self.bump = self._count.__next__
        self._reads = 0

    def value(self) -> int:
        """Bumps so far (call with ``_lock`` held: reads are counted under it)."""
        seen = next(self._count) - self._reads
        self._reads += 1
        return seen


_built = _Counter()
_emitted = _Counter()
_invalid: dict[str, int] = {}
_senders: dict[str, list[int]] = {}  # name -> [delivered, failed, dropped]
_failures: dict[str, _Cause] = {}
_names: weakref.WeakKeyDictionary[object, str] = weakref.WeakKeyDictionary()

_DELIVERED, _FAILED, _DROPPED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class SenderStats:
    """What one sender did with the events it was given."""

    delivered: int = 0
    failed: int = 0
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters since the process started (see :func:`stats`)."""

    built: int
    """Events made by ``@audit``, ``with audit(...)`` and model capture."""
    emitted: int
    """Events handed to the senders (``emit()`` included)."""
    invalid: Mapping[str, int] = field(default_factory=dict)
    """Events that could not be built, by cause (``"actor_id: required"``)."""
    senders: Mapping[str, SenderStats] = field(default_factory=dict)
    """Per sender (by its ``repr``): delivered, failed, dropped."""
    failures: Mapping[str, int] = field(default_factory=dict)
    """Instrumentation failures by cause: a receiver or resolver raising, a worker's error."""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, for a health endpoint."""
        return {
            "built": self.built,
            "emitted": self.emitted,
            "invalid": dict(self.invalid),
            "senders": {
                name: {"delivered": s.delivered, "failed": s.failed, "dropped": s.dropped}
                for name, s in self.senders.items()
            },
            "failures": dict(self.failures),
        }


def stats() -> Stats:
    """The counters since start.

    >>> @app.get("/health/audit")                    # doctest: +SKIP
    ... def audit_health() -> dict:
    ...     return audit_instrument.stats().as_dict()
    """
    with _lock:
        return Stats(
            built=_built.value(),
            emitted=_emitted.value(),
            invalid=dict(_invalid),
            senders={name: SenderStats(*counts) for name, counts in _senders.items()},
            failures={cause: entry.count for cause, entry in _failures.items()},
        )


# -- counting (called by the library) ---------------------------------------------------------
count_built = _built.bump
"""One event was built by instrumentation (``count_built()``)."""
count_emitted = _emitted.bump
"""One event was handed to the senders (``count_emitted()``)."""


def count_invalid(cause: str) -> None:
    """One event could not be built because of ``cause``."""
    with _lock:
        if cause not in _invalid and len(_invalid) >= _MAX_CAUSES:
            cause = "other"
        _invalid[cause] = _invalid.get(cause, 0) + 1


def _sender_name(sender: object) -> str:
    try:
        name = _names.get(sender)
    except TypeError:  # not weak-referenceable or not hashable
        return repr(sender)
    if name is None:
        name = repr(sender)
        try:
            _names[sender] = name
        except TypeError:
            pass
    return name


def _count_sender(sender: object, outcome: int) -> None:
    name = _sender_name(sender)
    with _lock:
        counts = _senders.get(name)
        if counts is None:
            if len(_senders) >= _MAX_CAUSES:
                name = "other"
            counts = _senders.setdefault(name, [0, 0, 0])
        counts[outcome] += 1


def count_delivered(sender: object) -> None:
    """``sender`` delivered (or stored) one event."""
    _count_sender(sender, _DELIVERED)


def count_failed(sender: object) -> None:
    """``sender`` gave up on one event."""
    _count_sender(sender, _FAILED)


def count_dropped(sender: object) -> None:
    """``sender`` dropped one event before delivery."""
    _count_sender(sender, _DROPPED)


# -- failures, logged once per cause ----------------------------------------------------------
class _Cause:
    __slots__ = ("count", "logged_at", "unlogged")

    def __init__(self) -> None:
        self.count = 0
        self.unlogged = 0
        self.logged_at = 0.0


def note_failure(
    cause: str,
    message: str,
    *,
    error: BaseException | None = None,
    level: int = logging.ERROR,
) -> None:
    """Count a failure of ``cause``; log the first with ``error``'s traceback, then summaries.

    Repeats of a cause are logged at most once per :data:`SUMMARY_INTERVAL`
    seconds, as one record with how many there were and the last message.
    """
    now = time.monotonic()
    with _lock:
        entry = _failures.get(cause)
        if entry is None:
            if len(_failures) >= _MAX_CAUSES:
                cause = "other"
                entry = _failures.setdefault(cause, _Cause())
            else:
                entry = _failures[cause] = _Cause()
        entry.count += 1
        first = entry.count == 1
        if not first and now - entry.logged_at < SUMMARY_INTERVAL:
            entry.unlogged += 1
            return
        repeats, entry.unlogged = entry.unlogged, 0
        entry.logged_at = now
    if first:
        exc_info = (type(error), error, error.__traceback__) if error is not None else None
        logger.log(level, "audit_instrument: %s", message, exc_info=exc_info)
    else:
        logger.log(
            level,
            "audit_instrument: %s (and %d more like this since the last report; "
            "tracebacks are logged once per cause)",
            message,
            repeats,
        )


def _reset() -> None:
    """Forget every counter (tests)."""
    global _built, _emitted, count_built, count_emitted
    with _lock:
        _built, _emitted = _Counter(), _Counter()
        count_built, count_emitted = _built.bump, _emitted.bump
        _invalid.clear()
        _senders.clear()
        _failures.clear()
