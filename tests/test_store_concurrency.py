"""The store under many writers: one bad event fails alone; forked children write safely."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from support.events import make_event
from support.store import raw
from support.waiting import wait_child, wait_for

from audit_instrument import AuditEvent, DeliveryError
from audit_instrument.store import AuditStore


def _poisoned(i: int) -> AuditEvent:
    """An event validation will refuse: a lone surrogate, slipped past it as a hostile
    caller could (client JSON can carry one)."""
    event = make_event(i)
    object.__setattr__(event, "actor_name", "user\ud800")
    return event


@pytest.mark.parametrize("poison", ["lone surrogate", "refused by the database"])
def test_one_bad_event_among_16_threads_fails_alone(tmp_path: Path, poison: str) -> None:
    db = tmp_path / "audit.db"
    store = AuditStore(db)
    if poison == "refused by the database":  # fails inside the shared transaction itself
        raw(db, "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.target_id = 'poison' "
                "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    threads, per_thread = 16, 60
    start = threading.Barrier(threads)
    good_failed: list[BaseException] = []
    bad_failed: list[BaseException] = []
    stored: list[int] = []
    lock = threading.Lock()

    def run(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            n = t * per_thread + i
            bad = i % 20 == 7
            if not bad:
                event = make_event(n)
            elif poison == "lone surrogate":
                event = _poisoned(n)
            else:
                event = make_event(n, target_id="poison")
            try:
                seq = store.send(event)
            except DeliveryError as error:
                with lock:
                    (bad_failed if bad else good_failed).append(error)
                continue
            assert not bad and seq is not None
            with lock:
                stored.append(seq)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    good = threads * (per_thread - per_thread // 20)
    assert good_failed == []
    assert len(bad_failed) == threads * (per_thread // 20)
    assert sorted(stored) == list(range(1, good + 1))
    assert store.count() == good
    assert store.verify().ok
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forks_while_parent_threads_write(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    store = AuditStore(db)
    stop = threading.Event()
    parent_errors: list[BaseException] = []
    sent = [0]

    def write(t: int) -> None:
        i = 0
        while not stop.is_set():
            try:
                store.send(make_event(t * 1_000_000 + i))
                if i % 25 == 0:
                    store.query(limit=5)
            except BaseException as error:  # reported by the assertion below
                parent_errors.append(error)
                return
            i += 1
            sent[0] += 1

    writers = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for writer in writers:
        writer.start()
    wait_for(lambda: sent[0] >= 50)
    codes = []
    try:
        for k in range(20):
            pid = os.fork()
            if pid == 0:  # the child: write, read, close, and leave without cleanup
                code = 1
                try:
                    seqs = [store.send(make_event(50_000_000 + k * 10 + j)) for j in range(3)]
                    ok = all(seq is not None for seq in seqs) and store.count() >= 3
                    store.close()
                    code = 0 if ok else 2
                finally:
                    os._exit(code)
            codes.append(wait_child(pid, timeout=30))
    finally:
        stop.set()
        for writer in writers:
            writer.join()
    assert codes == [0] * 20
    assert parent_errors == []
    assert store.count() == sent[0] + 20 * 3
    result = store.verify()
    assert result.ok, result
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_child_of_a_closed_store_cannot_use_it(tmp_path: Path) -> None:
    store = AuditStore(tmp_path / "audit.db")
    store.close()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            store.send(make_event(0))
        except Exception as error:
            code = 0 if "closed" in str(error) else 3
        finally:
            os._exit(code)
    assert wait_child(pid, timeout=20) == 0
