"""The current WorkOS event: several targets, actor type and metadata, version."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from support.events import TWEET_UPDATE, make_event, tweet_update_example
from support.workos_server import WorkOSServer

from audit_instrument import AuditEvent, AuditValidationError, Target
from audit_instrument._json import canonical_json, compact
from audit_instrument.event import _build_event
from audit_instrument.rules import ActionType
from audit_instrument.senders.workos import WorkOS

MakeWorkOS = Callable[..., WorkOS]


def several(**fields: Any) -> AuditEvent:
    """A tweet shared with a list: three targets, actor type and metadata, a version."""
    values: dict[str, Any] = {
        "targets": [
            Target("tweet_5", "What time is it?", type="tweet", metadata={"words": 4}),
            ("list_2", "Favourites"),
            {"id": "user_9", "name": "friend@email.com", "type": "user",
             "metadata": {"since": "2019-05-01T01:15:55.619355Z"}},
        ],
        "actor_type": "service",
        "actor_metadata": {"client": "mobile"},
        "version": 2,
        "target_id": None,
        "target_name": None,
    }
    values.update(fields)
    return make_event(**values)


def test_a_legacy_event_has_exactly_its_one_target() -> None:
    event = tweet_update_example()
    assert event.targets == (Target("tweet_5", "user@email.com"),)
    assert (event.actor_type, event.actor_metadata, event.version) == (None, {}, None)


def test_the_first_of_several_targets_is_target_id_and_name() -> None:
    event = several()
    assert (event.target_id, event.target_name) == ("tweet_5", "What time is it?")
    assert [t.id for t in event.targets] == ["tweet_5", "list_2", "user_9"]
    assert event.targets[1] == Target("list_2", "Favourites")
    assert event.targets[2].metadata == {"since": datetime(2019, 5, 1, 1, 15, 55, 619355,
                                                           tzinfo=UTC)}


def test_targets_and_target_id_may_both_be_given_when_they_agree() -> None:
    event = several(target_id="tweet_5", target_name="What time is it?")
    assert event == several(idempotency_key=event.idempotency_key)


@pytest.mark.parametrize(
    ("changes", "field"),
    [({"target_id": "tweet_6"}, "target_id"), ({"target_name": "Other"}, "target_name")],
)
def test_targets_and_target_id_that_disagree_are_refused(
    changes: dict[str, str], field: str
) -> None:
    with pytest.raises(AuditValidationError) as caught:
        several(**changes)
    assert caught.value.field == field
    assert "disagrees with targets[0]" in caught.value.rule


def test_replacing_the_targets_of_an_event_clears_the_legacy_pair() -> None:
    event = tweet_update_example()
    moved = replace(event, targets=(Target("tweet_6", "Another"),),
                    target_id=None, target_name=None)  # type: ignore[arg-type]
    assert (moved.target_id, moved.idempotency_key) == ("tweet_6", event.idempotency_key)
    with pytest.raises(AuditValidationError, match="target_id: disagrees"):
        replace(event, targets=(Target("tweet_6", "Another"),))


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"targets": "tweet_5"}, "targets", "list of Target"),
        ({"targets": Target("a", "b")}, "targets", "list of Target"),
        ({"targets": [("", "name")]}, "targets[0].id", "required"),
        ({"targets": [("a", "b"), ("c", None)]}, "targets[1].name", "required"),
        ({"targets": [("a", "b"), 5]}, "targets[1]", "must be a Target"),
        ({"targets": [{"id": "a", "name": "b", "colour": "red"}]}, "targets[0]", "unknown keys"),
        ({"targets": [("a", "b"), {"id": "c", "name": "d", "type": ""}]}, "targets[1].type",
         "required"),
        ({"targets": [("a", "b"), {"id": "c", "name": "d", "metadata": {"n": 2**64}}]},
         "targets[1].metadata.n", "64 bits"),
        ({"targets": [("a", "\ud800")]}, "targets[0].name", "lone surrogates"),
        ({"actor_type": 5}, "actor_type", "required"),
        ({"actor_metadata": {"m": {"n": {"deep": 1}}}}, "actor_metadata.m.n", "one level"),
        ({"actor_metadata": ["a"]}, "actor_metadata", "mapping"),
        ({"version": "2"}, "version", "positive integer"),
    ],
)
def test_new_fields_follow_the_same_rules(
    changes: dict[str, Any], field: str, rule: str
) -> None:
    with pytest.raises(AuditValidationError) as caught:
        several(**changes)
    assert caught.value.field == field
    assert rule in caught.value.rule


def test_target_on_its_own_is_validated_frozen_and_masked() -> None:
    target = Target("acct_1", "Account", metadata={"apiKey": "sk_live_1", "plan": "pro"})
    assert target.metadata == {"apiKey": "[masked]", "plan": "pro"}
    with pytest.raises(AuditValidationError) as caught:
        Target("", "name")
    assert caught.value.field == "target.id"
    with pytest.raises(AuditValidationError, match=r"target\.metadata\.x"):
        Target("a", "b", metadata={"x": float("nan")})
    assert hash(target) == hash(Target("acct_1", "Account", metadata={"plan": "pro"}))


def test_audit_logs_body_carries_every_target_the_actor_and_the_version() -> None:
    event = several(location="1.1.1.1", user_agent="agent/1")
    body = event.to_audit_logs_dict()
    assert body["event"] == {
        "action": "tweet.create",
        "occurred_at": event.to_audit_logs_dict()["event"]["occurred_at"],
        "actor": {"id": "user_0", "type": "service", "name": "user0@example.com",
                  "metadata": {"client": "mobile"}},
        "targets": [
            {"id": "tweet_5", "type": "tweet", "name": "What time is it?",
             "metadata": {"words": 4}},
            {"id": "list_2", "type": "tweet", "name": "Favourites"},
            {"id": "user_9", "type": "user", "name": "friend@email.com",
             "metadata": {"since": "2019-05-01T01:15:55.619355Z"}},
        ],
        "context": {"location": "1.1.1.1", "user_agent": "agent/1"},
        "metadata": {"n": 0},
        "version": 2,
    }


def test_sender_options_are_defaults_the_event_can_override() -> None:
    plain = tweet_update_example().to_audit_logs_dict(actor_type="admin", target_type="post",
                                                      version=7)["event"]
    assert (plain["actor"]["type"], plain["targets"][0]["type"], plain["version"]) == (
        "admin", "post", 7)
    own = several().to_audit_logs_dict(actor_type="admin", target_type="post", version=7)["event"]
    assert own["actor"]["type"] == "service"
    assert [t["type"] for t in own["targets"]] == ["tweet", "post", "user"]
    assert own["version"] == 2


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (lambda: several(), "targets"),
        (lambda: several(targets=[Target("t", "n", type="tweet")], actor_type=None,
                         actor_metadata=None, version=None), "targets[0].type"),
        (lambda: several(targets=[Target("t", "n", metadata={"a": 1})], actor_type=None,
                         actor_metadata=None, version=None), "targets[0].metadata"),
        (lambda: make_event(actor_type="user"), "actor_type"),
        (lambda: make_event(actor_metadata={"a": 1}), "actor_metadata"),
        (lambda: make_event(version=1), "version"),
    ],
)
def test_the_legacy_format_refuses_what_it_cannot_carry(
    event: Callable[[], AuditEvent], field: str
) -> None:
    with pytest.raises(AuditValidationError) as caught:
        event().to_dict()
    assert caught.value.field == field
    assert "legacy POST /events" in caught.value.rule


def test_the_legacy_format_still_carries_one_plain_target_given_as_targets() -> None:
    event = make_event(targets=[("tweet_5", "author")], target_id=None, target_name=None)
    assert event == make_event(target_id="tweet_5", target_name="author",
                               idempotency_key=event.idempotency_key)
    assert event.to_dict()["target_id"] == "tweet_5"


def test_record_round_trips_every_new_field() -> None:
    event = several(user_agent="agent/1")
    record = event.to_record()
    assert list(record)[-4:] == ["targets", "actor_type", "actor_metadata", "version"]
    assert AuditEvent.from_dict(record) == event
    assert AuditEvent.from_dict(json.loads(event.to_json())) == event
    assert event.to_json() == compact(record)
    assert json.loads(canonical_json(event)) == json.loads(event.to_json())
    assert AuditEvent.from_dict(json.loads(canonical_json(event))) == event


def test_record_of_a_plain_event_gains_no_keys() -> None:
    for event in (tweet_update_example(), make_event(targets=[("t", "n")], target_id=None,
                                                      target_name=None)):
        assert list(event.to_record()) == [*TWEET_UPDATE, "user_agent", "idempotency_key"]


def test_from_dict_takes_targets_without_target_id() -> None:
    data = {key: value for key, value in TWEET_UPDATE.items()
            if key not in ("target_id", "target_name")}
    event = AuditEvent.from_dict({**data, "targets": [{"id": "a", "name": "b"},
                                                       {"id": "c", "name": "d"}]})
    assert (event.target_id, len(event.targets)) == ("a", 2)
    with pytest.raises(AuditValidationError, match="target_name: required key is missing"):
        AuditEvent.from_dict(data)


def test_build_event_takes_the_new_fields_as_keywords() -> None:
    event = _build_event("organization_1", "tweet.update", ActionType.UPDATE, "user@email.com",
                         "user_1", "author", "tweet_5", "", None, None, "",
                         targets=[("tweet_5", "author"), ("list_2", "Favourites")],
                         actor_type="service", version=3)
    assert [t.id for t in event.targets] == ["tweet_5", "list_2"]
    assert (event.actor_type, event.version) == ("service", 3)


def test_workos_events_api_refuses_several_targets_in_the_caller(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    workos = make_workos()
    with pytest.raises(AuditValidationError, match="targets: the legacy POST /events"):
        workos.create_event(several())
    record = several().to_record()
    with pytest.raises(AuditValidationError, match="legacy POST /events"):
        workos.create_event(record)
    with pytest.raises(AuditValidationError):
        workos.create_events([make_event(1), several()])
    assert workos.flush(5) == 0
    assert server.requests == []


def test_workos_audit_logs_api_sends_every_target(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    workos = make_workos(api="audit_logs", actor_type="admin", target_type="post")
    event = several()
    workos.create_event(event.to_record()).result(timeout=5)
    [request] = server.requests
    assert request.path == "/audit_logs/events"
    assert request.json() == event.to_audit_logs_dict(actor_type="admin", target_type="post")
    assert [t["id"] for t in request.json()["event"]["targets"]] == ["tweet_5", "list_2", "user_9"]
