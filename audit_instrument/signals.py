"""The blinker signals events travel on, and a dispatch that isolates receivers.

Every finished event is sent on :data:`event_emitted` with the event as the
sender; senders (WorkOS, the local store, files, test capture) are receivers.
Delivery engines report on :data:`event_delivered`, :data:`event_failed` and
:data:`event_dropped`; events that could not be built are reported on
:data:`event_invalid`.

>>> from audit_instrument import signals
>>> @signals.event_emitted.connect
... def print_action(event):
...     print(event.action)

Unlike ``Signal.send``, :func:`dispatch` calls every receiver even when one
raises: the failure is logged on the ``audit_instrument`` logger.
"""

from __future__ import annotations

import logging
from typing import Any

from blinker import Namespace, Signal

from .event import AuditEvent

__all__ = [
    "dispatch",
    "emit",
    "event_delivered",
    "event_dropped",
    "event_emitted",
    "event_failed",
    "event_invalid",
    "namespace",
]

logger = logging.getLogger("audit_instrument")

namespace = Namespace()

event_emitted: Signal = namespace.signal(
    "event-emitted", doc="Sent with each finished event as sender; senders listen here."
)
event_delivered: Signal = namespace.signal(
    "event-delivered", doc="An event was accepted by its destination. kwargs: destination."
)
event_failed: Signal = namespace.signal(
    "event-failed",
    doc="An event could not be delivered and was given up. kwargs: destination, error.",
)
event_dropped: Signal = namespace.signal(
    "event-dropped",
    doc="An event was dropped before delivery (queue full, shut down). kwargs: destination, reason.",
)
event_invalid: Signal = namespace.signal(
    "event-invalid",
    doc="An instrumented call could not build its event. Sender: the action; kwargs: error.",
)


def dispatch(signal: Signal, sender: Any, **kwargs: Any) -> int:
    """Send ``signal`` to each receiver, logging (not raising) receiver errors.

    Returns how many receivers failed.
    """
    failures = 0
    for receiver in signal.receivers_for(sender):
        try:
            receiver(sender, **kwargs)
        except Exception:
            failures += 1
            logger.exception(
                "audit_instrument: receiver %r of %s failed", receiver, signal.name
            )
    return failures


def emit(event: AuditEvent) -> None:
    """Send a finished event to every connected sender.

    >>> from audit_instrument import AuditEvent, emit
    >>> emit(AuditEvent(group="organization_1", action="user.login", action_type="C",
    ...                 actor_name="user@email.com", actor_id="user_1",
    ...                 target_name="user@email.com", target_id="user_1"))
    """
    if not isinstance(event, AuditEvent):
        raise TypeError(f"emit() takes an AuditEvent, not {type(event).__name__}")
    if event_emitted.receivers:
        dispatch(event_emitted, event)
