"""set_actor() and audit_scope(), bad actors refused at bind time, and stats(): loud, not noisy."""

from __future__ import annotations

import asyncio
import logging
import threading

import httpx
import pytest
from fastapi import FastAPI

from audit_instrument import (
    AuditError,
    AuditValidationError,
    audit,
    audit_actor,
    audit_scope,
    bind_context,
    configure,
    current_context,
    set_actor,
    stats,
)
from audit_instrument.integrations.asgi import AuditMiddleware
from audit_instrument.senders import MemorySender
from audit_instrument.testing import capture_events


@audit("doc.read", "R", target="doc_id")
def read_doc(doc_id: str) -> None:
    return None


@pytest.mark.parametrize("bad", [{"user_id": 1, "email": "x@y"}, 42, "alice", 1.5, object()])
def test_audit_actor_refuses_shapes_it_does_not_understand_at_bind_time(bad: object) -> None:
    with pytest.raises(AuditValidationError, match="mapping with an 'id' key"):
        audit_actor(bad)
    with pytest.raises(AuditValidationError, match="actor"), audit_scope():
        set_actor(bad)


def test_set_actor_fills_the_scope_for_the_rest_of_it_from_a_thread() -> None:
    with capture_events() as events, audit_scope(group="org_1"):
        read_doc("before")  # no actor yet: reported, not recorded
        worker = threading.Thread(target=set_actor, args=({"id": "user_1"},))
        worker.start()
        worker.join()
        assert current_context().actor_id is None  # a plain thread has its own context
        worker = threading.Thread(target=bind_context(set_actor), args=({"id": "user_2"},),
                                  kwargs={"location": "203.0.113.5"})
        worker.start()
        worker.join()
        read_doc("after")
    [event] = events.events
    assert (event.actor_id, event.group, event.location, event.target_id) == (
        "user_2", "org_1", "203.0.113.5", "after")
    [(cause, count)] = stats().invalid.items()
    assert cause.startswith("actor_id: required") and count == 1


def test_set_actor_outside_a_scope_binds_nothing_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "audit_instrument"):
        for _ in range(50):
            set_actor({"id": "user_1"})
    assert current_context().actor_id is None
    warnings = [r for r in caplog.records if "outside any audit scope" in r.getMessage()]
    assert len(warnings) == 1 and "audit_scope()" in warnings[0].getMessage()
    assert stats().failures == {"set_actor outside a scope": 50}
    configure(strict=True)
    with pytest.raises(AuditError, match="outside any audit scope"):
        set_actor({"id": "user_1"})


def test_audit_scope_as_a_decorator_gives_each_call_its_own_scope() -> None:
    @audit_scope(group="org_1")
    async def job(n: int) -> str | None:
        set_actor({"id": f"job_{n}"})
        await asyncio.sleep(0)
        read_doc(f"doc_{n}")
        return current_context().actor_id

    async def run_all() -> list[str | None]:
        return await asyncio.gather(*(job(n) for n in range(10)))

    with capture_events() as events:
        assert asyncio.run(run_all()) == [f"job_{n}" for n in range(10)]
    assert {(e.actor_id, e.target_id) for e in events.events} == {
        (f"job_{n}", f"doc_{n}") for n in range(10)}


def test_a_thousand_failing_requests_log_a_bounded_number_of_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = MemorySender()
    configure(memory)
    app = FastAPI()
    app.add_middleware(AuditMiddleware, group="org_1")  # nobody authenticates: no actor

    @app.get("/docs/{doc_id}")
    def get(doc_id: str) -> dict[str, bool]:
        read_doc(doc_id)
        return {"ok": True}

    async def requests() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            for n in range(1000):
                assert (await client.get(f"/docs/doc_{n}")).status_code == 200

    with caplog.at_level(logging.DEBUG, "audit_instrument"):
        asyncio.run(requests())
    records = [r for r in caplog.records if r.name == "audit_instrument"]
    assert 1 <= len(records) <= 3, [r.getMessage() for r in records]
    assert records[0].exc_info  # the first one of its cause, with its traceback
    assert memory.events == []
    snapshot = stats()
    assert sum(snapshot.invalid.values()) == 1000 and snapshot.built == 0
    assert snapshot.as_dict()["invalid"] == dict(snapshot.invalid)


def test_stats_counts_built_emitted_and_each_senders_outcomes() -> None:
    memory = MemorySender()
    configure(memory)
    with audit_actor({"id": "user_1"}, group="org_1"):
        for n in range(3):
            read_doc(f"doc_{n}")
    snapshot = stats()
    assert (snapshot.built, snapshot.emitted) == (3, 3)
    assert snapshot.senders == {}  # the memory sender reports no deliveries
