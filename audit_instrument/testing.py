"""Helpers for testing code instrumented with audit_instrument.

>>> from audit_instrument.testing import capture_events
>>> with capture_events() as events:
...     pass  # call instrumented code here
>>> events.actions
[]

With pytest, the ``audit_events`` fixture (registered automatically through
the ``pytest11`` entry point) gives the same object for one test.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import signals
from .event import AuditEvent
from .senders.memory import MemorySender

__all__ = ["CapturedEvents", "capture_events"]


class CapturedEvents(MemorySender):
    """The events captured so far, with a few helpers for assertions."""

    @property
    def actions(self) -> list[str]:
        """The ``action`` of each event, in order."""
        return [event.action for event in self.events]

    def find(self, **fields: Any) -> list[AuditEvent]:
        """The events whose attributes equal every given value."""
        return [
            event
            for event in self.events
            if all(getattr(event, name) == value for name, value in fields.items())
        ]

    def one(self, **fields: Any) -> AuditEvent:
        """The single event matching ``fields``; ``AssertionError`` otherwise."""
        found = self.find(**fields)
        assert len(found) == 1, (
            f"expected one event matching {fields}, found {len(found)}: {self.actions}"
        )
        return found[0]

    def __repr__(self) -> str:
        return f"<CapturedEvents {self.actions}>"

    def _receive(self, event: AuditEvent) -> None:
        self.send(event)


@contextmanager
def capture_events() -> Iterator[CapturedEvents]:
    """Collect every event emitted inside the block (alongside configured senders)."""
    captured = CapturedEvents()
    signals.event_emitted.connect(captured._receive, weak=False)
    try:
        yield captured
    finally:
        signals.event_emitted.disconnect(captured._receive)
