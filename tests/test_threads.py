"""Carrying the audit context into threads and executors; background jobs without a request."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from audit_instrument import audit, audit_actor, audit_context, bind_context, configure
from audit_instrument.context import current_context
from audit_instrument.senders import MemorySender
from audit_instrument.threads import ContextThread, ContextThreadPoolExecutor, run_in_executor


def _actor() -> str | None:
    return current_context().actor_id


def test_plain_threads_and_executors_start_empty() -> None:
    """Why the helpers exist: without them, the worker has no actor."""
    seen: list[str | None] = []
    with audit_actor(id="user_1"), ThreadPoolExecutor(1) as pool:
        assert pool.submit(_actor).result() is None
        thread = threading.Thread(target=lambda: seen.append(_actor()))
        thread.start()
        thread.join()
    assert seen == [None]


def test_context_thread_pool_executor_captures_the_context_at_each_submit() -> None:
    with ContextThreadPoolExecutor(max_workers=2) as pool:  # one pool shared by "requests"
        with audit_actor(id="user_1"):
            first = pool.submit(_actor)
            mapped = list(pool.map(lambda _: _actor(), range(3)))
        with audit_actor(id="user_2"):
            second = pool.submit(_actor)
        outside = pool.submit(_actor)
        assert (first.result(), second.result(), outside.result()) == ("user_1", "user_2", None)
        assert mapped == ["user_1"] * 3


def test_context_thread_runs_in_the_context_of_start() -> None:
    seen: list[str | None] = []
    with audit_actor(id="user_1"):
        thread = ContextThread(target=lambda: seen.append(_actor()))
    with audit_actor(id="user_2"):
        thread.start()  # the context of start(), not of construction
    thread.join()
    assert seen == ["user_2"]


def test_bind_context_with_a_plain_thread() -> None:
    seen: list[str | None] = []
    with audit_actor(id="user_1"):
        thread = threading.Thread(target=bind_context(lambda: seen.append(_actor())))
    thread.start()
    thread.join()
    assert seen == ["user_1"]


async def test_run_in_executor_carries_the_context_plain_loop_call_does_not() -> None:
    loop = asyncio.get_running_loop()
    with audit_actor(id="user_1"), ThreadPoolExecutor(2) as pool:
        assert await loop.run_in_executor(pool, _actor) is None
        assert await loop.run_in_executor(None, bind_context(_actor)) == "user_1"
        assert await run_in_executor(pool, _actor) == "user_1"
        assert await run_in_executor(None, lambda a, *, b: (a, b, _actor()), 1, b=2) == (
            1, 2, "user_1"
        )


async def test_asyncio_to_thread_already_copies_the_context() -> None:
    with audit_actor(id="user_1"):
        assert await asyncio.to_thread(_actor) == "user_1"
    assert await asyncio.to_thread(_actor) is None


async def test_concurrent_tasks_each_keep_their_actor_in_workers() -> None:
    memory = MemorySender()
    configure(memory)

    @audit("doc.export", "R", metadata=["n"])
    def export(n: int) -> None:
        return None

    async def request(n: int) -> None:
        with audit_actor(id=f"user_{n}", group="org_1"):
            await run_in_executor(None, export, n)
            await asyncio.to_thread(export, n)

    await asyncio.gather(*(request(n) for n in range(50)))
    assert len(memory) == 100
    assert all(e.actor_id == f"user_{e.metadata['n']}" for e in memory)


# -- background jobs: no request, so no middleware -------------------------------------------


@audit("report.build", "C", target=lambda report_id: (report_id, "Monthly report"))
def build_report(report_id: str) -> None:
    return None


def test_background_job_binds_its_actor_explicitly() -> None:
    memory = MemorySender()
    configure(memory)

    def job() -> None:
        with audit_actor(id="job_nightly", name="Nightly export", group="org_1"):
            build_report("rep_1")

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    assert [(e.actor_id, e.actor_name, e.group) for e in memory] == [
        ("job_nightly", "Nightly export", "org_1")
    ]


def test_background_job_falls_back_to_the_configured_system_actor() -> None:
    memory = MemorySender()
    configure(memory, system_actor=("system", "Scheduler"))

    def job() -> None:
        with audit_context(group="org_1"):  # only the organisation; the actor is the system
            build_report("rep_2")

    thread = threading.Thread(target=job)
    thread.start()
    thread.join()
    with audit_actor(id="user_5", group="org_1"):  # a request still wins over the system actor
        build_report("rep_3")
    assert [(e.actor_id, e.actor_name, e.target_id) for e in memory] == [
        ("system", "Scheduler", "rep_2"), ("user_5", "user_5", "rep_3")
    ]
