"""Hostile input, fuzzed, at the instrumentation's entry points.

``audit_actor``/``set_actor``/``audit_scope`` raise AuditValidationError or
bind a sound actor; ``@audit`` whose resolvers return anything never breaks
the business call: the event is recorded sound, or counted as invalid — and
in strict mode only AuditValidationError reaches the caller.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_event_fuzz import _check_sound, anything, metadata, strings, targets

from audit_instrument import (
    AuditError,
    AuditValidationError,
    audit,
    audit_actor,
    audit_scope,
    configure,
    current_context,
    set_actor,
    stats,
)
from audit_instrument.senders import MemorySender

users = st.one_of(
    st.none(), anything, strings,
    st.fixed_dictionaries({"id": strings}, optional={"email": strings, "name": anything}),
    st.tuples(strings, strings), st.tuples(strings), st.integers(), st.floats(),
)


@settings(max_examples=150, deadline=None)
@given(users, st.one_of(st.none(), strings))
def test_audit_actor_and_set_actor_bind_or_refuse(user: Any, group: Any) -> None:
    for bind in (lambda: audit_actor(user, group=group),
                 lambda: audit_scope(group=group)):
        try:
            block = bind()
        except AuditValidationError:
            continue
        with block:
            try:
                set_actor(user)
            except AuditValidationError:
                pass
            context = current_context()
            assert context.actor_id is None or isinstance(context.actor_id, str)
            assert context.actor_name is None or isinstance(context.actor_name, str)


@settings(max_examples=100, deadline=None)
@given(target=st.one_of(anything, targets, strings), actor=users, group=strings,
       extra=metadata)
def test_audit_resolvers_returning_anything_never_break_the_call(
    target: Any, actor: Any, group: Any, extra: Any
) -> None:
    memory = MemorySender()
    configure(memory, strict=False)
    before = sum(stats().invalid.values())

    @audit("doc.read", "R", target=lambda: target, actor=lambda: actor, group=lambda: group,
           metadata=lambda: extra)
    def read() -> str:
        return "business result"

    with audit_actor({"id": "user_1"}, group="org_1"):
        assert read() == "business result"
    invalid = sum(stats().invalid.values()) - before
    assert len(memory.events) + invalid == 1
    for event in memory.events:
        _check_sound(event)
    configure(memory, strict=True)
    with audit_actor({"id": "user_1"}, group="org_1"):
        try:
            assert read() == "business result"
        except AuditError as error:
            assert isinstance(error, AuditValidationError)


@pytest.mark.parametrize("bad", [object(), {"no": "id"}, 3.5, ("a", "b", "c")])
def test_a_bad_actor_from_a_resolver_is_invalid_not_a_crash(bad: object) -> None:
    memory = MemorySender()
    configure(memory)

    @audit("doc.read", "R", actor=lambda: bad)
    def read() -> int:
        return 7

    with audit_scope(group="org_1"):
        assert read() == 7
    assert memory.events == [] and sum(stats().invalid.values()) == 1
