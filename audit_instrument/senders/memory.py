"""An in-memory sender: keeps every event in a list, for tests and demos."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator

from ..event import AuditEvent

__all__ = ["MemorySender"]


class MemorySender:
    """Collects events in order; safe to fill from several threads.

    >>> from audit_instrument import configure
    >>> memory = MemorySender()
    >>> configure(memory)
    >>> memory.events
    []
    """

    send: Callable[[AuditEvent], None]
    """Keep an event: the list's own ``append`` (atomic, and no Python frame per event)."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self._lock = threading.Lock()
        self.send = self.events.append

    def clear(self) -> None:
        """Forget what was kept."""
        with self._lock:
            self.events.clear()

    def __len__(self) -> int:
        return len(self.events)

    def __iter__(self) -> Iterator[AuditEvent]:
        return iter(list(self.events))

    def __getitem__(self, index: int) -> AuditEvent:
        return self.events[index]

    def __repr__(self) -> str:
        return f"<MemorySender events={len(self.events)}>"
