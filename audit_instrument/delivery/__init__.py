"""Delivery for network senders: backlog, paced workers, retries, handles, the outbox.

Reusable by any HTTP sender that implements :class:`Destination`
(:class:`~audit_instrument.WorkOS`), and by any sender that delivers batches
itself through a :class:`Channel` (the OpenTelemetry sender).

* :mod:`.engine` — :class:`DeliveryEngine`: paced worker threads over one httpx transport
* :mod:`.backlog` — where work comes from: memory, or the outbox
* :mod:`.pacing` — :class:`Pacer`: requests per second, slower after 429
* :mod:`.outage` — :class:`OutageGate`: a server that is down is probed, not hammered
* :mod:`.handle` — :class:`DeliveryHandle`: ``result(timeout)``, ``await``, callbacks
* :mod:`.retry` — :class:`RetryPolicy`: which answers to retry and how long to wait
* :mod:`.outbox` — :class:`Outbox`: the durable SQLite outbox (durability modes, leases,
  dead letters)
* :mod:`.group_commit` — :class:`GroupCommit`: many writers, one transaction
* :mod:`.channel` — the :class:`Channel` seam: what the engine sends a batch through
* :mod:`.http` — the :class:`Poster` seam and :func:`route`, the one rule for where
  requests may go
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .channel import Channel
    from .concurrency import default_max_in_flight
    from .engine import DeliveryEngine
    from .handle import DeliveryHandle
    from .http import Destination, route
    from .outage import OutageGate
    from .outbox import DeadLetter, Outbox, OutboxStatus
    from .pacing import Pacer
    from .retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after

# Imported on first use: the engine pulls in httpx (~100 ms), which the store's
# use of group_commit, and `import audit_instrument`, must not pay.
_WHERE = {
    "RETRYABLE_STATUSES": "retry", "Channel": "channel", "DeadLetter": "outbox",
    "DeliveryEngine": "engine",
    "DeliveryHandle": "handle", "Destination": "http", "OutageGate": "outage",
    "Outbox": "outbox", "OutboxStatus": "outbox", "Pacer": "pacing", "RetryPolicy": "retry",
    "default_max_in_flight": "concurrency", "parse_retry_after": "retry", "route": "http",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)


__all__ = [
    "RETRYABLE_STATUSES",
    "Channel",
    "DeadLetter",
    "DeliveryEngine",
    "DeliveryHandle",
    "Destination",
    "OutageGate",
    "Outbox",
    "OutboxStatus",
    "Pacer",
    "RetryPolicy",
    "default_max_in_flight",
    "parse_retry_after",
    "route",
]
