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
import weakref
from typing import Any

from blinker import ANY, NamedSignal, Namespace, Signal
from blinker.base import ANY_ID as _ANY_ID

from .event import AuditEvent

__all__ = [
    "AuditSignal",
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


class AuditSignal(NamedSignal):
    """A blinker signal that remembers its receivers between sends.

    ``Signal.receivers_for`` rebuilds a set of receiver ids on every send;
    events are sent far more often than receivers change, so this keeps the
    connected receivers in a tuple, dropped on every connect/disconnect.
    """

    _cache: tuple[Any, ...] | None = None
    _weak = False

    def connect(self, receiver: Any, sender: Any = ANY, weak: bool = True) -> Any:
        self._cache = None
        return super().connect(receiver, sender, weak)

    def disconnect(self, receiver: Any, sender: Any = ANY) -> None:
        self._cache = None
        super().disconnect(receiver, sender)

    def _clear_state(self) -> None:
        self._cache = None
        super()._clear_state()

    def live_receivers(self, sender: Any) -> tuple[Any, ...]:
        """The receivers for ``sender``, in the order they were connected."""
        cache = self._cache
        if cache is None:
            if any(key != _ANY_ID and ids for key, ids in self._by_sender.items()):
                # receivers bound to one sender: blinker's own (slower) lookup
                return tuple(self.receivers_for(sender))
            any_ids = self._by_sender.get(_ANY_ID, ())
            cache = tuple(v for k, v in self.receivers.items() if k in any_ids)
            self._weak = any(isinstance(r, weakref.ref) for r in cache)
            self._cache = cache
        if not self._weak:
            return cache
        live = []
        for receiver in cache:
            if isinstance(receiver, weakref.ref):
                receiver = receiver()
                if receiver is None:  # collected: blinker disconnects it; rebuild next time
                    self._cache = None
                    continue
            live.append(receiver)
        return tuple(live)


class _AuditNamespace(Namespace):
    def signal(self, name: str, doc: str | None = None) -> AuditSignal:
        if name not in self:
            self[name] = AuditSignal(name, doc)
        return self[name]  # type: ignore[return-value]


namespace = _AuditNamespace()

event_emitted: AuditSignal = namespace.signal(
    "event-emitted", doc="Sent with each finished event as sender; senders listen here."
)
event_delivered: AuditSignal = namespace.signal(
    "event-delivered", doc="An event was accepted by its destination. kwargs: destination."
)
event_failed: AuditSignal = namespace.signal(
    "event-failed",
    doc="An event could not be delivered and was given up. kwargs: destination, error.",
)
event_dropped: AuditSignal = namespace.signal(
    "event-dropped",
    doc="An event was dropped before delivery (queue full, shut down). "
    "kwargs: destination, reason.",
)
event_invalid: AuditSignal = namespace.signal(
    "event-invalid",
    doc="An instrumented call could not build its event. Sender: the action; kwargs: error.",
)


def dispatch(signal: Signal, sender: Any, **kwargs: Any) -> int:
    """Send ``signal`` to each receiver, logging (not raising) receiver errors.

    Returns how many receivers failed.
    """
    failures = 0
    if type(signal) is AuditSignal:
        receivers = signal._cache
        if receivers is None or signal._weak:
            receivers = signal.live_receivers(sender)
    else:
        receivers = tuple(signal.receivers_for(sender))
    for receiver in receivers:
        try:
            receiver(sender, **kwargs)
        except Exception:
            failures += 1
            log_receiver_failure(receiver, signal)
    return failures


def log_receiver_failure(receiver: Any, signal: Signal) -> None:
    """Log the exception being handled, raised by ``receiver`` of ``signal``."""
    logger.exception(
        "audit_instrument: receiver %r of %s failed",
        receiver,
        getattr(signal, "name", signal),
    )


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
