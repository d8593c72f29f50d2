"""Fan-out: every receiver gets every event, a failing one is logged and skipped."""

from __future__ import annotations

import gc
import logging

import pytest
from support.events import make_event

from audit_instrument import AuditConfigError, AuditEvent, configure, emit, signals, stats
from audit_instrument.senders import MemorySender
from audit_instrument.testing import capture_events


def test_a_raising_receiver_does_not_block_the_others(caplog: pytest.LogCaptureFixture) -> None:
    first, last = MemorySender(), MemorySender()

    def broken(sent: AuditEvent) -> None:
        raise RuntimeError("receiver down")

    configure(first, broken, last)
    with caplog.at_level(logging.ERROR, logger="audit_instrument"):
        emit(make_event(action="user.login", action_type="C"))
        emit(make_event(action="user.login", action_type="C"))
    assert len(first) == 2 and len(last) == 2
    failures = [r for r in caplog.records if "of event-emitted failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info  # once per cause, with the traceback
    [(cause, count)] = stats().failures.items()
    assert "broken" in cause and count == 2


def test_configure_replaces_senders_and_holds_them_strongly() -> None:
    old, new = MemorySender(), MemorySender()
    configure(old)
    configure(new)
    del new
    gc.collect()
    emit(make_event(action="user.login", action_type="C"))
    assert len(old) == 0
    assert len(configure.__globals__["settings"].senders[0]) == 1


def test_configure_rejects_what_is_not_a_sender_at_once() -> None:
    with pytest.raises(AuditConfigError, match="42 has no send"):
        configure(42)
    with pytest.raises(AuditConfigError, match=r"MemorySender is a class.*MemorySender\(\)"):
        configure(MemorySender)
    with pytest.raises(AuditConfigError, match="cannot be called with one event"):
        configure(lambda: None)
    with pytest.raises(AuditConfigError, match="cannot be called with one event"):
        configure(lambda event, where: None)
    configure(lambda event, *rest: None, print)  # these can take an event


def test_direct_receivers_weak_and_strong_and_sender_specific() -> None:
    got: list[str] = []

    def strong(sent: AuditEvent) -> None:
        got.append("strong")

    class Listener:
        def __call__(self, sent: AuditEvent) -> None:
            got.append("weak")

    listener = Listener()
    signals.event_emitted.connect(strong, weak=False)
    signals.event_emitted.connect(listener)
    emit(make_event(action="user.login", action_type="C"))
    del listener
    gc.collect()
    emit(make_event(action="user.login", action_type="C"))
    assert got == ["strong", "weak", "strong"]

    invalid: list[object] = []
    signals.event_invalid.connect(
        lambda sender, error: invalid.append(sender), sender="a.b", weak=False
    )
    signals.dispatch(signals.event_invalid, "a.b", error=ValueError())
    signals.dispatch(signals.event_invalid, "c.d", error=ValueError())
    assert invalid == ["a.b"]


def test_emit_takes_events_only_and_capture_sees_them() -> None:
    with pytest.raises(TypeError, match="AuditEvent"):
        emit({"action": "user.login"})  # type: ignore[arg-type]
    with capture_events() as events:
        emit(make_event(action="user.login", action_type="C"))
    assert events.actions == ["user.login"]


def test_pytest_fixture_is_registered(audit_events: object) -> None:
    emit(make_event(action="user.login", action_type="C"))
    assert audit_events.actions == ["user.login"]  # type: ignore[attr-defined]
