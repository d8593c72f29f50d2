"""BackgroundSender: emitting on an event loop never waits on the wrapped sender's I/O."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from support.waiting import wait_for

from audit_instrument import (
    AuditConfigError,
    AuditEvent,
    AuditStore,
    audit,
    audit_actor,
    configure,
    signals,
)
from audit_instrument.senders import BackgroundSender, MemorySender


class Gate:
    """A sender that blocks in send() until released, like a slow disk."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.entered = threading.Event()
        self.events: list[AuditEvent] = []
        self.threads: set[str] = set()

    def send(self, event: AuditEvent) -> None:
        self.entered.set()
        assert self.open.wait(30), "the test never released the gate"
        self.threads.add(threading.current_thread().name)
        self.events.append(event)


@audit("tweet.update", "U", target=lambda tweet_id: (f"tweet_{tweet_id}", "author"))
def update(tweet_id: int) -> int:
    return tweet_id


@pytest.fixture
def actor() -> Any:
    with audit_actor(id="user_1", name="user@email.com", group="organization_1") as bound:
        yield bound


async def test_on_an_event_loop_emitting_returns_while_the_sender_is_still_writing(
    actor: Any,
) -> None:
    gate = Gate()
    background = BackgroundSender(gate)
    configure(background)
    for n in range(5):
        update(n)  # would hang here, on the loop, if send() ran in this thread
    assert gate.entered.wait(10)
    assert gate.events == [] and background.pending == 5
    await asyncio.sleep(0)  # the loop is still free to run other work
    gate.open.set()
    assert await asyncio.to_thread(background.flush, 10)
    assert [e.target_id for e in gate.events] == [f"tweet_{n}" for n in range(5)]
    assert gate.threads == {"audit-background-sender"}
    assert background.close(10)


def test_outside_an_event_loop_the_sender_runs_in_the_callers_thread(actor: Any) -> None:
    memory = MemorySender()
    background = BackgroundSender(memory)
    configure(background)
    update(1)
    assert [e.target_id for e in memory.events] == ["tweet_1"]  # already there: no queue
    assert background.pending == 0
    background.close(10)
    update(2)  # closed: dropped, not written behind the caller's back
    assert [e.target_id for e in memory.events] == ["tweet_1"] and background.dropped == 1


def test_always_queues_from_every_thread_and_flush_waits(actor: Any) -> None:
    gate = Gate()
    background = BackgroundSender(gate, always=True)
    configure(background)
    update(1)
    update(2)
    assert gate.entered.wait(10) and gate.events == []
    assert not background.flush(0.01)  # still held by the gate
    gate.open.set()
    assert background.flush(10)
    assert [e.target_id for e in gate.events] == ["tweet_1", "tweet_2"]
    background.close(10)


def test_a_full_queue_drops_counts_logs_and_reports(
    actor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    gate = Gate()
    background = BackgroundSender(gate, always=True, queue_size=2)
    dropped: list[tuple[AuditEvent, str]] = []

    def on_dropped(event: AuditEvent, **kwargs: Any) -> None:
        dropped.append((event, kwargs["reason"]))

    signals.event_dropped.connect(on_dropped)
    configure(background)
    with caplog.at_level(logging.ERROR, logger="audit_instrument"):
        for n in range(4):
            update(n)  # returns at once even when full: the caller never waits
    assert background.dropped == 2
    assert [(e.target_id, reason) for e, reason in dropped] == [
        ("tweet_2", "queue full"),
        ("tweet_3", "queue full"),
    ]
    assert "queue full" in caplog.text
    gate.open.set()
    assert background.close(10)
    assert [e.target_id for e in gate.events] == ["tweet_0", "tweet_1"]
    update(9)
    assert dropped[-1][1] == "closed"


def test_a_failing_sender_is_logged_and_the_worker_goes_on(
    actor: Any, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[str] = []

    def flaky(event: AuditEvent) -> None:
        if event.target_id == "tweet_1":
            raise OSError("disk full")
        seen.append(event.target_id)

    background = BackgroundSender(flaky, always=True)
    configure(background)
    with caplog.at_level(logging.ERROR, logger="audit_instrument"):
        for n in range(3):
            update(n)
        assert background.flush(10)
    assert seen == ["tweet_0", "tweet_2"]
    assert "disk full" in caplog.text
    background.close(10)


@pytest.mark.parametrize(
    ("sender", "kwargs", "message"),
    [
        (42, {}, "wraps a sender"),
        (MemorySender(), {"queue_size": 0}, "queue_size"),
    ],
)
def test_bad_construction_is_a_config_error(
    sender: object, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(AuditConfigError, match=message):
        BackgroundSender(sender, **kwargs)


async def test_the_local_store_behind_it_in_an_async_app(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.db")
    background = BackgroundSender(store)
    configure(background)

    @audit("doc.read", "R", target=lambda doc_id: (doc_id, "Quarterly report"))
    async def read(doc_id: str) -> None:
        await asyncio.sleep(0)

    async def request(n: int) -> None:
        with audit_actor(id=f"user_{n % 5}", name=f"u{n % 5}@example.com", group="org_1"):
            await read(f"doc_{n}")

    await asyncio.gather(*(request(n) for n in range(200)))
    assert await asyncio.to_thread(background.flush, 30)
    wait_for(lambda: store.count() == 200, timeout=10)
    assert store.verify().ok
    for stored in store.query(limit=200):
        n = int(stored.event.target_id.split("_")[1])
        assert stored.event.actor_id == f"user_{n % 5}"
    background.close(10)
    store.close()
