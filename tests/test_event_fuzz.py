"""Hostile input, fuzzed: building an event raises AuditValidationError or gives a sound event.

"Sound": its repr, JSON forms and request bodies never raise, its JSON is
valid UTF-8, and it reads back equal. Anything else escaping (ValueError,
RecursionError, OverflowError, UnicodeEncodeError, ...) fails the test.
Example budgets are fixed so the file runs in a few seconds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.events import TWEET_UPDATE, make_event

from audit_instrument import AuditError, AuditEvent, AuditValidationError, Target
from audit_instrument._json import canonical_json, request_body
from audit_instrument.event import _build_event
from audit_instrument.rules import ActionType
from audit_instrument.senders.workos import WorkOS

LONE_SURROGATES = "\ud800\udbff\udc00\udfff"
# each field mixes values that pass with hostile ones, so both paths are exercised
text = st.text(st.one_of(st.characters(), st.sampled_from(LONE_SURROGATES)), max_size=60)
good_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=30)
long_text = st.integers(495, 505).map(lambda n: "x" * n)
offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59),
                        max_value=timedelta(hours=23, minutes=59)).map(timezone)
datetimes = st.one_of(
    st.datetimes(),
    st.datetimes(timezones=offsets),
    st.sampled_from([datetime.min.replace(tzinfo=timezone(timedelta(hours=1))),
                     datetime.max.replace(tzinfo=timezone(timedelta(hours=-1))),
                     datetime.min, datetime.max]),
)
timestamps = st.one_of(datetimes.map(datetime.isoformat), text,
                       st.sampled_from(["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00",
                                        "2019-05-01T01:15:55.619355Z", "2019-13-45T25:61:61Z"]))
ints = st.one_of(st.integers(), st.integers(-(2**63) - 2, -(2**63) + 2),
                 st.integers(2**63 - 2, 2**63 + 2),
                 st.sampled_from([5000, -5000]).map(lambda n: 10**n if n > 0 else -(10**-n)))
good_primitives = st.one_of(good_text, st.booleans(), st.integers(-(2**63), 2**63 - 1),
                            st.floats(allow_nan=False, allow_infinity=False),
                            st.datetimes(min_value=datetime(2, 1, 1), timezones=offsets))
primitives = st.one_of(good_primitives, text, long_text, ints, st.floats(), datetimes,
                       st.none(), st.binary(max_size=8), timestamps)


def _nest(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"a": value}
    return value


deep = st.integers(0, 3000).map(_nest)
good_keys = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
keys = st.one_of(good_keys, text, st.sampled_from(["password", "CreditCardNumber", "x" * 41, ""]),
                 ints, st.none())
values = st.recursive(primitives, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)), max_leaves=12)
good_metadata = st.dictionaries(good_keys, st.one_of(
    good_primitives, st.dictionaries(good_keys, good_primitives, max_size=3)), max_size=8)
metadata = st.one_of(
    good_metadata, good_metadata, good_metadata,
    st.dictionaries(keys, st.one_of(values, deep), max_size=8),
    st.integers(45, 55).map(lambda n: {f"k{i}": i for i in range(n)}),
    deep, values,
)
anything = st.one_of(values, metadata, deep)
strings = st.one_of(good_text, good_text, good_text, good_text, text, st.just(""), anything)
good_targets = st.lists(st.one_of(
    st.tuples(good_text, good_text),
    st.builds(Target, good_text, good_text, st.one_of(st.none(), good_text), good_metadata),
), min_size=1, max_size=4)
targets = st.one_of(good_targets, good_targets, st.lists(st.one_of(
    st.tuples(strings, strings),
    st.fixed_dictionaries({"id": strings, "name": strings},
                          optional={"type": strings, "metadata": metadata, "extra": anything}),
    anything,
), max_size=3))


def _check_sound(event: AuditEvent) -> None:
    assert repr(event)
    text_json = event.to_json()
    text_json.encode("utf-8")
    assert json.loads(text_json) == json.loads(json.dumps(event.to_record()))
    assert AuditEvent.from_dict(json.loads(text_json)) == event
    canonical_json(event).encode("utf-8")
    request_body(event.to_audit_logs_dict())
    try:
        request_body(event.to_dict())
    except AuditValidationError:  # more than the legacy format carries: refused, not cut
        assert event.targets[1:] or event.version is not None or event.actor_type is not None \
            or event.actor_metadata or event.targets[0].type is not None \
            or event.targets[0].metadata


def _build(build: Callable[[], AuditEvent]) -> None:
    try:
        event = build()
    except AuditError:
        hypothesis.event("refused")
        return
    hypothesis.event("built")
    _check_sound(event)


FIELDS = {
    "group": strings,
    "action": st.one_of(st.sampled_from(["tweet.update", "user.login", "a.b.c"]),
                        st.from_regex(r"[a-z]{1,8}\.[a-z_]{1,8}", fullmatch=True), strings),
    "action_type": st.one_of(st.sampled_from(["C", "R", "U", "D", *ActionType]), strings),
    "actor_name": strings, "actor_id": strings, "target_name": st.one_of(st.none(), strings),
    "target_id": st.one_of(st.none(), strings), "location": strings,
    "occurred_at": st.one_of(datetimes, timestamps, anything), "metadata": metadata,
    "user_agent": strings, "targets": targets, "actor_type": st.one_of(st.none(), strings),
    "actor_metadata": metadata, "version": st.one_of(st.none(), st.integers(1, 9), ints, anything),
    "idempotency_key": st.one_of(st.uuids().map(str), strings),
}


def _without_legacy_target(fields: dict[str, Any]) -> dict[str, Any]:
    """With ``targets`` drawn, the base event's target_id/target_name would disagree."""
    if "targets" in fields:
        return {"target_id": None, "target_name": None, **fields}
    return fields


changes = st.dictionaries(st.sampled_from(sorted(FIELDS)), st.none(), max_size=5).flatmap(
    lambda chosen: st.fixed_dictionaries({name: FIELDS[name] for name in chosen})
).map(_without_legacy_target)


@settings(max_examples=400, deadline=None)
@given(changes)
def test_constructor_raises_only_validation_errors(fields: dict[str, Any]) -> None:
    _build(lambda: make_event(**fields))


@settings(max_examples=400, deadline=None)
@given(changes, st.dictionaries(st.one_of(text, ints), anything, max_size=2))
def test_from_dict_raises_only_validation_errors(
    fields: dict[str, Any], extra: dict[Any, Any]
) -> None:
    data: dict[Any, Any] = {**TWEET_UPDATE, **fields}
    if extra and len(fields) % 2:
        data.update(extra)
    _build(lambda: AuditEvent.from_dict(data))


@settings(max_examples=300, deadline=None)
@given(st.fixed_dictionaries({}, optional={
    "group": strings, "location": strings, "occurred_at": st.one_of(datetimes, timestamps),
    "metadata": metadata, "user_agent": text,
}))
def test_build_event_raises_only_validation_errors(fields: dict[str, Any]) -> None:
    parts = {"group": "organization_1", "location": "", "occurred_at": None, "metadata": None,
             "user_agent": "", **fields}
    _build(lambda: _build_event(
        parts["group"], "tweet.update", ActionType.UPDATE, "user@email.com", "user_1",
        "author", "tweet_5", parts["location"], parts["occurred_at"], parts["metadata"],
        parts["user_agent"]))


@pytest.mark.parametrize("api", ["events", "audit_logs"])
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.one_of(changes.map(lambda fields: {**TWEET_UPDATE, **fields}), anything))
def test_workos_create_event_of_a_dict_raises_only_validation_errors(
    make_workos: Callable[..., WorkOS], api: str, data: Any
) -> None:
    workos = _senders.get(api)
    if workos is None:  # one sender for all the examples of this test
        workos = _senders[api] = make_workos(api=api, queue_size=100_000)
    try:
        workos.create_event(data)
    except AuditError:
        return
    assert isinstance(data, dict)
    body = workos.request_parts(AuditEvent.from_dict(data))[1]
    json.loads(body.decode("utf-8"))


_senders: dict[str, WorkOS] = {}


@pytest.fixture(autouse=True)
def _fresh_senders() -> None:
    _senders.clear()  # make_workos shuts its senders down after each test


@settings(max_examples=200, deadline=None)
@given(good_targets, good_metadata, good_metadata, st.one_of(st.none(), st.integers(1, 2**63 - 1)),
       st.one_of(st.none(), good_text), good_text, st.one_of(good_text, st.just("")))
def test_valid_parts_always_build_a_sound_event(
    targets: list[Any], metadata: dict[str, Any], actor_metadata: dict[str, Any],
    version: int | None, actor_type: str | None, group: str, location: str,
) -> None:
    # the other side of the fuzz: what follows every rule is never refused
    event = make_event(targets=targets, target_id=None, target_name=None, metadata=metadata,
                       actor_metadata=actor_metadata, version=version, actor_type=actor_type,
                       group=group, location=location, user_agent=location)
    assert len(event.targets) == len(targets)
    _check_sound(event)
