"""Process-wide settings: which senders receive events, strict mode, masking.

>>> from audit_instrument import configure
>>> from audit_instrument.senders import LoggingSender
>>> configure(LoggingSender())           # events now go to the "audit" logger
>>> configure()                          # ... and now nowhere
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from . import signals
from .context import resolve_party
from .errors import AuditConfigError
from .event import AuditEvent
from .rules import DEFAULT_MASK, MASKED, is_masked, set_mask  # the mask applies at build

__all__ = ["DEFAULT_MASK", "MASKED", "Sender", "Settings", "configure", "settings"]


@runtime_checkable
class Sender(Protocol):
    """Anything with ``send(event)``: it is connected to ``event_emitted``."""

    def send(self, event: AuditEvent) -> object: ...


@dataclass(slots=True)
class Settings:
    """The current configuration; read it, change it through :func:`configure`."""

    strict: bool = False
    mask: tuple[str, ...] = DEFAULT_MASK
    system_actor: tuple[str, str] | None = None
    senders: tuple[object, ...] = ()
    warned_no_receivers: bool = False

    def is_masked(self, key: str) -> bool:
        """Whether metadata under ``key`` must be replaced with ``"[masked]"``."""
        return is_masked(key)


settings = Settings()
_lock = threading.Lock()
_connected: list[Callable[..., Any]] = []
_UNSET: Any = object()


def _takes_one_argument(fn: Callable[..., Any]) -> bool:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return True
    try:
        signature.bind(object())
    except TypeError:
        return False
    return True


def _send_of(sender: object) -> Callable[..., Any] | None:
    """What takes the events of ``sender``: its ``send``, or itself if callable; else None.

    A class is not a sender (``configure(MemorySender)`` forgot the
    parentheses), and neither is a callable that cannot take one event.
    """
    if isinstance(sender, type):
        return None
    send = sender.send if isinstance(sender, Sender) else sender
    if callable(send) and _takes_one_argument(send):
        return send
    return None


def _receiver(sender: object) -> Callable[..., Any]:
    send = _send_of(sender)
    if send is not None:
        return send
    if isinstance(sender, type):
        problem = f"{sender.__name__} is a class, not a sender: did you mean {sender.__name__}()?"
    elif callable(sender) or isinstance(sender, Sender):
        problem = f"{sender!r} cannot be called with one event"
    else:
        problem = f"{sender!r} has no send(event) method and is not callable"
    raise AuditConfigError(
        f"configure() takes senders (objects with .send(event), or callables taking an "
        f"event): {problem}"
    )


def configure(
    *senders: object,
    strict: bool = _UNSET,
    mask: Iterable[str] = _UNSET,
    system_actor: object = _UNSET,
) -> None:
    """Connect ``senders`` to :data:`signals.event_emitted`, replacing the previous set.

    Senders are held strongly (they don't vanish with their last reference).
    ``strict=True`` makes instrumentation raise :class:`AuditValidationError`
    from the business call instead of logging it — for tests and development.
    ``mask`` lists patterns of metadata keys whose values are replaced with
    ``"[masked]"`` when an event is built (default :data:`DEFAULT_MASK`;
    matching ignores case and punctuation: see :func:`rules.is_masked`).
    ``system_actor`` (an object, mapping or ``(id, name)``) is the actor of
    events built outside any :func:`audit_actor` block, for background jobs.
    Receivers connected to the signal directly are left alone.
    """
    receivers = [_receiver(sender) for sender in senders]
    actor = resolve_party(system_actor, "system_actor") if system_actor is not _UNSET else None
    if mask is not _UNSET:
        settings.mask = set_mask(mask)  # refuses a bad mask before anything else changes
    with _lock:
        for receiver in _connected:
            signals.event_emitted.disconnect(receiver)
        _connected.clear()
        for receiver in receivers:
            signals.event_emitted.connect(receiver, weak=False)
            _connected.append(receiver)
        settings.senders = senders
        settings.warned_no_receivers = False
        if strict is not _UNSET:
            settings.strict = bool(strict)
        if system_actor is not _UNSET:
            settings.system_actor = actor


def reset() -> None:
    """Back to defaults: no senders, not strict, default mask, no system actor."""
    configure(strict=False, mask=DEFAULT_MASK, system_actor=None)
