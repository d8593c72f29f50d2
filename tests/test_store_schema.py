"""Stores written by earlier code, the schema-2 migration, and several targets per event."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from support.events import make_event
from support.store import fill, raw, write_schema_1

from audit_instrument import AuditEvent, Target
from audit_instrument.store import KEY_ENV, AuditStore, canonical_json
from audit_instrument.store.backend import NewRow
from audit_instrument.store.chain import Linker, record_targets
from audit_instrument.store.sqlite import SQLiteBackend
from audit_instrument.store.sqlite_schema import SCHEMA_VERSION

FIXTURE = Path(__file__).parent / "fixtures" / "store-v1.sqlite"
FIXTURE_HEAD = "22195b566ae154532e20e4ed670f1240c8c4dcd7d58dc1ebe16f1cbee7bb40c0"


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def _version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def old_file(tmp_path: Path) -> Path:
    """A copy of a store file the schema-1 code wrote (tests/fixtures), free to change."""
    path = tmp_path / "old.db"
    shutil.copyfile(FIXTURE, path)
    return path


# -- stores written before ------------------------------------------------------------------


def test_file_written_by_the_schema_1_code_verifies_read_only(old_file: Path) -> None:
    with AuditStore(old_file, readonly=True) as store:
        result = store.verify()
        assert result.ok, result
        assert result.rows == 7 and store.head().hash == FIXTURE_HEAD
        rich = store.query(target="tweet_5").events
        assert [e.idempotency_key for e in rich] == ["fixture-rich-event"]
        assert canonical_json(rich[0]) == sqlite3.connect(old_file).execute(
            "SELECT record FROM events WHERE seq = 7").fetchone()[0]  # byte for byte
    assert _version(old_file) == 1  # read-only never migrates


def test_file_written_by_the_schema_1_code_migrates_and_continues(old_file: Path) -> None:
    with AuditStore(old_file) as store:
        assert _version(old_file) == SCHEMA_VERSION
        assert store.verify().ok
        assert store.count(target="tweet_0") == 2
        assert store.send(make_event(100)) == 8
        result = store.verify()
    assert result.ok and result.rows == 8


def test_raw_schema_1_store_verifies_migrates_and_keeps_its_hashes(tmp_path: Path) -> None:
    db = tmp_path / "raw-v1.db"
    events = [make_event(i) for i in range(25)]
    head = write_schema_1(db, events)
    with AuditStore(db, readonly=True) as store:
        assert store.verify().ok and store.head().hash == head
    with AuditStore(db) as store:
        assert store.head().hash == head
        for target in ("tweet_0", "tweet_3"):
            expected = sorted(e.idempotency_key for e in events if e.target_id == target)
            found = sorted(s.event.idempotency_key for s in store.iter_events(target=target))
            assert found == expected
        assert store.verify().ok
    assert _version(db) == SCHEMA_VERSION


def test_schema_1_tampering_is_still_found_read_only(tmp_path: Path) -> None:
    db = tmp_path / "raw-v1.db"
    write_schema_1(db, [make_event(i) for i in range(5)])
    raw(db, "UPDATE events SET target_id = 'tweet_x' WHERE seq = 3")
    with AuditStore(db, readonly=True) as store:
        assert store.verify().bad_row == 3
    raw(db, "UPDATE events SET target_id = 'tweet_2' WHERE seq = 3", "DROP INDEX events_target")
    with AuditStore(db, readonly=True) as store:
        assert "index events_target is missing" in store.verify().reason


def test_new_and_migrated_stores_have_the_same_schema(tmp_path: Path, old_file: Path) -> None:
    fill(tmp_path / "new.db", 1)
    AuditStore(old_file).close()

    def schema(path: Path) -> list[tuple[str, str]]:
        conn = sqlite3.connect(path)
        try:
            return sorted(conn.execute("SELECT name, sql FROM sqlite_schema WHERE sql NOT NULL"))
        finally:
            conn.close()

    assert schema(tmp_path / "new.db") == schema(old_file)


def test_rows_written_by_a_schema_1_writer_after_the_migration_are_indexed(
    tmp_path: Path,
) -> None:
    """A process still running the old code keeps writing during an upgrade."""
    db = tmp_path / "audit.db"
    fill(db, 3)
    with AuditStore(db) as store:
        head = store.head()
    late = make_event(3, target_id="tweet_late")
    record = canonical_json(late)
    import hashlib

    digest = hashlib.sha256((head.hash + record).encode()).hexdigest()
    raw(db, ('INSERT INTO events (seq, occurred_at, action, actor_id, target_id, "group", '
             "idempotency_key, record, hash) VALUES (4, ?, ?, ?, ?, ?, ?, ?, ?)",
             (json.loads(record)["occurred_at"], late.action, late.actor_id, late.target_id,
              late.group, late.idempotency_key, record, digest)),
        (f"UPDATE chain SET seq = 4, hash = '{digest}'", ()))
    with AuditStore(db, readonly=True) as store:
        assert store.count(target="tweet_late") == 1
        assert store.verify().ok


# -- several targets ------------------------------------------------------------------------


def _multi_target_row(event: AuditEvent, extra: list[str]) -> NewRow:
    """The row of ``event`` as if its record named more targets (schema of WorkOS targets)."""
    record = event.to_record()
    record["targets"] = [{"id": event.target_id, "type": "tweet"}] + [
        {"id": target, "type": "user", "name": target, "metadata": {}} for target in extra
    ]
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return NewRow(json.loads(text)["occurred_at"], event.action, event.actor_id,
                  event.target_id, event.group, event.idempotency_key, text,
                  record_targets(record))


def test_record_targets_first_target_then_the_others() -> None:
    record = {"target_id": "a", "targets": [{"id": "a"}, {"id": "b"}, {"id": "b"}, "junk", {}]}
    assert record_targets(record) == ("a", "b")
    assert record_targets({"target_id": "a"}) == ("a",)


def test_every_target_is_indexed_and_verified(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    backend = SQLiteBackend(db)
    rows = [_multi_target_row(make_event(0), ["user_7", "user_8"]),
            _multi_target_row(make_event(1), ["user_8"])]
    assert backend.append(rows, lambda seal: Linker(seal, None, "test")) == [1, 2]
    backend.close()
    with AuditStore(db, readonly=True) as store:
        assert store.count(target="user_8") == 2
        assert store.count(target="user_7") == 1
        assert store.count(target="tweet_0") == 1
        assert store.count(target="user_7", actor="user_0") == 1
        assert store.count(target="user_7", actor="user_1") == 0
        assert store.verify().ok
    raw(db, "DELETE FROM event_targets WHERE target_id = 'user_7'")  # hide it from a query
    with AuditStore(db, readonly=True) as store:
        result = store.verify()
    assert result.bad_row == 1 and "target index was edited" in result.reason


def test_target_entry_for_a_missing_row_is_found(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fill(db, 3)
    raw(db, "INSERT INTO event_targets VALUES ('tweet_9', '2026-01-01T12:00:00.000000Z', 99)")
    with AuditStore(db, readonly=True) as store:
        result = store.verify()
    assert result.bad_row == 99 and "target index" in result.reason


def test_query_by_target_pages_newest_first(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    events = fill(db, 40)
    wanted = sorted((e for e in events if e.target_id == "tweet_2"),
                    key=lambda e: e.occurred_at, reverse=True)
    with AuditStore(db, readonly=True) as store:
        seen = [s.event for s in store.iter_events(page_size=3, target="tweet_2",
                                                   since="2026-01-01T12:05:00Z")]
    assert seen == [e for e in wanted if e.occurred_at.minute >= 5]


def test_event_with_several_targets_round_trips(tmp_path: Path) -> None:
    event = make_event(0, target_id=None, target_name=None,
                       targets=(Target(id="tweet_0", name="t", type="tweet"),
                                Target(id="user_9", name="u", type="user")))
    with AuditStore(tmp_path / "audit.db") as store:
        store.send(event)
        assert store.query(target="user_9").events == [event]
        assert store.query(target="tweet_0").events == [event]
        assert store.verify().ok
