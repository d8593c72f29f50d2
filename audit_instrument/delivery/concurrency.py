"""How many requests to keep in flight: enough to reach the rate at the latency observed
(and the check of the engine's concurrency and queue options).

By Little's law a rate of ``r`` requests/s at ``d`` seconds per request
needs ``r * d`` requests in flight. The engine keeps ``r * d * 1.5 + 1``
(jitter must not cost rate), at most its cap. ``d`` is the lowest request
time of the last few seconds, as TCP BBR keeps its minimum round trip: the
network's latency, not time spent waiting for this process's CPU.

>>> needs = InFlight(cap=64)
>>> needs.observe(0.05)
>>> needs.target(100.0)
9
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from ..errors import AuditConfigError

__all__ = ["InFlight", "check_options", "default_max_in_flight"]

_LATENCY_GUESS = 0.1  # seconds per request assumed before any was measured
_LATENCY_WINDOW = 10.0  # seconds over which the lowest request time is remembered
_HEADROOM = 1.5  # requests in flight beyond rate * latency


def default_max_in_flight(requests_per_second: float | None) -> int:
    """The default cap on requests in flight: enough for the rate at 200 ms of latency.

    (8 to 256.) It is a cap: fewer run while the latency is lower. Without
    a rate, 4: more threads than that only contend for the interpreter
    (``benchmarks/bench_delivery.py``, loopback).
    """
    if requests_per_second is None:
        return 4
    return max(8, min(256, math.ceil(requests_per_second * 0.2)))


class InFlight:
    """The latency estimate, and the number of requests in flight it calls for."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.latency = _LATENCY_GUESS
        self._latency_at = 0.0

    def observe(self, seconds: float) -> None:
        """A request took ``seconds``."""
        now = time.monotonic()
        if seconds <= self.latency or now - self._latency_at > _LATENCY_WINDOW:
            self.latency = seconds
            self._latency_at = now

    def target(self, rate: float | None) -> int:
        """Requests to keep in flight at ``rate`` requests/s (``None``: the cap)."""
        if rate is None:
            return self.cap
        return max(1, min(self.cap, math.ceil(rate * self.latency * _HEADROOM) + 1))


def check_options(*, requests_per_second: object, max_in_flight: object, burst: object,
                  queue_size: object, when_full: object, seconds: Mapping[str, object],
                  batch_size: object = 1) -> None:
    """Raise :class:`~audit_instrument.AuditConfigError` for an engine option that can't be."""
    if requests_per_second is not None and (
            isinstance(requests_per_second, bool)
            or not isinstance(requests_per_second, (int, float))
            or not 0 < requests_per_second < math.inf):
        raise AuditConfigError(f"requests_per_second must be a number > 0 (or None), "
                               f"not {requests_per_second!r}")
    for name, count in (("max_in_flight", max_in_flight), ("burst", burst),
                        ("batch_size", batch_size)):
        if count is not None and (not isinstance(count, int) or count < 1):
            raise AuditConfigError(f"{name} must be an int >= 1, not {count!r}")
    if not isinstance(queue_size, int) or queue_size < 1:
        raise AuditConfigError(f"queue_size must be an int >= 1, not {queue_size!r}")
    if when_full not in ("block", "drop"):
        raise AuditConfigError(f"when_full must be 'block' or 'drop', not {when_full!r}")
    for name, value in seconds.items():
        if not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise AuditConfigError(f"{name} must be a number of seconds >= 0, not {value!r}")
