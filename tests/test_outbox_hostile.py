"""The outbox against poison events, forks under load, and files that are not outboxes."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from support.events import make_event
from support.store import fill
from support.waiting import wait_child, wait_for
from support.workos_server import WorkOSServer

from audit_instrument import AuditConfigError, AuditEvent, DeliveryError, stats
from audit_instrument.delivery import Outbox
from audit_instrument.senders.workos import WorkOS

MakeWorkOS = Callable[..., WorkOS]


def _poison(n: int) -> AuditEvent:
    """An event that cannot be written: a lone surrogate, past validation."""
    event = make_event(n)
    object.__setattr__(event, "actor_name", "\ud800")
    return event


def _keys(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {key for (key,) in conn.execute("SELECT key FROM outbox")}


# -- one bad event never costs another ------------------------------------------------------
@pytest.mark.parametrize("durability", ["commit", "batch"])
def test_a_poison_event_among_16_threads_loses_no_good_event(
    tmp_path: Path, durability: str
) -> None:
    path = tmp_path / "outbox.db"
    box = Outbox(path, synchronous="NORMAL", durability=durability)  # type: ignore[arg-type]
    good: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def writer(slot: int) -> None:
        for n in range(200):
            number = slot * 1000 + n
            event = _poison(number) if n % 20 == 7 else make_event(number)
            try:
                box.add(event)
            except DeliveryError:
                with lock:
                    refused.append(event.idempotency_key)
                continue
            if event.actor_name != "\ud800":
                with lock:
                    good.append(event.idempotency_key)

    threads = [threading.Thread(target=writer, args=(slot,)) for slot in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert box.sync(30)
    box.close()
    assert len(good) == 16 * 190
    assert _keys(path) == set(good)  # every good event written, no poison
    if durability == "commit":  # the callers of poison events, and only they, heard of it
        assert len(refused) == 16 * 10
    else:  # nobody waited: each failed write was counted instead
        assert refused == [] and stats().failures["outbox write"] >= 1


# -- fork under load ------------------------------------------------------------------------
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forks_under_load_each_child_delivers_through_the_inherited_outbox(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path
) -> None:
    workos = make_workos(outbox=tmp_path / "outbox.db", requests_per_second=None)
    stop = threading.Event()
    sent: list[str] = []

    def load() -> None:  # the parent keeps writing and delivering while it forks
        n = 0
        while not stop.is_set():
            sent.append(workos.create_event(make_event(100_000 + n)).event.idempotency_key)
            n += 1

    writers = [threading.Thread(target=load) for _ in range(4)]
    for thread in writers:
        thread.start()
    children: dict[int, list[str]] = {}
    try:
        wait_for(lambda: len(sent) > 50)
        for child in range(20):
            events = [make_event(child * 100 + n) for n in range(10)]
            pid = os.fork()
            if pid == 0:  # the child: deliver through the inherited sender, leave at once
                code = 1
                try:
                    handles = workos.create_events(events)
                    code = 0 if all(h.result(timeout=15) for h in handles) else 2
                except BaseException as exc:
                    os.write(2, f"child failed: {exc!r}\n".encode())
                finally:
                    os._exit(code)
            children[pid] = [e.idempotency_key for e in events]
        for pid in children:
            assert wait_child(pid, timeout=60) == 0
    finally:
        stop.set()
        for thread in writers:
            thread.join(30)
    assert workos.flush(60) == 0
    for keys in children.values():
        assert set(keys) <= set(server.accepted)
    assert set(sent) <= set(server.accepted)  # the parent lost nothing either


# -- inspection never writes, and refuses what is not an outbox --------------------------------
def _snapshot(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in directory.iterdir()}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "audit_instrument", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("action", ["status", "dead", "retry"])
def test_outbox_commands_refuse_an_audit_store_and_leave_it_untouched(
    tmp_path: Path, action: str
) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    path = store_dir / "audit.db"
    fill(path, 5)
    before = _snapshot(store_dir)
    done = _cli("outbox", str(path), action)
    assert done.returncode == 2
    assert "not an outbox" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert _snapshot(store_dir) == before  # not a byte written, no file added


def test_outbox_status_opens_read_only(tmp_path: Path) -> None:
    box_dir = tmp_path / "box"
    box_dir.mkdir()
    path = box_dir / "outbox.db"
    with Outbox(path) as box:
        box.add_many([make_event(n) for n in range(3)])
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    done = _cli("outbox", str(path), "status", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pending"] == 3
    # (a reader of a WAL database may create its -wal and -shm files: SQLite's read protocol)
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    with Outbox(path, read_only=True) as box:
        assert box.status().pending == 3
        with pytest.raises(DeliveryError, match="read-only"):
            box.add(make_event(9))


def test_a_sender_refuses_an_audit_store_as_its_outbox(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    fill(path, 2)
    before = path.read_bytes()
    with pytest.raises(AuditConfigError, match="not an outbox"):
        Outbox(path)
    assert path.read_bytes() == before


def test_an_event_that_cannot_be_encoded_is_refused_alone(tmp_path: Path) -> None:
    huge = make_event(1)
    object.__setattr__(huge, "metadata", {"n": 10**5000})  # past validation
    with Outbox(tmp_path / "outbox.db") as box:
        with pytest.raises(DeliveryError, match="cannot be written"):
            box.add(huge)
        box.add(make_event(2))
        assert box.status().pending == 1
