"""The blinker signals events travel on, and the one dispatch path that isolates receivers.

Events flow out on :data:`event_emitted`: every finished event is sent with
the event as the sender, and senders (WorkOS, the local store, files, test
capture) are its receivers.

What became of an event flows back on the **return path**, sent by senders
and delivery engines with the event as sender and ``destination=`` the
sender object: :data:`event_delivered`, :data:`event_failed` (``error=``)
and :data:`event_dropped` (``reason=``). Events that could not be built at
all are reported on :data:`event_invalid` (the action as sender,
``error=``). Every outcome is also counted in :func:`~audit_instrument.stats`.

>>> from audit_instrument import signals
>>> @signals.event_emitted.connect
... def print_action(event):
...     print(event.action)

Unlike ``Signal.send``, :func:`dispatch` calls every receiver even when one
raises: the failure is counted and logged once per cause.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from blinker import NamedSignal, Namespace

from . import _stats as stats
from .event import AuditEvent

__all__ = [
    "dispatch",
    "divert",
    "emit",
    "event_delivered",
    "event_dropped",
    "event_emitted",
    "event_failed",
    "event_invalid",
    "namespace",
    "report_delivered",
    "report_dropped",
    "report_failed",
]

namespace = Namespace()

event_emitted: NamedSignal = namespace.signal(
    "event-emitted", doc="Sent with each finished event as sender; senders listen here."
)
event_delivered: NamedSignal = namespace.signal(
    "event-delivered",
    doc="Return path: an event was accepted by its destination. kwargs: destination.",
)
event_failed: NamedSignal = namespace.signal(
    "event-failed",
    doc="Return path: an event could not be delivered and was given up. "
    "kwargs: destination, error.",
)
event_dropped: NamedSignal = namespace.signal(
    "event-dropped",
    doc="Return path: an event was dropped before delivery (queue full, shut down). "
    "kwargs: destination, reason.",
)
event_invalid: NamedSignal = namespace.signal(
    "event-invalid",
    doc="An instrumented call could not build its event. Sender: the action; kwargs: error.",
)


class _Receivers:
    """The receivers of one signal, kept between sends.

    ``Signal.receivers_for`` builds a set per send (~1 µs, measured by
    ``benchmarks/bench_core.py``), and events are sent far more often than
    receivers change. The kept tuple is dropped when a receiver connects
    (blinker's ``receiver_connected``) or the number of receivers changes
    (a disconnect, a collected weak receiver). It is kept only while every
    receiver is held strongly and listens to every sender; otherwise each
    send asks blinker.
    """

    __slots__ = ("count", "kept", "signal")

    def __init__(self, signal: NamedSignal) -> None:
        self.signal = signal
        self.kept: tuple[Any, ...] | None = None
        self.count = 0
        signal.receiver_connected.connect(self._forget, weak=False)

    def _forget(self, *args: Any, **kwargs: Any) -> None:
        self.kept = None

    def find(self, sender: Any) -> tuple[Any, ...]:
        """Ask blinker (and keep the answer when it holds for every sender)."""
        signal = self.signal
        found = tuple(signal.receivers_for(sender))
        everyone = tuple(signal.receivers_for(_NOBODY))
        strong = not any(isinstance(r, weakref.ref) for r in signal.receivers.values())
        if strong and len(everyone) == len(signal.receivers):
            self.kept, self.count = everyone, len(everyone)
        return found


_NOBODY = object()  # a sender no receiver is connected to
_receivers: dict[NamedSignal, _Receivers] = {}


def dispatch(signal: NamedSignal, sender: Any, **kwargs: Any) -> int:
    """Call each receiver of ``signal`` for ``sender``; return how many raised.

    A receiver that raises does not stop the others: the failure is counted
    in :func:`~audit_instrument.stats` and logged once per receiver.
    """
    if not signal.receivers:
        return 0
    receivers = _receivers.get(signal)
    if receivers is None:
        receivers = _receivers[signal] = _Receivers(signal)
    kept = receivers.kept
    if kept is None or receivers.count != len(signal.receivers):
        kept = receivers.find(sender)
    failures = 0
    for receiver in kept:
        try:
            receiver(sender, **kwargs)
        except Exception as error:
            failures += 1
            stats.note_failure(
                f"receiver {receiver!r} of {signal.name}",
                f"receiver {receiver!r} of {signal.name} failed: {type(error).__name__}",
                error=error,
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
    stats.count_emitted()
    diverted = _diverted.get()
    if diverted is None:
        dispatch(event_emitted, event)
    else:
        diverted(event)


def emit_built(event: AuditEvent) -> None:
    """:func:`emit` for an event instrumentation just built (counted as built too)."""
    stats.count_built()
    stats.count_emitted()
    diverted = _diverted.get()
    if diverted is None:
        dispatch(event_emitted, event)
    else:
        diverted(event)


_diverted: ContextVar[Callable[[AuditEvent], None] | None] = ContextVar(
    "audit_instrument_diverted", default=None
)


@contextmanager
def divert(take: Callable[[AuditEvent], None]) -> Iterator[None]:
    """Inside the block, events emitted in this context go to ``take`` instead of the senders.

    ``take`` decides when (and whether) they reach :data:`event_emitted`: the
    PostgreSQL store's ``in_transaction`` writes them in the caller's
    transaction and hands them to the other senders once it has committed.
    """
    token = _diverted.set(take)
    try:
        yield
    finally:
        _diverted.reset(token)


# -- the return path: what senders and engines report ------------------------------------------
def report_delivered(event: AuditEvent, destination: object) -> None:
    """``destination`` accepted (or stored) ``event``: count it and tell :data:`event_delivered`."""
    stats.count_delivered(destination)
    dispatch(event_delivered, event, destination=destination)


def report_failed(event: AuditEvent, destination: object, error: Exception) -> None:
    """``destination`` gave up on ``event``: count it and tell :data:`event_failed`."""
    stats.count_failed(destination)
    dispatch(event_failed, event, destination=destination, error=error)


def report_dropped(event: AuditEvent, destination: object, reason: str) -> None:
    """``destination`` dropped ``event`` before delivery: count it, tell :data:`event_dropped`."""
    stats.count_dropped(destination)
    dispatch(event_dropped, event, destination=destination, reason=reason)
