"""GroupCommit: shared transactions, one bad submission never costs another, no-wait mode."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import pytest
from support.waiting import wait_for

from audit_instrument import AuditError
from audit_instrument.delivery.group_commit import GroupCommit


class Table:
    """A stand-in for a database table: all of a write is kept, or none of it."""

    def __init__(self) -> None:
        self.rows: list[str] = []
        self.writes: list[int] = []
        self.lock = threading.Lock()

    def write(self, items: list[str]) -> None:
        if any(item.startswith("poison") for item in items):
            raise ValueError("cannot encode")
        with self.lock:
            self.rows.extend(items)
            self.writes.append(len(items))


def test_threads_share_writes_and_a_poison_submission_fails_alone() -> None:
    table = Table()
    commits = GroupCommit(table.write, name="test")
    refused: list[str] = []

    def writer(slot: int) -> None:
        for n in range(200):
            item = "poison" if n % 20 == 0 else f"{slot}-{n}"
            try:
                commits.submit([item])
            except ValueError:
                refused.append(item)

    threads = [threading.Thread(target=writer, args=(slot,)) for slot in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(refused) == 16 * 10 and set(refused) == {"poison"}
    assert sorted(table.rows) == sorted(f"{s}-{n}" for s in range(16) for n in range(200) if n % 20)
    commits.close()


def test_a_submission_is_all_or_nothing() -> None:
    table = Table()
    commits = GroupCommit(table.write, name="test")
    with pytest.raises(ValueError):
        commits.submit(["a", "poison-b"])
    commits.submit(["c", "d"])
    assert table.rows == ["c", "d"]


def test_unwaited_submissions_are_committed_soon_and_failures_reported() -> None:
    table = Table()
    failed: list[tuple[Sequence[str], Exception]] = []
    commits = GroupCommit(table.write, name="test", max_delay=0.002,
                          on_error=lambda items, error: failed.append((items, error)))
    for n in range(500):
        commits.submit([f"e{n}"], wait=False)
    wait_for(lambda: len(table.rows) == 500)
    assert len(table.writes) < 500  # shared transactions, not one per submission
    commits.submit(["poison"], wait=False)
    wait_for(lambda: failed)
    assert failed[0][0] == ["poison"] and isinstance(failed[0][1], ValueError)
    commits.close()


def test_close_commits_what_is_queued_then_refuses() -> None:
    table = Table()
    commits = GroupCommit(table.write, name="test", max_delay=60.0)
    commits.submit(["a"], wait=False)
    assert commits.close(timeout=5)
    assert table.rows == ["a"]
    with pytest.raises(AuditError, match="closed"):
        commits.submit(["b"])


def test_an_error_of_the_database_itself_fails_the_batch_without_retries() -> None:
    attempts: list[int] = []
    release = threading.Event()

    def write(items: list[str]) -> None:
        attempts.append(len(items))
        release.wait(5)
        raise TimeoutError("database is locked")

    commits = GroupCommit(write, name="test",
                          retry_alone=lambda error: not isinstance(error, TimeoutError))
    failures: list[Exception] = []

    def writer(n: int) -> None:
        try:
            commits.submit([f"e{n}"])
        except TimeoutError as error:
            failures.append(error)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    wait_for(lambda: commits.queued == 7 or len(attempts) > 1)
    release.set()
    for thread in threads:
        thread.join()
    assert len(failures) == 8
    assert attempts == [1, 7]  # the first alone, then the seven queued behind it: no retries


class SlowTable(Table):
    """A table whose writes take a millisecond, like a disk's flush."""

    def write(self, items: list[str]) -> None:
        time.sleep(0.001)
        super().write(items)


def test_waiting_callers_share_writes_and_each_returns_once_its_own_is_done() -> None:
    table = SlowTable()
    commits = GroupCommit(table.write, name="test")
    done: list[int] = []

    def writer(n: int) -> None:
        for k in range(50):
            commits.submit([f"{n}-{k}"])
        done.append(n)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(done) == list(range(8))
    assert len(table.rows) == 400 and len(table.writes) < 400  # shared transactions
    assert commits.flush(5) and commits.queued == 0
