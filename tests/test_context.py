"""audit_actor / audit_context: isolation across tasks and threads, nesting, helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType

import pytest

from audit_instrument import (
    AuditContext,
    AuditValidationError,
    audit,
    audit_actor,
    audit_context,
    bind_context,
    current_context,
)
from audit_instrument.testing import capture_events


@dataclass
class User:
    id: int
    email: str


@audit("tweet.read", "R", target=lambda tweet_id: (f"tweet_{tweet_id}", "t"))
async def read_tweet(tweet_id: int) -> None:
    for _ in range(3):
        await asyncio.sleep(0)  # interleave with every other task


@audit("tweet.read", "R", target=lambda tweet_id: (f"tweet_{tweet_id}", "t"))
def read_tweet_sync(tweet_id: int) -> None:
    return None


@pytest.mark.parametrize(
    ("user", "kwargs", "expected"),
    [
        (User(1, "a@x.io"), {}, ("1", "a@x.io")),
        ({"id": "u2", "name": "Two"}, {}, ("u2", "Two")),
        ({"id": "u3", "username": "three"}, {}, ("u3", "three")),
        ({"id": "u4"}, {}, ("u4", "u4")),
        ({"id": 7, "email": "", "name": "Seven", "username": "s"}, {}, ("7", "Seven")),
        ({"id": "u8", "email": "e@x.io", "name": "Eight"}, {}, ("u8", "e@x.io")),
        (MappingProxyType({"id": "u9", "username": "nine"}), {}, ("u9", "nine")),
        (None, {"id": "u5", "name": "Five"}, ("u5", "Five")),
        (None, {"id": 6}, ("6", "6")),
    ],
)
def test_actor_forms(user: object, kwargs: dict[str, object], expected: tuple[str, str]) -> None:
    with audit_actor(user, **kwargs) as bound:  # type: ignore[arg-type]
        assert (bound.actor_id, bound.actor_name) == expected
        assert current_context() == bound


def test_anonymous_actor_binds_no_actor_but_keeps_group() -> None:
    with audit_actor(None, group="organization_1"):
        ctx = current_context()
        assert ctx.actor_id is None and ctx.group == "organization_1"


def test_bad_context_values_are_rejected() -> None:
    with pytest.raises(AuditValidationError, match="group"):
        audit_actor({"id": "u"}, group=5)  # type: ignore[arg-type]
    with pytest.raises(AuditValidationError, match="actor"):
        audit_actor("user_1")


def test_bound_contexts_are_ordinary_frozen_audit_contexts() -> None:
    with audit_actor({"id": "u1", "email": "a@b.c"}, group="g", location="l", user_agent="ua"):
        ctx = current_context()
    assert type(ctx) is AuditContext
    assert ctx == AuditContext("u1", "a@b.c", "g", "l", "ua")
    assert hash(ctx) == hash(AuditContext("u1", "a@b.c", "g", "l", "ua"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.group = "other"  # type: ignore[misc]


def test_nesting_restores_outer_values_even_on_error() -> None:
    with audit_context(group="organization_1", location="1.1.1.1"):
        with audit_actor({"id": "u1"}, user_agent="agent"):
            inner = current_context()
            assert (inner.actor_id, inner.group, inner.location) == (
                "u1",
                "organization_1",
                "1.1.1.1",
            )
            with pytest.raises(RuntimeError), audit_actor({"id": "u2"}, group="organization_2"):
                assert current_context().group == "organization_2"
                raise RuntimeError
            assert current_context() == inner
        outer = current_context()
        assert (
            outer.actor_id is None and outer.user_agent is None and outer.group == "organization_1"
        )
    assert current_context().group is None


async def test_200_concurrent_tasks_each_carry_their_own_actor() -> None:
    async def request(n: int) -> None:
        with audit_actor({"id": f"user_{n}"}, group=f"org_{n % 7}", location=f"10.0.0.{n % 250}"):
            await read_tweet(n)

    with capture_events() as events:
        await asyncio.gather(*(request(n) for n in range(200)))
    assert len(events) == 200
    for event in events:
        n = int(event.target_id.removeprefix("tweet_"))
        assert event.actor_id == f"user_{n}"
        assert event.group == f"org_{n % 7}"
        assert event.location == f"10.0.0.{n % 250}"
    assert current_context().actor_id is None


async def test_tasks_spawned_inside_a_block_inherit_it() -> None:
    with capture_events() as events:
        with audit_actor({"id": "user_1"}, group="organization_1"):
            task = asyncio.create_task(read_tweet(1))
        await task  # finishes after the block closed: the task kept its copy
    assert events.one().actor_id == "user_1"


def test_8_threads_with_distinct_actors() -> None:
    barrier = threading.Barrier(8)

    def worker(n: int) -> None:
        with audit_actor({"id": f"user_{n}"}, group="organization_1"):
            barrier.wait(timeout=10)  # all threads inside their blocks at once
            for i in range(50):
                read_tweet_sync(n * 1000 + i)

    with capture_events() as events:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
    assert len(events) == 400
    for event in events:
        assert event.actor_id == f"user_{int(event.target_id.removeprefix('tweet_')) // 1000}"


def test_bind_context_carries_the_context_into_threads_and_executors() -> None:
    with capture_events() as events:
        with audit_actor({"id": "user_1"}, group="organization_1"):
            thread = threading.Thread(target=bind_context(read_tweet_sync), args=(1,))
            thread.start()
            thread.join(timeout=10)
            bound = bind_context(read_tweet_sync)
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(bound, range(2, 22)))  # the same wrapper in several threads at once
            plain = threading.Thread(target=read_tweet_sync, args=(99,))
            plain.start()
            plain.join(timeout=10)
    assert sorted(e.target_id for e in events) == sorted(f"tweet_{n}" for n in range(1, 22))
    assert {e.actor_id for e in events} == {"user_1"}  # the unbound thread had no actor


async def test_run_in_executor_and_to_thread() -> None:
    loop = asyncio.get_running_loop()
    with capture_events() as events, audit_actor({"id": "user_1"}, group="organization_1"):
        await loop.run_in_executor(None, bind_context(read_tweet_sync), 1)
        await asyncio.to_thread(read_tweet_sync, 2)  # copies the context by itself
    assert [e.actor_id for e in events] == ["user_1", "user_1"]


def test_nothing_leaks_after_the_block() -> None:
    with audit_actor({"id": "user_1"}, group="organization_1", location="1.1.1.1", user_agent="ua"):
        pass
    ctx = current_context()
    assert (ctx.actor_id, ctx.group, ctx.location, ctx.user_agent) == (None, None, None, None)
