"""Before/after snapshots of dicts, objects and dataclasses; conversion; masking."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from audit_instrument import AuditValidationError, audit, audit_actor, configure
from audit_instrument.snapshot import capture, diff
from audit_instrument.testing import CapturedEvents, capture_events


class Status(enum.Enum):
    DRAFT = "draft"
    LIVE = "live"


@dataclass
class Post:
    title: str
    status: Status
    published_at: datetime | None = None


class Account:
    def __init__(self) -> None:
        self.email = "a@x.io"
        self.password = "old-secret"
        self._cache = object()


@pytest.fixture
def events() -> Any:
    with capture_events() as captured, audit_actor({"id": "user_1"}, group="organization_1"):
        yield captured


def test_dict_snapshot_changed_fields_only(events: CapturedEvents) -> None:
    row = {"body": "a", "likes": 1, "pinned": False}

    @audit("tweet.update", "U", target=("tweet_1", "t"), snapshot=lambda: row)
    def edit() -> None:
        row["body"] = "b"
        row["pinned"] = True

    edit()
    assert dict(events.one().metadata) == {
        "body_was": "a",
        "body": "b",
        "pinned_was": False,
        "pinned": True,
    }


def test_dataclass_snapshot_converts_enum_and_keeps_datetime(events: CapturedEvents) -> None:
    post = Post("t", Status.DRAFT)
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)

    @audit("post.publish", "U", target=("post_1", "t"), snapshot=lambda: post)
    def publish() -> None:
        post.status = Status.LIVE
        post.published_at = when

    publish()
    assert dict(events.one().metadata) == {
        "status_was": "draft",
        "status": "live",
        "published_at": when,
    }


def test_object_snapshot_with_fields_and_unchanged(events: CapturedEvents) -> None:
    account = Account()

    @audit(
        "account.update",
        "U",
        target=("acct", "a"),
        snapshot=lambda: account,
        fields=["email"],
        include_unchanged=True,
    )
    def touch() -> None:
        return None

    touch()
    assert dict(events.one().metadata) == {"email_was": "a@x.io", "email": "a@x.io"}


def test_create_and_delete_snapshots(events: CapturedEvents) -> None:
    store: dict[int, dict[str, str]] = {}

    @audit(
        "tweet.create", "C", target=lambda n: (f"tweet_{n}", "t"), snapshot=lambda n: store.get(n)
    )
    def create(n: int) -> None:
        store[n] = {"body": "hello"}

    @audit(
        "tweet.delete", "D", target=lambda n: (f"tweet_{n}", "t"), snapshot=lambda n: store.get(n)
    )
    def delete(n: int) -> None:
        del store[n]

    create(1)
    delete(1)
    created, deleted = events.events
    assert dict(created.metadata) == {"body": "hello"}
    assert dict(deleted.metadata) == {"body_was": "hello"}


def test_masking_before_and_after_with_default_and_custom_rules(events: CapturedEvents) -> None:
    account = Account()

    @audit(
        "account.update",
        "U",
        target=("acct", "a"),
        snapshot=lambda: account,
        metadata=lambda: {"api_key": "sk_live", "note": "n", "auth": {"token": "t", "x": 1}},
    )
    def change() -> None:
        account.password = "new-secret"
        account.email = "b@x.io"

    change()
    assert dict(events.one().metadata) == {
        "api_key": "[masked]",
        "note": "n",
        "auth": {"token": "[masked]", "x": 1},
        "email_was": "a@x.io",
        "email": "b@x.io",
        "password_was": "[masked]",
        "password": "[masked]",
    }
    events.clear()
    configure(mask=["email"])
    account.email = "c@x.io"
    change()
    assert events.one().metadata["email"] == "[masked]"
    assert events.one().metadata["api_key"] == "sk_live"


def test_conversion_of_common_types() -> None:
    value = {
        "u": uuid.UUID(int=1),
        "d": Decimal("1.50"),
        "day": date(2024, 1, 2),
        "m": {"a": Status.LIVE, "gone": None},
        "none": None,
    }
    assert capture(value, None) == {
        "u": "00000000-0000-0000-0000-000000000001",
        "d": "1.50",
        "day": "2024-01-02",
        "m": {"a": "live"},
        "none": None,
    }


def test_unconvertible_and_missing_fields_name_the_field() -> None:
    with pytest.raises(AuditValidationError) as caught:
        capture({"tags": ["a"]}, ["tags"])
    assert caught.value.field == "tags"
    with pytest.raises(AuditValidationError) as caught:
        capture(Post("t", Status.LIVE), ["body"])
    assert caught.value.field == "fields.body"
    with pytest.raises(AuditValidationError, match="fields"):
        capture(object(), None)


def test_diff_treats_types_as_part_of_the_value() -> None:
    assert diff({"a": 1}, {"a": True}) == {"a_was": 1, "a": True}
    assert diff({"a": 1}, {"a": 1}) == {}
