"""@audit as a decorator on every callable kind, and as a (async) context manager."""

from __future__ import annotations

import asyncio
import inspect
import logging
from dataclasses import dataclass
from typing import Any

import pytest
import wrapt

from audit_instrument import (
    AuditValidationError,
    audit,
    audit_actor,
    configure,
    signals,
)
from audit_instrument.testing import CapturedEvents, capture_events

USER = {"id": "user_1", "email": "user@email.com"}


@dataclass
class Tweet:
    id: int
    body: str
    author: str = "user@email.com"


@pytest.fixture
def events() -> Any:
    with (
        capture_events() as captured,
        audit_actor(USER, group="organization_1", location="1.1.1.1"),
    ):
        yield captured


def test_issue_example_update_tweet(events: CapturedEvents) -> None:
    tweets = {5: Tweet(5, "What time is the event")}

    @audit(
        "tweet.update",
        "U",
        target=lambda tweet_id, **_: (f"tweet_{tweet_id}", tweets[tweet_id].author),
        snapshot=lambda tweet_id, **_: tweets[tweet_id],
        fields=["body"],
    )
    def update_tweet(tweet_id: int, body: str) -> None:
        tweets[tweet_id].body = body

    assert update_tweet(5, "What time is the event?") is None
    event = events.one(action="tweet.update")
    assert event.to_dict()["metadata"] == {
        "body_was": "What time is the event",
        "body": "What time is the event?",
    }
    assert (event.target_id, event.target_name) == ("tweet_5", "user@email.com")
    assert (event.actor_id, event.actor_name, event.group) == (
        "user_1",
        "user@email.com",
        "organization_1",
    )
    assert event.location == "1.1.1.1"


def test_decorator_preserves_name_signature_and_coroutine_flag() -> None:
    def plain(tweet_id: int, *, verbose: bool = False) -> str:
        """Read a tweet."""
        return "x"

    read = audit("tweet.read", "R")(plain)

    @audit("tweet.read", "R")
    async def read_async(tweet_id: int) -> str:
        return "x"

    assert read.__name__ == "plain" and read.__doc__ == "Read a tweet."
    assert inspect.signature(read) == inspect.signature(plain)
    assert not inspect.iscoroutinefunction(read)
    assert inspect.iscoroutinefunction(read_async)
    assert asyncio.iscoroutinefunction(read_async)


@pytest.mark.parametrize("arity", [1, 2, 3, 4, 5, 6])
def test_arguments_bind_by_name_positionally_or_by_keyword(
    events: CapturedEvents, arity: int
) -> None:
    names = [f"p{i}" for i in range(arity)]
    namespace: dict[str, Any] = {}
    exec(f"def fn({', '.join(names)}): return {names[-1]}", namespace)
    fn = audit("tweet.read", "R", metadata=names)(namespace["fn"])
    assert isinstance(fn, wrapt.FunctionWrapper) and fn.__wrapped__ is namespace["fn"]
    values = list(range(arity))
    assert fn(*values) == arity - 1
    assert fn(*values[:-1], **{names[-1]: "kw"}) == "kw"
    assert fn(**dict(zip(names, values, strict=True))) == arity - 1
    expected = dict(zip(names, values, strict=True))
    assert [dict(e.metadata) for e in events.events] == [
        expected,
        {**expected, names[-1]: "kw"},
        expected,
    ]


def test_a_bound_method_can_be_decorated_directly(events: CapturedEvents) -> None:
    class Plain:
        def update(self, tweet_id: int, body: str) -> str:
            return body

    update = audit("tweet.update", "U", target=lambda tweet_id: (f"tweet_{tweet_id}", "a"))(
        Plain().update
    )
    assert update(1, "direct") == "direct"
    assert events.one().target_id == "tweet_1"


def test_target_and_metadata_by_parameter_name_and_result(events: CapturedEvents) -> None:
    @audit("tweet.create", "C", target="result", metadata=["body"])
    def create(body: str) -> Tweet:
        return Tweet(7, body)

    @audit("tweet.count", "R", metadata=["result"])
    def count() -> int:
        return 42

    @audit("tweet.share", "C", target="tweet", metadata=lambda tweet, channel: {"channel": channel})
    def share(tweet: Tweet, channel: str = "email") -> None:
        return None

    create("hello")
    share({"id": "tweet_7", "name": "hello"})  # type: ignore[arg-type]
    count()
    created, shared, counted = events.events
    assert dict(counted.metadata) == {"result": 42}
    assert (created.target_id, created.target_name) == ("7", "7")
    assert created.metadata["body"] == "hello"
    assert (shared.target_id, shared.target_name) == ("tweet_7", "hello")
    assert dict(shared.metadata) == {"channel": "email"}


def test_result_resolver_gets_the_return_value(events: CapturedEvents) -> None:
    @audit("tweet.create", "C", target=lambda result: (f"tweet_{result.id}", result.author))
    def create(body: str) -> Tweet:
        return Tweet(9, body)

    create("x")
    assert events.one().target_id == "tweet_9"


def test_without_target_the_actor_is_the_target(events: CapturedEvents) -> None:
    @audit("user.logout", "D")
    def logout() -> None: ...

    logout()
    event = events.one()
    assert (event.target_id, event.target_name) == ("user_1", "user@email.com")


class Service:
    def __init__(self) -> None:
        self.tweets = {1: Tweet(1, "old")}

    @audit(
        "tweet.update",
        "U",
        target=lambda self, tweet_id: (f"tweet_{tweet_id}", "a"),
        snapshot=lambda self, tweet_id: self.tweets[tweet_id],
        fields=["body"],
    )
    def update(self, tweet_id: int, body: str) -> str:
        self.tweets[tweet_id].body = body
        return body

    @audit("tweet.update", "U", target=lambda tweet_id: (f"tweet_{tweet_id}", "a"))
    async def update_async(self, tweet_id: int) -> int:
        await asyncio.sleep(0)
        return tweet_id

    @classmethod
    @audit("tweet.purge", "D", target=lambda cls, tweet_id: (f"tweet_{tweet_id}", cls.__name__))
    def purge(cls, tweet_id: int) -> str:
        return cls.__name__

    @audit("tweet.purge", "D", target=lambda cls, tweet_id: (f"tweet_{tweet_id}", cls.__name__))
    @classmethod
    def purge_outer(cls, tweet_id: int) -> str:
        return cls.__name__

    @staticmethod
    @audit("tweet.count", "R", target=lambda n: (f"count_{n}", "count"))
    def count(n: int) -> int:
        return n

    @audit("tweet.count", "R", target=lambda n: (f"count_{n}", "count"))
    @staticmethod
    def count_outer(n: int) -> int:
        return n


async def test_every_callable_kind(events: CapturedEvents) -> None:
    service = Service()
    assert service.update(1, "new") == "new"
    assert await service.update_async(2) == 2
    assert Service.purge(3) == "Service" and service.purge(4) == "Service"
    assert Service.purge_outer(5) == "Service" and service.purge_outer(6) == "Service"
    assert Service.count(7) == 7 and service.count(8) == 8
    assert Service.count_outer(9) == 9 and service.count_outer(10) == 10
    assert Service.update(service, 1, "newer") == "newer"  # unbound call through the class
    targets = [event.target_id for event in events.events]
    assert targets == [
        "tweet_1",
        "tweet_2",
        "tweet_3",
        "tweet_4",
        "tweet_5",
        "tweet_6",
        "count_7",
        "count_8",
        "count_9",
        "count_10",
        "tweet_1",
    ]
    assert dict(events.events[0].metadata) == {"body_was": "old", "body": "new"}
    assert dict(events.events[-1].metadata) == {"body_was": "new", "body": "newer"}
    assert events.events[2].target_name == "Service"


def test_exceptions_propagate_unchanged_and_record_nothing_by_default(
    events: CapturedEvents,
) -> None:
    error = KeyError("missing")

    @audit("user.login", "C")
    def login() -> None:
        raise error

    with pytest.raises(KeyError) as caught:
        login()
    assert caught.value is error
    assert events.events == []


def test_on_error_emit_records_the_failed_attempt(events: CapturedEvents) -> None:
    @audit("user.login", "C", on_error="emit")
    def login(password: str) -> None:
        raise PermissionError("bad password")

    with pytest.raises(PermissionError, match="bad password"):
        login("hunter2")
    assert dict(events.one().metadata) == {"outcome": "failure", "error": "PermissionError"}


async def test_async_exceptions_propagate_and_on_error_emits(events: CapturedEvents) -> None:
    @audit("user.login", "C", on_error="emit")
    async def login() -> None:
        await asyncio.sleep(0)
        raise ValueError("nope")

    with pytest.raises(ValueError, match="nope"):
        await login()
    assert events.one().metadata["outcome"] == "failure"


def test_base_exceptions_are_never_recorded(events: CapturedEvents) -> None:
    @audit("job.run", "C", on_error="emit")
    def run() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run()
    assert events.events == []


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"action": "tweetupdate", "action_type": "U"}, "action"),
        ({"action": "tweet.update", "action_type": "X"}, "action_type"),
        ({"action": "tweet.update", "action_type": "U", "on_error": "ignore"}, "on_error"),
        ({"action": "tweet.update", "action_type": "U", "fields": ["body"]}, "fields"),
        ({"action": "tweet.update", "action_type": "U", "snapshot": 5}, "snapshot"),
        (
            {
                "action": "tweet.update",
                "action_type": "U",
                "snapshot": lambda: {},
                "fields": "body",
            },
            "fields",
        ),
        (
            {
                "action": "tweet.update",
                "action_type": "U",
                "snapshot": lambda: {},
                "fields": ["x" * 37],
            },
            "fields",
        ),
    ],
)
def test_bad_declarations_fail_when_declared(kwargs: dict[str, Any], field: str) -> None:
    action = kwargs.pop("action")
    action_type = kwargs.pop("action_type")
    with pytest.raises(AuditValidationError) as caught:
        audit(action, action_type, **kwargs)
    assert caught.value.field == field


def test_resolvers_are_checked_against_the_signature_when_decorating() -> None:
    def update(tweet_id: int, body: str) -> None: ...

    with pytest.raises(AuditValidationError, match=r"target: names no parameter.*tweet_id, body"):
        audit("tweet.update", "U", target="tweet")(update)
    with pytest.raises(AuditValidationError, match=r"asks for \['tweet'\]"):
        audit("tweet.update", "U", target=lambda tweet: tweet)(update)
    with pytest.raises(AuditValidationError, match="snapshot"):
        audit("tweet.update", "U", snapshot=lambda result: result)(update)
    with pytest.raises(AuditValidationError, match="metadata"):
        audit("tweet.update", "U", metadata=["tweet"])(update)
    audit("tweet.update", "U", target=lambda tweet_id, extra=None: (tweet_id, "x"))(update)


def test_a_bad_runtime_value_is_logged_and_reported_not_raised(
    events: CapturedEvents, caplog: pytest.LogCaptureFixture
) -> None:
    reports: list[tuple[object, Exception]] = []
    signals.event_invalid.connect(lambda sender, error: reports.append((sender, error)), weak=False)

    @audit("tweet.tag", "U", metadata=lambda tags: {"tags": tags})
    def tag(tags: list[str]) -> str:
        return "ok"

    with caplog.at_level(logging.ERROR, logger="audit_instrument"):
        assert tag(["a", "b"]) == "ok"
    assert events.events == []
    assert reports and reports[0][0] == "tweet.tag"
    assert isinstance(reports[0][1], AuditValidationError)
    assert reports[0][1].field == "metadata.tags"
    assert "metadata.tags" in caplog.text


def test_strict_mode_raises_the_validation_error(events: CapturedEvents) -> None:
    configure(strict=True)
    with capture_events():

        @audit("tweet.tag", "U", metadata=lambda tags: {"tags": tags})
        def tag(tags: list[str]) -> str:
            return "ok"

        with pytest.raises(AuditValidationError, match=r"metadata\.tags"):
            tag(["a"])


def test_event_outside_any_context_is_reported_not_filled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @audit("user.login", "C")
    def login() -> str:
        return "ok"

    with capture_events() as events, caplog.at_level(logging.ERROR, logger="audit_instrument"):
        assert login() == "ok"
    assert events.events == []
    assert "actor_id: required" in caplog.text


def test_explicit_actor_and_group_need_no_context() -> None:
    @audit("user.login", "C", actor="user", group=lambda org: org)
    def login(user: dict[str, str], org: str) -> None: ...

    with capture_events() as events:
        login({"id": "u_9", "username": "nine"}, "organization_9")
    event = events.one()
    assert (event.actor_id, event.actor_name, event.group) == ("u_9", "nine", "organization_9")


def test_system_actor_for_background_jobs() -> None:
    configure(system_actor=("system", "nightly-job"))

    @audit("report.create", "C")
    def build_report() -> None: ...

    with capture_events() as events, audit_actor(None, group="organization_1"):
        build_report()
    assert events.one().actor_id == "system"


def test_no_receivers_means_no_work_and_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    @audit(
        "tweet.update",
        "U",
        snapshot=lambda: calls.append("snapshot"),
        target=lambda: calls.append("target"),
    )
    def update() -> str:
        return "done"

    with caplog.at_level(logging.WARNING, logger="audit_instrument"):
        assert update() == "done"
        assert update() == "done"
    assert calls == []
    warnings = [r for r in caplog.records if "discarded" in r.getMessage()]
    assert len(warnings) == 1


def test_context_manager_form(events: CapturedEvents) -> None:
    user = {"id": "user_2", "email": "two@email.com"}
    with audit("user.login", "C", target=user) as event:
        event.metadata["method"] = "password"
    recorded = events.one()
    assert (recorded.target_id, recorded.target_name) == ("user_2", "two@email.com")
    assert dict(recorded.metadata) == {"method": "password"}


async def test_async_context_manager_form(events: CapturedEvents) -> None:
    async with audit("user.login", "C") as event:
        await asyncio.sleep(0)
        event.target = ("user_3", "three")
        event.metadata["method"] = "sso"
    assert events.one().target_id == "user_3"


def test_context_manager_snapshot_skip_and_errors(events: CapturedEvents) -> None:
    tweet = Tweet(1, "before")
    with audit(
        "tweet.update", "U", target=("tweet_1", "a"), snapshot=lambda: tweet, fields=["body"]
    ):
        tweet.body = "after"
    with audit("tweet.update", "U", target=("tweet_1", "a")) as event:
        event.skip()
    with pytest.raises(RuntimeError), audit("tweet.update", "U", target=("tweet_1", "a")):
        raise RuntimeError("boom")
    with (
        pytest.raises(RuntimeError),
        audit("tweet.update", "U", target=("tweet_1", "a"), on_error="emit"),
    ):
        raise RuntimeError("boom")
    first, failed = events.events
    assert dict(first.metadata) == {"body_was": "before", "body": "after"}
    assert failed.metadata["error"] == "RuntimeError"


def test_context_manager_rejects_resolvers_and_takes_a_bare_id() -> None:
    with (pytest.raises(AuditValidationError, match="target"),
          audit("a.b", "C", target=lambda: "user")):
        pass
    with capture_events() as captured, audit_actor(USER, group="g"):
        with audit("a.b", "C", target="tweet_5"):
            pass
        with audit("a.b", "C", target=7):
            pass
    assert [(e.target_id, e.target_name) for e in captured.events] == [
        ("tweet_5", "tweet_5"), ("7", "7")]


def test_one_declaration_nested_and_shared_by_concurrent_tasks() -> None:
    block = audit("doc.read", "R")

    async def request(n: int) -> None:
        async with audit_actor({"id": f"user_{n}"}, group="g"), block as event:
            event.metadata["n"] = n
            await asyncio.sleep(0)  # interleave with the other requests
            event.target = f"doc_{n}"

    async def all_requests() -> None:
        await asyncio.gather(*(request(n) for n in range(20)))

    with capture_events() as captured:
        asyncio.run(all_requests())
        with audit_actor(USER, group="g"), block as outer:
            outer.target = "outer"
            with block as inner:
                inner.target = "inner"
    pairs = {(e.actor_id, e.target_id, e.metadata.get("n")) for e in captured.events[:20]}
    assert pairs == {(f"user_{n}", f"doc_{n}", n) for n in range(20)}
    assert [e.target_id for e in captured.events[20:]] == ["inner", "outer"]


def test_the_time_of_an_instrumented_call_is_read_when_the_event_is_built(
    events: CapturedEvents,
) -> None:
    """@audit keeps the clock reading and makes the datetime on first read: the
    event still says when it happened, not when someone looked."""
    import copy
    import dataclasses
    import threading
    from datetime import UTC, datetime

    @audit("tweet.read", "R")
    def read() -> None:
        return None

    before = datetime.now(UTC)
    read()
    after = datetime.now(UTC)
    while datetime.now(UTC) <= after:  # the clock moves on: a late read would show
        pass
    event = events.events[0]
    seen: list[datetime] = []
    readers = [threading.Thread(target=lambda: seen.append(event.occurred_at)) for _ in range(4)]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join()
    stamp = event.occurred_at
    assert before <= stamp <= after and stamp.tzinfo is UTC
    assert seen == [stamp] * 4 and event.occurred_at is stamp
    assert f'"occurred_at":"{stamp.isoformat()[:-6]}Z"' in event.to_json()
    for twin in (copy.copy(event), dataclasses.replace(event, location="2.2.2.2")):
        assert twin.occurred_at == stamp
    assert copy.copy(event) == event
    with pytest.raises(AttributeError, match="'AuditEvent' object has no attribute 'nope'"):
        event.nope  # type: ignore[attr-defined]  # noqa: B018
