"""When to try again: which answers are worth retrying, and how long to wait.

Retryable: 408, 429, 500, 502, 503, 504, timeouts and connection errors.
Waits grow exponentially with *full jitter* (a uniform draw between zero and
the capped exponential), so many clients recovering at once don't retry in
lockstep; a server's ``Retry-After`` (seconds or an HTTP date) wins over the
computed wait, but never exceeds ``max_backoff``: ``inf``, ``1e10``, a date
in the year 9999 or a year-long wait are read defensively and capped
(:meth:`RetryPolicy.server_wait`).

>>> policy = RetryPolicy(initial_backoff=0.5, max_backoff=30.0, deadline=300.0)
>>> 0.0 <= policy.backoff(3) <= 2.0
True
>>> parse_retry_after("7")
7.0
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

from ..errors import AuditConfigError

__all__ = ["RETRYABLE_STATUSES", "RetryPolicy", "is_retryable_status", "parse_retry_after"]

RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses after which the same request may succeed later."""

_random = random.Random()


def is_retryable_status(status: int) -> bool:
    """Whether an answer with ``status`` is worth another attempt."""
    return status in RETRYABLE_STATUSES


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, and a per-event deadline.

    ``initial_backoff`` caps the first wait, doubling per attempt up to
    ``max_backoff``; ``deadline`` (seconds from when the event was handed to
    the engine) is when the engine gives up and reports ``DeliveryError``.
    """

    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    deadline: float = 300.0

    def __post_init__(self) -> None:
        for name in ("initial_backoff", "max_backoff", "deadline"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise AuditConfigError(f"RetryPolicy.{name} must be a number >= 0, not {value!r}")
        if self.max_backoff < self.initial_backoff:
            raise AuditConfigError("RetryPolicy.max_backoff must be >= initial_backoff")

    def server_wait(self, retry_after: str | None) -> float | None:
        """Seconds to wait from a ``Retry-After`` header, at most ``max_backoff``;
        ``None`` when absent or unreadable."""
        seconds = parse_retry_after(retry_after)
        return None if seconds is None else min(seconds, self.max_backoff)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        ceiling = min(self.max_backoff, self.initial_backoff * 2.0 ** min(attempt - 1, 62))
        return _random.uniform(0.0, ceiling)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or ``None`` if absent or unreadable.

    Accepts delta-seconds (``"120"``, also ``"1.5"``) and an HTTP date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``); a date in the past means ``0``.
    The result may be huge or infinite (``"inf"``, ``"1e400"``): callers cap
    it (:meth:`RetryPolicy.server_wait`). Never raises.
    """
    if not isinstance(value, str):
        return None
    value = value.strip()
    if len(value) > 100:  # no honest header is this long
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is unreadable
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    try:
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (OverflowError, OSError, ValueError):
        return None
