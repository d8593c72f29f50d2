"""Outbox group commit: add_many, a failed commit reaching all its callers, close mid-write."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from support.events import make_event
from support.waiting import wait_for

from audit_instrument import DeliveryError
from audit_instrument.delivery import Outbox


def _keys(path: Path) -> list[tuple[str, int | None]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT key, owner_pid FROM outbox ORDER BY id").fetchall()


def test_add_many_commits_every_event_before_returning(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as box:
        events = [make_event(n) for n in range(700)]  # more than one INSERT statement's worth
        box.add_many(events)
        assert _keys(path) == [(e.idempotency_key, None) for e in events]  # another connection
        owned = [make_event(n) for n in range(700, 703)]
        box.add_many(iter(owned), owned=True)
        assert [pid for _, pid in _keys(path)[700:]] == [box._pid] * 3
        box.add_many([])
        assert box.status().pending == 703


def test_add_many_after_close_raises_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path)
    box.close()
    with pytest.raises(DeliveryError, match="closed"):
        box.add_many([make_event(1), make_event(2)])
    with pytest.raises(DeliveryError, match="closed"):
        box.add(make_event(3))
    assert _keys(path) == []


def test_a_failed_commit_reaches_every_caller_and_the_outbox_recovers(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, busy_timeout=0.2)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    errors: list[DeliveryError] = []
    returned: list[int] = []

    def write(n: int) -> None:
        try:
            box.add(make_event(n))
            returned.append(n)
        except DeliveryError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert returned == [] and len(errors) == 8
    assert all("write failed" in str(exc) and exc.retryable for exc in errors)
    blocker.execute("ROLLBACK")
    blocker.close()
    box.add(make_event(100))  # neither the caller's nor the writer's role is stuck
    box.add_many([make_event(101), make_event(102)])
    assert box.sync(5)
    assert box.status().pending == 3
    box.close()


def test_close_with_writes_in_flight_keeps_every_returned_write(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, synchronous="NORMAL")
    returned = [0] * 16
    refused: list[BaseException] = []
    stop = threading.Event()

    def write(slot: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                box.add(make_event(slot * 100_000 + n))
            except DeliveryError as exc:
                refused.append(exc)
                return
            returned[slot] += 1
            n += 1

    threads = [threading.Thread(target=write, args=(slot,)) for slot in range(16)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: sum(returned) >= 2000, timeout=30)
        box.close(timeout=30)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert all("closed" in str(exc) for exc in refused)
    assert len(_keys(path)) == sum(returned)  # every add that returned, nothing else


def test_outcomes_and_adds_from_many_threads_all_commit(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, synchronous="NORMAL") as box:
        first = [make_event(n) for n in range(200)]
        box.add_many(first)

        def mixed(slot: int) -> None:
            for n in range(50):
                box.add(make_event(1000 + slot * 50 + n))
                box.delivered(first[slot * 25 + n % 25].idempotency_key)

        threads = [threading.Thread(target=mixed, args=(slot,)) for slot in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert box.sync(10)
        status = box.status()
        assert (status.pending, status.delivered) == (400, 200)
