"""The local audit store against real SQLite files: writes, queries, the hash chain."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.events import T0, make_event
from support.store import fill, raw, swap_rows
from support.waiting import wait_child

from audit_instrument import (
    AuditConfigError,
    AuditError,
    AuditEvent,
    AuditValidationError,
    DeliveryError,
    audit,
    audit_actor,
    configure,
    signals,
)
from audit_instrument.store import GENESIS_HASH, AuditStore, canonical_json


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


# -- writing and reading back ---------------------------------------------------


def test_events_read_back_losslessly(db: Path) -> None:
    rich = AuditEvent(
        group="organization_1", action="tweet.update", action_type="U",
        actor_name="zoë@example.com", actor_id="user_1",
        target_name="zoë@example.com", target_id="tweet_5", location="2001:db8::1",
        occurred_at="2019-05-01T01:15:55.619355Z", user_agent="Mozilla/5.0 (X11)",
        metadata={"body_was": "What time is the event", "body": "What time is the event?",
                  "when": datetime(2020, 2, 29, 23, 59, 59, 1, tzinfo=UTC),
                  "n": 3, "ratio": 0.25, "flag": False, "map": {"k": "v", "i": 1}},
    )
    with AuditStore(db) as store:
        assert store.send(rich) == 1
        [stored] = store.query().items
    assert stored.seq == 1
    assert stored.event == rich
    assert stored.event.to_record() == rich.to_record()
    assert stored.event.idempotency_key == rich.idempotency_key
    assert isinstance(stored.event.metadata["when"], datetime)


def test_file_is_private_and_in_wal_mode(db: Path) -> None:
    with AuditStore(db) as store:
        store.send(make_event(0))
        mode = stat.S_IMODE(os.stat(db).st_mode)
        assert mode == 0o600
        for extra in (Path(f"{db}-wal"), Path(f"{db}-shm")):
            if extra.exists():
                assert stat.S_IMODE(os.stat(extra).st_mode) == 0o600
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


def test_rows_chain_sha256_of_previous_hash_and_canonical_json(db: Path) -> None:
    events = fill(db, 4)
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT record, hash FROM events ORDER BY seq").fetchall()
    conn.close()
    previous = GENESIS_HASH
    for event, (record, digest) in zip(events, rows, strict=True):
        expected_record = json.dumps(
            event.to_record(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        assert record == expected_record == canonical_json(event)
        expected = hashlib.sha256((previous + expected_record).encode()).hexdigest()
        assert digest == expected
        previous = digest
    with AuditStore(db, readonly=True) as store:
        assert store.head().seq == 4
        assert store.head().hash == previous


def test_store_is_a_sender_for_instrumented_code(db: Path) -> None:
    store = AuditStore(db)
    configure(store)
    tweets = {5: {"body": "What time is the event"}}

    @audit("tweet.update", "U", target=lambda tweet_id: (f"tweet_{tweet_id}", "user@email.com"),
           snapshot=lambda tweet_id: tweets[tweet_id], fields=["body"])
    def update_tweet(tweet_id: int, body: str) -> None:
        tweets[tweet_id]["body"] = body

    with audit_actor(id="user_1", name="user@email.com", group="organization_1"):
        update_tweet(5, "What time is the event?")
    [event] = store.query().events
    assert event.action == "tweet.update"
    assert dict(event.metadata) == {
        "body_was": "What time is the event", "body": "What time is the event?"
    }
    store.close()


def test_same_idempotency_key_is_stored_once(db: Path) -> None:
    event = make_event(0)
    with AuditStore(db) as store:
        assert store.send(event) == 1
        assert store.send(event) is None
        assert store.send(make_event(1)) == 2
        assert store.count() == 2
        assert store.verify().ok


def test_same_event_from_many_threads_at_once_is_stored_once(db: Path) -> None:
    events = [make_event(i) for i in range(20)]
    results: list[int | None] = []
    lock = threading.Lock()
    with AuditStore(db) as store:
        start = threading.Barrier(6)

        def run() -> None:
            start.wait()
            for event in events:
                seq = store.send(event)
                with lock:
                    results.append(seq)

        workers = [threading.Thread(target=run) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert store.count() == 20
        assert store.verify().ok
    stored = [seq for seq in results if seq is not None]
    assert sorted(stored) == list(range(1, 21))  # each event got one row; the rest None


def test_reopening_continues_the_chain(db: Path) -> None:
    fill(db, 3)
    with AuditStore(db) as store:
        assert store.send(make_event(3)) == 4
        assert store.verify().ok
        assert store.verify().rows == 4


def test_several_threads_share_one_store(db: Path) -> None:
    threads, per_thread = 8, 150
    store = AuditStore(db)
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def run(t: int) -> None:
        start.wait()
        try:
            for i in range(per_thread):
                store.send(make_event(t * per_thread + i))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    assert store.count() == threads * per_thread
    result = store.verify()
    assert result.ok, result
    assert result.rows == threads * per_thread
    store.close()


def test_close_while_threads_send_loses_nothing_it_acknowledged(db: Path) -> None:
    store = AuditStore(db)
    stored: list[int] = []
    unexpected: list[BaseException] = []
    started = threading.Barrier(5)

    def run(t: int) -> None:
        started.wait()
        for i in range(10_000):
            try:
                seq = store.send(make_event(t * 10_000 + i))
            except AuditError as error:
                if "closed" not in str(error):
                    unexpected.append(error)
                return
            assert seq is not None
            stored.append(seq)

    workers = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for worker in workers:
        worker.start()
    started.wait()
    from support.waiting import wait_for

    wait_for(lambda: len(stored) >= 100)
    store.close()
    for worker in workers:
        worker.join(timeout=30)
        assert not worker.is_alive()
    assert unexpected == []
    with AuditStore(db, readonly=True) as check:
        assert check.count() == len(stored)
        assert check.verify().ok
    assert sorted(stored) == list(range(1, len(stored) + 1))


_WRITER = """
import sys
from audit_instrument.store import AuditStore
sys.path.insert(0, sys.argv[3])
from support.events import make_event
store = AuditStore(sys.argv[1])
offset = int(sys.argv[2])
for i in range(int(sys.argv[4]) if len(sys.argv) > 4 else 200):
    store.send(make_event(offset + i))
store.close()
"""


def test_two_processes_share_one_store(db: Path) -> None:
    root = str(Path(__file__).resolve().parent)
    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(offset), root],
                         stderr=subprocess.PIPE, text=True)
        for offset in (0, 1000)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    with AuditStore(db, readonly=True) as store:
        assert store.count() == 400
        result = store.verify()
        assert result.ok, result


def test_processes_creating_one_new_store_at_once_agree(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parent)
    for attempt in range(4):  # the race is at creation: several tries, few events each
        db = tmp_path / f"new-{attempt}.db"
        procs = [
            subprocess.Popen([sys.executable, "-c", _WRITER, str(db), str(offset), root, "20"],
                             stderr=subprocess.PIPE, text=True)
            for offset in (0, 1000, 2000, 3000)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
        with AuditStore(db, readonly=True) as store:
            assert store.count() == 80 and store.verify().ok


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_child_process_after_fork_writes_with_its_own_connection(db: Path) -> None:
    store = AuditStore(db)
    store.send(make_event(0))
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            code = 0 if store.send(make_event(1)) == 2 else 3
        finally:
            os._exit(code)
    assert wait_child(pid, timeout=20) == 0
    assert store.send(make_event(2)) == 3
    assert store.verify().ok
    store.close()


# -- queries -----------------------------------------------------------------------


@pytest.fixture
def filled(db: Path) -> tuple[AuditStore, list[AuditEvent]]:
    events = fill(db, 30)
    return AuditStore(db, readonly=True), events


def _ids(events: list[AuditEvent]) -> list[str]:
    return [event.idempotency_key for event in events]


def _newest_first(events: list[AuditEvent]) -> list[AuditEvent]:
    return sorted(events, key=lambda e: e.occurred_at, reverse=True)


@pytest.mark.parametrize(
    ("filters", "keep"),
    [
        ({"actor": "user_1"}, lambda e: e.actor_id == "user_1"),
        ({"action": "tweet.update"}, lambda e: e.action == "tweet.update"),
        ({"target": "tweet_2"}, lambda e: e.target_id == "tweet_2"),
        ({"group": "organization_2"}, lambda e: e.group == "organization_2"),
        (
            {"since": T0 + timedelta(minutes=10)},
            lambda e: e.occurred_at >= T0 + timedelta(minutes=10),
        ),
        ({"until": "2026-01-01T12:05:00Z"}, lambda e: e.occurred_at < T0 + timedelta(minutes=5)),
        (
            {"actor": "user_0", "group": "organization_1", "since": "2026-01-01T12:04:00",
             "until": datetime(2026, 1, 1, 12, 20)},
            lambda e: e.actor_id == "user_0" and e.group == "organization_1"
            and T0 + timedelta(minutes=4) <= e.occurred_at < T0 + timedelta(minutes=20),
        ),
    ],
)
def test_each_filter_selects_exactly_its_events(
    filled: tuple[AuditStore, list[AuditEvent]], filters: dict[str, Any], keep: Any
) -> None:
    store, events = filled
    expected = _newest_first([e for e in events if keep(e)])
    assert expected and len(expected) < len(events)
    page = store.query(limit=100, **filters)
    assert _ids(page.events) == _ids(expected)
    assert page.next_cursor is None
    assert store.count(**filters) == len(expected)


def test_newest_first_by_occurred_at_not_insertion_order(db: Path) -> None:
    late, early = make_event(9), make_event(1)
    with AuditStore(db) as store:
        store.send(late)
        store.send(early)
        assert _ids(store.query().events) == [late.idempotency_key, early.idempotency_key]


def test_cursor_pagination_visits_every_event_once(
    filled: tuple[AuditStore, list[AuditEvent]],
) -> None:
    store, events = filled
    seen: list[AuditEvent] = []
    sizes = []
    cursor = None
    while True:
        page = store.query(limit=7, cursor=cursor)
        sizes.append(len(page))
        seen.extend(page.events)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert sizes == [7, 7, 7, 7, 2]
    assert _ids(seen) == _ids(_newest_first(events))
    # with a filter, and through iter_events
    updates = [e for e in events if e.action == "tweet.update"]
    first = store.query(action="tweet.update", limit=4)
    rest = store.query(action="tweet.update", limit=100, cursor=first.next_cursor)
    assert _ids(first.events + rest.events) == _ids(_newest_first(updates))
    walked = [s.event for s in store.iter_events(page_size=3, action="tweet.update")]
    assert _ids(walked) == _ids(_newest_first(updates))


def test_cursor_handles_events_with_the_same_time(db: Path) -> None:
    events = [make_event(i, occurred_at=T0) for i in range(5)]
    with AuditStore(db) as store:
        for event in events:
            store.send(event)
        first = store.query(limit=2)
        second = store.query(limit=2, cursor=first.next_cursor)
        third = store.query(limit=2, cursor=second.next_cursor)
    assert [s.seq for s in (*first, *second, *third)] == [5, 4, 3, 2, 1]
    assert third.next_cursor is None


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 10_001}, "limit"),
        ({"limit": "10"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"until": 1234}, "until"),
        ({"actor": 5}, "actor"),
        ({"action": ""}, "action"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WyJ4IiwgMV0"}, "cursor"),  # valid base64 JSON, wrong content
    ],
)
def test_bad_query_values_raise_naming_the_filter(
    filled: tuple[AuditStore, list[AuditEvent]], filters: dict[str, Any], field: str
) -> None:
    store, _ = filled
    with pytest.raises(AuditValidationError) as info:
        store.query(**filters)
    assert info.value.field == field


# -- the hash chain ------------------------------------------------------------------


def _verify(db: Path) -> Any:
    with AuditStore(db, readonly=True) as store:
        return store.verify()


def test_intact_store_verifies(db: Path) -> None:
    fill(db, 12)
    result = _verify(db)
    assert result.ok and bool(result) and result.rows == 12 and result.bad_row is None


def test_empty_store_verifies(db: Path) -> None:
    AuditStore(db).close()
    assert _verify(db).ok


def test_edited_event_is_detected(db: Path) -> None:
    fill(db, 10)
    conn = sqlite3.connect(db)
    record = json.loads(conn.execute("SELECT record FROM events WHERE seq = 6").fetchone()[0])
    conn.close()
    record["metadata"]["n"] = 999
    raw(db, ("UPDATE events SET record = ? WHERE seq = 6", (json.dumps(record),)))
    result = _verify(db)
    assert not result.ok
    assert result.bad_row == 6
    assert "hash" in result.reason


def test_edited_index_column_is_detected(db: Path) -> None:
    fill(db, 10)
    raw(db, "UPDATE events SET actor_id = 'someone_else' WHERE seq = 4")
    result = _verify(db)
    assert (result.bad_row, "actor_id" in result.reason) == (4, True)


def test_edit_with_recomputed_row_hash_breaks_the_next_row(db: Path) -> None:
    fill(db, 10)
    conn = sqlite3.connect(db, isolation_level=None)
    previous, record = conn.execute(
        "SELECT (SELECT hash FROM events WHERE seq = 4), record FROM events WHERE seq = 5"
    ).fetchone()
    forged = record.replace('"n":4', '"n":40')
    digest = hashlib.sha256((previous + forged).encode()).hexdigest()
    conn.execute("UPDATE events SET record = ?, hash = ? WHERE seq = 5", (forged, digest))
    conn.close()
    assert _verify(db).bad_row == 6


def test_deleted_row_is_detected(db: Path) -> None:
    fill(db, 10)
    raw(db, "DELETE FROM events WHERE seq = 3")
    result = _verify(db)
    assert result.bad_row == 3
    assert "missing" in result.reason


def test_deleted_and_renumbered_rows_are_detected(db: Path) -> None:
    fill(db, 10)
    raw(db, "DELETE FROM events WHERE seq = 3", "UPDATE events SET seq = seq - 1 WHERE seq > 3")
    assert _verify(db).bad_row == 3


def test_rows_cut_off_the_end_are_detected(db: Path) -> None:
    fill(db, 10)
    raw(db, "DELETE FROM events WHERE seq >= 9")
    result = _verify(db)
    assert result.bad_row == 9
    assert "end" in result.reason


def test_truncation_stays_detected_after_new_writes(db: Path) -> None:
    fill(db, 10)
    raw(db, "DELETE FROM events WHERE seq = 10")
    with AuditStore(db) as store:
        store.send(make_event(50))
        result = store.verify()
    assert result.bad_row == 10


def test_swapped_rows_are_detected(db: Path) -> None:
    fill(db, 10)
    swap_rows(db, 4, 7)
    result = _verify(db)
    assert result.bad_row == 4


def test_edited_chain_head_is_detected(db: Path) -> None:
    fill(db, 5)
    raw(db, f"UPDATE chain SET hash = '{'f' * 64}'")
    assert not _verify(db).ok


def test_deleted_chain_head_is_detected_and_stops_writes(db: Path) -> None:
    fill(db, 5)
    raw(db, "DELETE FROM chain")
    result = _verify(db)
    assert (result.bad_row, str(result)) == (0, "chain head: missing (deleted)")
    with AuditStore(db) as store:
        with pytest.raises(AuditConfigError, match="chain head is missing"):
            store.head()
        with pytest.raises(DeliveryError, match="chain head is missing"):
            store.send(make_event(9))


def test_row_inserted_behind_the_stores_back_is_detected(db: Path) -> None:
    fill(db, 5)
    conn = sqlite3.connect(db, isolation_level=None)
    previous = conn.execute("SELECT hash FROM events WHERE seq = 5").fetchone()[0]
    event = make_event(77)
    forged = canonical_json(event)
    digest = hashlib.sha256((previous + forged).encode()).hexdigest()
    conn.execute(
        'INSERT INTO events (seq, occurred_at, action, actor_id, target_id, "group", '
        "idempotency_key, record, hash) VALUES (6, ?, ?, ?, ?, ?, ?, ?, ?)",
        (json.loads(forged)["occurred_at"], event.action, event.actor_id, event.target_id,
         event.group, event.idempotency_key, forged, digest),
    )
    conn.close()
    result = _verify(db)
    assert result.bad_row == 6 and "after the chain head" in result.reason


def test_unreadable_row_is_a_clear_error_on_query(db: Path) -> None:
    fill(db, 3)
    raw(db, "UPDATE events SET record = '{\"action\": 1}' WHERE seq = 2")
    with AuditStore(db, readonly=True) as store:
        with pytest.raises(AuditConfigError, match="row 2 does not hold a valid event"):
            store.query()
        assert store.verify().bad_row == 2


def test_verify_reports_progress(db: Path) -> None:
    fill(db, 3)
    seen: list[int] = []
    with AuditStore(db, readonly=True) as store:
        assert store.verify(progress=seen.append).ok
    assert seen == [3]


# -- bad files and failures --------------------------------------------------------


def test_garbage_file_is_a_config_error(db: Path) -> None:
    db.write_bytes(b"this is not a database, just some bytes" * 200)
    for readonly in (False, True):
        with pytest.raises(AuditConfigError, match="not a SQLite database"):
            AuditStore(db, readonly=readonly)
    assert db.read_bytes().startswith(b"this is not a database")  # left untouched


def test_other_sqlite_database_is_a_config_error(db: Path) -> None:
    raw(db, "CREATE TABLE users (id INTEGER PRIMARY KEY)")
    with pytest.raises(AuditConfigError, match="not an audit store"):
        AuditStore(db)
    raw(db, "PRAGMA application_id = 1234")
    with pytest.raises(AuditConfigError, match="another application"):
        AuditStore(db, readonly=True)


def test_newer_schema_is_a_config_error(db: Path) -> None:
    fill(db, 1)
    raw(db, "PRAGMA user_version = 99")
    with pytest.raises(AuditConfigError, match="newer"):
        AuditStore(db)


def test_unwritable_locations_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(AuditConfigError, match="cannot open"):
        AuditStore(tmp_path / "missing-dir" / "audit.db")
    with pytest.raises(AuditConfigError, match="directory"):
        AuditStore(tmp_path)
    with pytest.raises(AuditConfigError, match="no such audit store"):
        AuditStore(tmp_path / "nope.db", readonly=True)
    assert not (tmp_path / "nope.db").exists()


def test_readonly_store_refuses_to_write(db: Path) -> None:
    fill(db, 1)
    with AuditStore(db, readonly=True) as store, pytest.raises(AuditConfigError, match="read-only"):
        store.send(make_event(1))


def test_closed_store_refuses_work(db: Path) -> None:
    store = AuditStore(db)
    store.close()
    store.close()  # twice is fine
    with pytest.raises(AuditError, match="closed"):
        store.send(make_event(0))
    with pytest.raises(AuditError, match="closed"):
        store.query()


def test_failed_write_keeps_nothing_and_reports(db: Path) -> None:
    store = AuditStore(db)
    store.send(make_event(0))
    raw(db, "CREATE TRIGGER refuse BEFORE INSERT ON events WHEN NEW.target_id = 'tweet_bad' "
            "BEGIN SELECT RAISE(ABORT, 'disk is full'); END")
    failed: list[tuple[Any, dict[str, Any]]] = []
    signals.event_failed.connect(lambda sender, **kw: failed.append((sender, kw)), weak=False)
    bad = make_event(1, target_id="tweet_bad")
    with pytest.raises(DeliveryError, match="disk is full"):
        store.send(bad)
    assert store.count() == 1 and store.head().seq == 1
    assert failed and failed[0][0] is bad and failed[0][1]["destination"] is store
    # the business call is not broken when the store is a configured sender
    configure(store)
    from audit_instrument import emit

    emit(make_event(2, target_id="tweet_bad"))
    assert store.send(make_event(3)) == 2
    assert store.verify().ok
    store.close()


def test_delivered_signal_names_the_store(db: Path) -> None:
    delivered: list[Any] = []
    signals.event_delivered.connect(
        lambda sender, **kw: delivered.append((sender, kw["destination"])), weak=False
    )
    with AuditStore(db) as store:
        event = make_event(0)
        store.send(event)
        assert delivered == [(event, store)]
