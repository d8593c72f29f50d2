"""Delivery for network senders: queue, background workers, retries, handles, outbox.

Reusable by any HTTP sender that implements :class:`Destination`;
:class:`~audit_instrument.WorkOS` is the first.

* :mod:`.engine` — :class:`DeliveryEngine`: bounded queue, worker threads, one httpx client
* :mod:`.handle` — :class:`DeliveryHandle`: ``result(timeout)``, ``await``, callbacks
* :mod:`.retry` — :class:`RetryPolicy`: which answers to retry and how long to wait
* :mod:`.outbox` — :class:`Outbox`: the durable SQLite outbox (group commit, leases, dead letters)
"""

from __future__ import annotations

from .engine import DeliveryEngine, Destination
from .handle import DeliveryHandle
from .outbox import DeadLetter, Outbox, OutboxStatus
from .retry import RETRYABLE_STATUSES, RetryPolicy, parse_retry_after

__all__ = [
    "RETRYABLE_STATUSES",
    "DeadLetter",
    "DeliveryEngine",
    "DeliveryHandle",
    "Destination",
    "Outbox",
    "OutboxStatus",
    "RetryPolicy",
    "parse_retry_after",
]
