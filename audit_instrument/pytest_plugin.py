"""The pytest plugin: the ``audit_events`` fixture (entry point ``pytest11``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .testing import CapturedEvents, capture_events


@pytest.fixture
def audit_events() -> Iterator[CapturedEvents]:
    """Events emitted during the test, captured in memory."""
    with capture_events() as events:
        yield events
