"""AuditEvent: the legacy POST /events JSON, validation rules, round trips."""

from __future__ import annotations

import json
import math
import random
import shutil
import sqlite3
import uuid
from dataclasses import FrozenInstanceError, fields, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from support.events import (
    TWEET_UPDATE_JSON,
    USER_LOGIN,
    make_event,
    tweet_update_example,
    user_login_example,
)

from audit_instrument import ActionType, AuditError, AuditEvent, AuditStore, AuditValidationError
from audit_instrument._json import canonical_json
from audit_instrument.event import Target, _build_event, _EventTwin, _TargetTwin
from audit_instrument.store import canonical_json as store_canonical_json

DATA = Path(__file__).with_name("data")

def test_tweet_update_example_serialises_exactly() -> None:
    event = tweet_update_example()
    assert json.dumps(event.to_dict(), separators=(",", ":")) == TWEET_UPDATE_JSON
    assert list(event.to_dict()) == list(json.loads(TWEET_UPDATE_JSON))


def test_user_login_example_serialises_exactly() -> None:
    assert json.dumps(user_login_example().to_dict()) == json.dumps(USER_LOGIN)


def test_event_is_frozen_and_slotted() -> None:
    event = tweet_update_example()
    with pytest.raises(FrozenInstanceError):
        event.group = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.metadata["body"] = "edited"  # type: ignore[index]
    assert not hasattr(event, "__dict__")


def test_defaults_now_empty_metadata_and_a_uuid4_key() -> None:
    before = datetime.now(UTC)
    event = make_event(occurred_at=None, metadata=None)
    assert before <= event.occurred_at <= datetime.now(UTC)
    assert event.metadata == {}
    assert uuid.UUID(event.idempotency_key).version == 4
    assert event.idempotency_key != make_event().idempotency_key
    assert replace(event, location="1.1.1.1").idempotency_key == event.idempotency_key


def test_keys_are_unique_across_many_events() -> None:
    keys = {make_event().idempotency_key for _ in range(3000)}
    assert len(keys) == 3000


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (datetime(2019, 5, 1, 1, 15, 55, 619355), "2019-05-01T01:15:55.619355Z"),  # naive = UTC
        (
            datetime(2019, 5, 1, 3, 15, 55, 619355, tzinfo=timezone(timedelta(hours=2))),
            "2019-05-01T01:15:55.619355Z",
        ),
        ("2019-05-01T01:15:55.619355Z", "2019-05-01T01:15:55.619355Z"),
        ("2019-05-01T03:15:55+02:00", "2019-05-01T01:15:55.000000Z"),
        (datetime(1970, 1, 1, tzinfo=UTC), "1970-01-01T00:00:00.000000Z"),
    ],
)
def test_occurred_at_accepts_naive_aware_and_iso(given: object, expected: str) -> None:
    assert make_event(occurred_at=given).to_dict()["occurred_at"] == expected


def test_round_trip_is_lossless() -> None:
    event = replace(
        tweet_update_example(),
        user_agent="Mozilla/5.0",
        metadata={
            "when": datetime(2020, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            "count": 3,
            "ratio": 0.5,
            "ok": True,
            "nested": {"a": "b", "at": datetime(2021, 1, 1, tzinfo=UTC)},
        },
    )
    back = AuditEvent.from_dict(json.loads(json.dumps(event.to_record())))
    assert back == event
    assert back.idempotency_key == event.idempotency_key
    assert AuditEvent.from_dict(event.to_dict()).to_dict() == event.to_dict()


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"metadata": {}},
        {"group": 'quote " backslash \\ newline \n tab \t nul \x00',
         "user_agent": "caf\u00e9 \u2028 \U0001f600"},
        {"location": "\U0010ffff private use", "actor_name": "\x7f\x1f"},
        {"occurred_at": datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))},
        {"occurred_at": datetime(2020, 1, 1)},  # whole second: still six digits
        {
            "metadata": {
                "s": "x\"y", "t": True, "f": False, "i": -(2**63), "j": 2**63 - 1, "z": 0,
                "fl": -0.0,
                "e": 1.5e-300, "big": 1e300, "d": datetime(2020, 1, 1, 1, 1, 1, 7, tzinfo=UTC),
                "m": {}, "nested": {"k\u00e9y": "v", "n": 2.5, "at": datetime(2021, 6, 1)},
            }
        },
    ],
)
def test_to_json_is_exactly_json_dumps_of_to_record(changes: dict[str, object]) -> None:
    event = make_event(**changes)
    expected = json.dumps(event.to_record(), ensure_ascii=False, separators=(",", ":"))
    assert event.to_json() == expected
    assert AuditEvent.from_dict(json.loads(event.to_json())) == event


def test_to_json_matches_json_dumps_on_random_events() -> None:
    rng = random.Random(1234)
    alphabet = "aZ09 \"\\/\n\r\t\b\f\x00\x1f\x7f\u00e9\u2028\u2029\U0001f600"

    def text(low: int = 0) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, 12)))

    def primitive() -> object:
        return rng.choice([
            text(), rng.random() < 0.5, rng.randint(-(2**63), 2**63 - 1),
            rng.uniform(-1e9, 1e9), rng.choice([0.0, -0.0, 1e-320, 1.7976931348623157e308]),
            datetime(2020, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randint(0, 10**15)),
        ])

    for _ in range(300):
        metadata: dict[str, object] = {}
        for _ in range(rng.randint(0, 6)):
            key = text(1)[:40]
            metadata[key] = ({text(1)[:40]: primitive() for _ in range(rng.randint(0, 3))}
                             if rng.random() < 0.2 else primitive())
        event = make_event(group=text(1), actor_name=text(1), target_id=text(1),
                           location=text(), user_agent=text(), metadata=metadata)
        expected = json.dumps(event.to_record(), ensure_ascii=False, separators=(",", ":"))
        assert event.to_json() == expected


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    data = tweet_update_example().to_dict()
    with pytest.raises(AuditValidationError, match="unknown keys \\['extra'\\]"):
        AuditEvent.from_dict({**data, "extra": 1})
    del data["actor_id"]
    with pytest.raises(AuditValidationError, match="actor_id: required key is missing"):
        AuditEvent.from_dict(data)


def test_validation_error_is_an_audit_error_and_a_value_error() -> None:
    with pytest.raises(AuditValidationError) as caught:
        make_event(action="login")
    assert isinstance(caught.value, AuditError)
    assert isinstance(caught.value, ValueError)
    assert caught.value.field == "action"
    assert "category.name" in caught.value.rule


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"action": "login"}, "action", "category.name"),
        ({"action": "user."}, "action", "category.name"),
        ({"action": ".login"}, "action", "category.name"),
        ({"action": "user..login"}, "action", "category.name"),
        ({"action": "user.log in"}, "action", "category.name"),
        ({"action_type": "X"}, "action_type", "one of"),
        ({"action_type": "c"}, "action_type", "one of"),
        ({"group": ""}, "group", "required"),
        ({"actor_id": ""}, "actor_id", "required"),
        ({"actor_name": None}, "actor_name", "required"),
        ({"target_id": 5}, "target_id", "required"),
        ({"target_name": ""}, "target_name", "required"),
        ({"location": None}, "location", "must be a string"),
        ({"occurred_at": "yesterday"}, "occurred_at", "ISO 8601"),
        ({"metadata": ["a"]}, "metadata", "mapping"),
        ({"metadata": {"tags": ["a", "b"]}}, "metadata.tags", "values must be"),
        ({"metadata": {"obj": object()}}, "metadata.obj", "values must be"),
        ({"metadata": {"none": None}}, "metadata.none", "values must be"),
        ({"metadata": {"nan": math.nan}}, "metadata.nan", "finite"),
        ({"metadata": {"inf": math.inf}}, "metadata.inf", "finite"),
        ({"metadata": {"a": {"b": {"c": 1}}}}, "metadata.a.b", "one level"),
        ({"metadata": {f"k{i}": i for i in range(51)}}, "metadata", "at most 50 keys"),
        ({"metadata": {"x" * 41: 1}}, "metadata." + "x" * 41, "at most 40"),
        ({"metadata": {"long": "x" * 501}}, "metadata.long", "at most 500"),
        ({"metadata": {"m": {"long": "x" * 501}}}, "metadata.m.long", "at most 500"),
        ({"metadata": {"m": {f"k{i}": i for i in range(51)}}}, "metadata.m", "at most 50"),
        ({"metadata": {"": 1}}, "metadata", "non-empty"),
        ({"group": "\ud800"}, "group", "lone surrogates"),
        ({"actor_id": "user_\udfff"}, "actor_id", "lone surrogates"),
        ({"target_name": "\ud83d"}, "target_name", "lone surrogates"),
        ({"location": "\ud800"}, "location", "lone surrogates"),
        ({"user_agent": "agent \ud800"}, "user_agent", "lone surrogates"),
        ({"metadata": {"k\ud800": 1}}, "metadata", "lone surrogates"),
        ({"metadata": {"k": "v\ud800"}}, "metadata.k", "lone surrogates"),
        ({"metadata": {"m": {"k": "\udc80"}}}, "metadata.m.k", "lone surrogates"),
        ({"metadata": {"n": 2**63}}, "metadata.n", "64 bits"),
        ({"metadata": {"n": -(2**63) - 1}}, "metadata.n", "64 bits"),
        ({"metadata": {"n": 10**5000}}, "metadata.n", "64 bits"),
        ({"metadata": {"m": {"n": 10**30}}}, "metadata.m.n", "64 bits"),
        ({"group": 10**5000}, "group", "required"),
        ({"occurred_at": "0001-01-01T00:00:00+01:00"}, "occurred_at", "exists in UTC"),
        ({"occurred_at": datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2)))},
         "occurred_at", "exists in UTC"),
        ({"metadata": {"at": datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))}},
         "metadata.at", "exists in UTC"),
        ({"version": 0}, "version", "positive integer"),
        ({"version": True}, "version", "positive integer"),
        ({"version": 2**63}, "version", "positive integer"),
        ({"actor_type": ""}, "actor_type", "required"),
        ({"idempotency_key": "line\r\nbreak"}, "idempotency_key", "visible ASCII"),
        ({"idempotency_key": "x" * 256}, "idempotency_key", "at most 255"),
        ({"idempotency_key": 5}, "idempotency_key", "visible ASCII"),
    ],
)
def test_each_rule_fails_with_field_and_rule(
    changes: dict[str, object], field: str, rule: str
) -> None:
    with pytest.raises(AuditValidationError) as caught:
        make_event(**changes)
    assert caught.value.field == field
    assert rule in caught.value.rule
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize(
    "changes",
    [
        {"action": "user.login"},
        {"action": "a.b.c"},
        {"action_type": ActionType.DELETE},
        {"action_type": "R"},
        {"location": ""},
        {"metadata": {f"k{i}": i for i in range(50)}},
        {"metadata": {"x" * 40: "y" * 500}},
        {"metadata": {"m": {"a": 1, "b": True, "c": 1.5, "d": "s"}}},
        {"metadata": {"when": datetime(2020, 1, 1)}},
    ],
)
def test_each_rule_passes_at_its_limit(changes: dict[str, object]) -> None:
    event = make_event(**changes)
    assert AuditEvent.from_dict(event.to_record()) == event


def test_action_type_enum_and_string_are_the_same() -> None:
    event = make_event(action_type=ActionType.CREATE)
    assert event.action_type is ActionType.CREATE
    assert event == replace(event, action_type="C")  # type: ignore[arg-type]
    assert event.to_dict()["action_type"] == "C"


def test_metadata_is_copied_not_shared() -> None:
    metadata = {"a": 1}
    event = make_event(metadata=metadata)
    metadata["a"] = 2
    assert event.metadata["a"] == 1


def test_audit_logs_mapping() -> None:
    event = tweet_update_example(location="1.1.1.1", user_agent="agent/1")
    body = event.to_audit_logs_dict()
    assert body == {
        "organization_id": "user_1",
        "event": {
            "action": "tweet.update",
            "occurred_at": "2019-05-01T01:15:55.619Z",
            "actor": {"id": "user_1", "type": "user", "name": "user@email.com"},
            "targets": [{"id": "tweet_5", "type": "tweet", "name": "user@email.com"}],
            "context": {"location": "1.1.1.1", "user_agent": "agent/1"},
            "metadata": {"body_was": "What time is the event", "body": "What time is the event?"},
        },
    }
    custom = event.to_audit_logs_dict(actor_type="service", target_type="post", version=2)
    assert custom["event"]["actor"]["type"] == "service"
    assert custom["event"]["targets"][0]["type"] == "post"
    assert custom["event"]["version"] == 2


def test_repr_hides_nothing_secret_and_is_readable() -> None:
    text = repr(tweet_update_example())
    assert "tweet.update" in text and "idempotency_key" not in text


def test_every_string_that_passes_encodes_as_utf8() -> None:
    event = make_event(group="caf\u00e9 \U0001f600", metadata={"k\u00e9": "\u2028"})
    event.to_json().encode("utf-8")
    assert AuditEvent.from_dict(json.loads(event.to_json())) == event


def test_ints_at_the_64_bit_limits_round_trip() -> None:
    event = make_event(metadata={"low": -(2**63), "high": 2**63 - 1, "m": {"x": 2**62}})
    assert AuditEvent.from_dict(json.loads(event.to_json())).metadata == event.metadata


def test_deeply_nested_metadata_is_a_validation_error_not_a_recursion_error() -> None:
    deep: dict[str, object] = {}
    inner = deep
    for _ in range(5000):
        inner["a"] = {}
        inner = inner["a"]  # type: ignore[assignment]
    data = tweet_update_example().to_record() | {"metadata": deep}
    with pytest.raises(AuditValidationError) as caught:
        AuditEvent.from_dict(data)
    assert caught.value.field == "metadata.a.a"
    with pytest.raises(AuditValidationError):
        make_event(metadata={"x": [deep]})  # a list value: shown in the error, safely


def test_a_timestamp_shaped_metadata_string_that_is_no_date_stays_a_string() -> None:
    data = tweet_update_example().to_record() | {"metadata": {"s": "2019-13-45T25:61:61.000000Z"}}
    assert AuditEvent.from_dict(data).metadata["s"] == "2019-13-45T25:61:61.000000Z"


def test_unknown_keys_that_cannot_be_printed_are_still_a_validation_error() -> None:
    with pytest.raises(AuditValidationError, match="unknown keys"):
        AuditEvent.from_dict({**USER_LOGIN, 10**5000: 1})


def test_errors_never_show_huge_values_whole() -> None:
    with pytest.raises(AuditValidationError) as caught:
        make_event(group=10**5000)
    assert "<int of 16610 bits>" in str(caught.value)
    with pytest.raises(AuditValidationError) as caught:
        make_event(metadata={"obj": ["x" * 10_000]})
    assert len(str(caught.value)) < 200


def test_repr_and_json_of_events_at_every_limit_do_not_raise() -> None:
    event = make_event(metadata={
        **{f"k{i}": "\U0001f600" * 500 for i in range(48)},
        "n": -(2**63), "m": {f"x{i}": 2**63 - 1 for i in range(50)},
    })
    assert repr(event).startswith("AuditEvent(")
    assert json.loads(event.to_json())["metadata"]["n"] == -(2**63)


def test_record_and_canonical_json_of_a_plain_event_are_unchanged() -> None:
    # captured from the code before targets, actor type and version existed:
    # stores and outboxes written then must read back, and stores verify
    event = AuditEvent(
        group="organization_1", action="tweet.update", action_type="U",
        actor_name="Zo\u00eb <user@email.com>", actor_id="user_1",
        target_name="user@email.com", target_id="tweet_5", location="203.0.113.5",
        occurred_at=datetime(2019, 5, 1, 3, 15, 55, 619355, tzinfo=timezone(timedelta(hours=2))),
        metadata={"body_was": "What time is the event",
                  "body": "What time is the event? \u2028\U0001f600", "count": 3, "ratio": 0.5,
                  "ok": True, "at": datetime(2020, 1, 2, 3, 4, 5, 6),
                  "nested": {"a": "b", "n": -7}},
        user_agent="Mozilla/5.0", idempotency_key="ea7ff041-d898-47d5-b185-21a47ed94098",
    )
    assert event.to_json() == (
        '{"group":"organization_1","action":"tweet.update","action_type":"U",'
        '"actor_name":"Zo\u00eb <user@email.com>","actor_id":"user_1",'
        '"target_name":"user@email.com","target_id":"tweet_5","location":"203.0.113.5",'
        '"occurred_at":"2019-05-01T01:15:55.619355Z","metadata":{"body_was":'
        '"What time is the event","body":"What time is the event? \u2028\U0001f600","count":3,'
        '"ratio":0.5,"ok":true,"at":"2020-01-02T03:04:05.000006Z","nested":{"a":"b","n":-7}},'
        '"user_agent":"Mozilla/5.0","idempotency_key":"ea7ff041-d898-47d5-b185-21a47ed94098"}'
    )
    assert canonical_json(event) == (
        '{"action":"tweet.update","action_type":"U","actor_id":"user_1",'
        '"actor_name":"Zo\u00eb <user@email.com>","group":"organization_1",'
        '"idempotency_key":"ea7ff041-d898-47d5-b185-21a47ed94098","location":"203.0.113.5",'
        '"metadata":{"at":"2020-01-02T03:04:05.000006Z",'
        '"body":"What time is the event? \u2028\U0001f600","body_was":"What time is the event",'
        '"count":3,"nested":{"a":"b","n":-7},"ok":true,"ratio":0.5},'
        '"occurred_at":"2019-05-01T01:15:55.619355Z","target_id":"tweet_5",'
        '"target_name":"user@email.com","user_agent":"Mozilla/5.0"}'
    )
    assert canonical_json(event) == store_canonical_json(event)


def test_a_store_written_before_targets_existed_verifies_and_reencodes_byte_for_byte(
    tmp_path: Path,
) -> None:
    # tests/data/store_before_targets.sqlite: 24 events (unicode, control characters,
    # 64-bit ints, datetimes, nested maps) written by the store before this model
    path = tmp_path / "store.sqlite"
    shutil.copyfile(DATA / "store_before_targets.sqlite", path)
    with AuditStore(path) as store:
        assert store.verify().ok
    with sqlite3.connect(path) as conn:
        records = [record for (record,) in conn.execute("SELECT record FROM events ORDER BY seq")]
    assert len(records) == 24
    for record in records:
        assert canonical_json(AuditEvent.from_dict(json.loads(record))) == record


def test_build_event_twin_has_the_frozen_classes_slots() -> None:
    # _build_event fills a mutable twin and gives it the frozen class: only
    # sound while both classes have exactly the same slots
    assert _EventTwin.__slots__ == AuditEvent.__slots__
    assert _TargetTwin.__slots__ == Target.__slots__
    assert set(AuditEvent.__slots__) == {f.name for f in fields(AuditEvent)}
    assert set(Target.__slots__) == {f.name for f in fields(Target)}


def test_build_event_gives_what_the_constructor_gives() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    built = _build_event("organization_1", "tweet.update", ActionType.UPDATE, "user@email.com",
                         "user_1", "author", "tweet_5", "1.1.1.1", at,
                         {"password": "hunter2", "m": {"token": "t", "n": 1}}, "agent/1")
    made = AuditEvent(group="organization_1", action="tweet.update", action_type="U",
                      actor_name="user@email.com", actor_id="user_1", target_name="author",
                      target_id="tweet_5", location="1.1.1.1", occurred_at=at,
                      metadata={"password": "hunter2", "m": {"token": "t", "n": 1}},
                      user_agent="agent/1", idempotency_key=built.idempotency_key)
    assert type(built) is AuditEvent and type(built.targets[0]) is Target
    assert built == made
    assert built.to_json() == made.to_json()
    assert built.metadata == {"password": "[masked]", "m": {"token": "[masked]", "n": 1}}
    with pytest.raises(FrozenInstanceError):
        built.group = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("position", "value", "field"),
    [
        (0, "", "group"),
        (0, "\ud800", "group"),
        (3, "\ud800", "actor_name"),
        (6, "tweet_\ud800", "target_id"),
        (7, None, "location"),
        (8, "yesterday", "occurred_at"),
        (9, {"n": 2**64}, "metadata.n"),
        (10, "\udfff", "user_agent"),
    ],
)
def test_build_event_validates_what_decoration_cannot(
    position: int, value: object, field: str
) -> None:
    parts: list[object] = ["organization_1", "tweet.update", ActionType.UPDATE, "user@email.com",
                           "user_1", "author", "tweet_5", "", None, None, ""]
    parts[position] = value
    with pytest.raises(AuditValidationError) as caught:
        _build_event(*parts)  # type: ignore[arg-type]
    assert caught.value.field == field
