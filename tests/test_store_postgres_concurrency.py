"""Many writers, one chain, on a real PostgreSQL server: processes, kill -9, a server restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.events import make_event
from support.postgres import PgSchema
from support.waiting import wait_child

from audit_instrument import DeliveryError
from audit_instrument.store import AuditStore

_ROOT = str(Path(__file__).resolve().parent)

# argv: url, first event number, events, threads. Prints each stored event's key once
# send() has returned (it is committed), one line each.
_WRITER = """
import sys, threading
sys.path.insert(0, sys.argv[5])
from support.events import make_event
from audit_instrument.store import AuditStore

url, first, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
store = AuditStore(url)
lock = threading.Lock()

def run(t):
    for i in range(first + t, first + n, threads):
        event = make_event(i)
        store.send(event)
        with lock:
            sys.stdout.write(event.idempotency_key + "\\n")
            sys.stdout.flush()

workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
store.close()
"""


def _writer(url: str, first: int, n: int, threads: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _WRITER, url, str(first), str(n), str(threads), _ROOT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _stored_keys(pg: PgSchema) -> set[str]:
    return {key for (key,) in pg.execute("SELECT idempotency_key FROM {s}.events")}


def test_four_processes_write_one_chain(pg: PgSchema) -> None:
    AuditStore(pg.url).close()
    writers = [_writer(pg.url, first, 300, 4) for first in (0, 1000, 2000, 3000)]
    acknowledged: set[str] = set()
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        acknowledged.update(out.split())
    assert len(acknowledged) == 1200
    with AuditStore(pg.url, readonly=True) as store:
        result = store.verify()
        assert result.ok and result.rows == 1200, result
        assert store.head().seq == 1200
    assert _stored_keys(pg) == acknowledged
    seqs = [seq for (seq,) in pg.execute("SELECT seq FROM {s}.events ORDER BY seq")]
    assert seqs == list(range(1, 1201))


def test_writer_killed_mid_batch_leaves_the_chain_intact(pg: PgSchema) -> None:
    AuditStore(pg.url).close()
    acknowledged: set[str] = set()
    for round_ in range(3):
        writer = _writer(pg.url, round_ * 100_000, 100_000, 8)
        assert writer.stdout is not None
        seen = 0
        for line in writer.stdout:  # kill it while its threads are in the middle of sends
            acknowledged.add(line.strip())
            seen += 1
            if seen == 150:
                break
        os.kill(writer.pid, signal.SIGKILL)
        rest, _ = writer.communicate(timeout=30)
        acknowledged.update(rest.split())  # committed and printed before the kill landed
        assert writer.returncode == -signal.SIGKILL
        # the head is free again at once: the server ended the dead writer's transaction
        with AuditStore(pg.url, timeout=5) as store:
            store.send(make_event(900_000 + round_))
            result = store.verify()
        assert result.ok, result
    stored = _stored_keys(pg)
    assert acknowledged <= stored  # every committed event is there
    assert len(stored) == result.rows


def test_server_restart_mid_run_sends_retry_or_fail_loudly(pg: PgSchema) -> None:
    store = AuditStore(pg.url, timeout=20)
    acknowledged: list[str] = []
    failed: list[BaseException] = []
    lock = threading.Lock()
    restarted = threading.Event()
    after_restart = threading.Semaphore(0)
    stop = threading.Event()

    def run(t: int) -> None:
        i = t
        while not stop.is_set():
            event = make_event(i)
            i += 8
            try:
                store.send(event)
            except DeliveryError as error:
                with lock:
                    failed.append(error)
                continue
            except BaseException as error:  # anything else is a bug
                with lock:
                    failed.append(error)
                return
            with lock:
                acknowledged.append(event.idempotency_key)
                if restarted.is_set():
                    after_restart.release()

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    try:
        while len(acknowledged) < 200 and all(t.is_alive() for t in threads):
            threading.Event().wait(0.01)
        pg.cluster.restart()
        restarted.set()
        for _ in range(200):  # writes go on after the restart
            assert after_restart.acquire(timeout=60), "no send succeeded after the restart"
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert all(isinstance(error, DeliveryError) for error in failed), failed
    result = store.verify()
    assert result.ok, result
    stored = _stored_keys(pg)
    assert set(acknowledged) <= stored
    assert len(stored) == result.rows == store.count()
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_writes_with_its_own_connection(pg: PgSchema) -> None:
    store = AuditStore(pg.url)
    store.send(make_event(0))
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            code = 0 if store.send(make_event(1)) == 2 else 3
            store.close()
        finally:
            os._exit(code)
    assert wait_child(pid, timeout=30) == 0
    assert store.send(make_event(2)) == 3  # the parent's session survived the child
    assert store.verify().ok
    store.close()
