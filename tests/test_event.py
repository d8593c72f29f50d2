"""AuditEvent: the seed's JSON, validation rules, round trips."""

from __future__ import annotations

import json
import math
import random
import uuid
from dataclasses import FrozenInstanceError, replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from audit_instrument import ActionType, AuditError, AuditEvent, AuditValidationError

SEED_1 = (
    '{"group":"user_1","action":"tweet.update","action_type":"U",'
    '"actor_name":"user@email.com","actor_id":"user_1",'
    '"target_name":"user@email.com","target_id":"tweet_5","location":"",'
    '"occurred_at":"2019-05-01T01:15:55.619355Z",'
    '"metadata":{"body_was":"What time is the event","body":"What time is the event?"}}'
)


def seed_1() -> AuditEvent:
    return AuditEvent(
        group="user_1",
        action="tweet.update",
        action_type="U",
        actor_name="user@email.com",
        actor_id="user_1",
        target_name="user@email.com",
        target_id="tweet_5",
        location="",
        occurred_at=datetime(2019, 5, 1, 1, 15, 55, 619355, tzinfo=UTC),
        metadata={"body_was": "What time is the event", "body": "What time is the event?"},
    )


def seed_2() -> AuditEvent:
    return AuditEvent(
        group="organization_1",
        action="user.login",
        action_type="C",
        actor_name="user@email.com",
        actor_id="user_1",
        target_name="user@email.com",
        target_id="user_1",
        location="",
        occurred_at=datetime(1970, 1, 1, tzinfo=UTC),
    )


def valid(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = dict(
        group="organization_1",
        action="user.login",
        action_type="C",
        actor_name="user@email.com",
        actor_id="user_1",
        target_name="user@email.com",
        target_id="user_1",
    )
    fields.update(changes)
    return fields


def test_seed_example_1_serialises_exactly() -> None:
    event = seed_1()
    assert json.dumps(event.to_dict(), separators=(",", ":")) == SEED_1
    assert list(event.to_dict()) == list(json.loads(SEED_1))


def test_seed_example_2_serialises_exactly() -> None:
    assert seed_2().to_dict() == {
        "group": "organization_1",
        "action": "user.login",
        "action_type": "C",
        "actor_name": "user@email.com",
        "actor_id": "user_1",
        "target_name": "user@email.com",
        "target_id": "user_1",
        "location": "",
        "occurred_at": "1970-01-01T00:00:00.000000Z",
        "metadata": {},
    }


def test_event_is_frozen_and_slotted() -> None:
    event = seed_1()
    with pytest.raises(FrozenInstanceError):
        event.group = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        event.metadata["body"] = "edited"  # type: ignore[index]
    assert not hasattr(event, "__dict__")


def test_defaults_now_empty_metadata_and_a_uuid4_key() -> None:
    before = datetime.now(UTC)
    event = AuditEvent(**valid())  # type: ignore[arg-type]
    assert before <= event.occurred_at <= datetime.now(UTC)
    assert event.metadata == {}
    assert uuid.UUID(event.idempotency_key).version == 4
    assert event.idempotency_key != AuditEvent(**valid()).idempotency_key  # type: ignore[arg-type]
    assert replace(event, location="1.1.1.1").idempotency_key == event.idempotency_key


def test_keys_are_unique_across_many_events() -> None:
    keys = {AuditEvent(**valid()).idempotency_key for _ in range(3000)}  # type: ignore[arg-type]
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
    ],
)
def test_occurred_at_accepts_naive_aware_and_iso(given: object, expected: str) -> None:
    assert AuditEvent(**valid(occurred_at=given)).to_dict()["occurred_at"] == expected  # type: ignore[arg-type]


def test_round_trip_is_lossless() -> None:
    event = replace(
        seed_1(),
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
        {"location": "\ud800 lone surrogate", "actor_name": "\x7f\x1f"},
        {"occurred_at": datetime(1999, 12, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-5)))},
        {"occurred_at": datetime(2020, 1, 1)},  # whole second: still six digits
        {
            "metadata": {
                "s": "x\"y", "t": True, "f": False, "i": -(10**30), "z": 0, "fl": -0.0,
                "e": 1.5e-300, "big": 1e300, "d": datetime(2020, 1, 1, 1, 1, 1, 7, tzinfo=UTC),
                "m": {}, "nested": {"k\u00e9y": "v", "n": 2.5, "at": datetime(2021, 6, 1)},
            }
        },
    ],
)
def test_to_json_is_exactly_json_dumps_of_to_record(changes: dict[str, object]) -> None:
    event = AuditEvent(**valid(**changes))  # type: ignore[arg-type]
    expected = json.dumps(event.to_record(), ensure_ascii=False, separators=(",", ":"))
    assert event.to_json() == expected
    assert AuditEvent.from_dict(json.loads(event.to_json())) == event


def test_to_json_matches_json_dumps_on_random_events() -> None:
    rng = random.Random(1234)
    alphabet = "aZ09 \"\\/\n\r\t\b\f\x00\x1f\x7f\u00e9\u2028\u2029\ud800\udfff\U0001f600"

    def text(low: int = 0) -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(low, 12)))

    def primitive() -> object:
        return rng.choice([
            text(), rng.random() < 0.5, rng.randint(-(10**20), 10**20),
            rng.uniform(-1e9, 1e9), rng.choice([0.0, -0.0, 1e-320, 1.7976931348623157e308]),
            datetime(2020, 1, 1, tzinfo=UTC) + timedelta(microseconds=rng.randint(0, 10**15)),
        ])

    for _ in range(300):
        metadata: dict[str, object] = {}
        for _ in range(rng.randint(0, 6)):
            key = text(1)[:40]
            metadata[key] = ({text(1)[:40]: primitive() for _ in range(rng.randint(0, 3))}
                             if rng.random() < 0.2 else primitive())
        event = AuditEvent(**valid(group=text(1), actor_name=text(1), target_id=text(1),
                                   location=text(), user_agent=text(), metadata=metadata))
        expected = json.dumps(event.to_record(), ensure_ascii=False, separators=(",", ":"))
        assert event.to_json() == expected


def test_from_dict_rejects_unknown_and_missing_keys() -> None:
    data = seed_1().to_dict()
    with pytest.raises(AuditValidationError, match="unknown keys \\['extra'\\]"):
        AuditEvent.from_dict({**data, "extra": 1})
    del data["actor_id"]
    with pytest.raises(AuditValidationError, match="actor_id: required key is missing"):
        AuditEvent.from_dict(data)


def test_validation_error_is_an_audit_error_and_a_value_error() -> None:
    with pytest.raises(AuditValidationError) as caught:
        AuditEvent(**valid(action="login"))  # type: ignore[arg-type]
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
    ],
)
def test_each_rule_fails_with_field_and_rule(
    changes: dict[str, object], field: str, rule: str
) -> None:
    with pytest.raises(AuditValidationError) as caught:
        AuditEvent(**valid(**changes))  # type: ignore[arg-type]
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
    event = AuditEvent(**valid(**changes))  # type: ignore[arg-type]
    assert AuditEvent.from_dict(event.to_record()) == event


def test_action_type_enum_and_string_are_the_same() -> None:
    event = AuditEvent(**valid(action_type=ActionType.CREATE))  # type: ignore[arg-type]
    assert event.action_type is ActionType.CREATE
    assert event == replace(event, action_type="C")  # type: ignore[arg-type]
    assert event.to_dict()["action_type"] == "C"


def test_metadata_is_copied_not_shared() -> None:
    metadata = {"a": 1}
    event = AuditEvent(**valid(metadata=metadata))  # type: ignore[arg-type]
    metadata["a"] = 2
    assert event.metadata["a"] == 1


def test_audit_logs_mapping() -> None:
    event = replace(seed_1(), location="1.1.1.1", user_agent="agent/1")
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
    text = repr(seed_1())
    assert "tweet.update" in text and "idempotency_key" not in text
