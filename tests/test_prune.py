"""Retention: prune moves the oldest rows into an archive store; both verify, and tampering
with what remains is still caught."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from support.events import T0, make_event
from support.store import cut_and_rewrite_head, fill, raw, write_schema_1

from audit_instrument import AuditConfigError, AuditError, AuditValidationError
from audit_instrument.cli import main
from audit_instrument.store import KEY_ENV, AuditStore
from audit_instrument.store import prune as prune_module

KEY = "prune-test-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


def at(minutes: int) -> str:
    """The time of event ``minutes`` (events i happened T0 + i minutes)."""
    return (T0 + timedelta(minutes=minutes)).isoformat()


def keys(path: Path, **kwargs: object) -> list[str]:
    with AuditStore(path, readonly=True, **kwargs) as store:  # type: ignore[arg-type]
        return sorted(item.event.idempotency_key for item in store.iter_events())


def test_prune_moves_old_rows_into_an_archive_and_both_verify(tmp_path: Path) -> None:
    db, archive = tmp_path / "audit.db", tmp_path / "archive.db"
    events = fill(db, 100)
    with AuditStore(db) as store:
        result = store.prune(before=at(40), archive=archive)
        assert (result.rows, result.first, result.last, result.kept_older) == (40, 1, 40, 0)
        assert result.archive == archive and result.checkpoint.startswith("aic1.100.")
        check = store.verify()
        assert check.ok and check.rows == 60 and check.base == 40, check
        assert str(check) == "intact: 60 rows (rows 1-40 pruned)"
        assert store.count() == 60 and store.base().seq == 40  # type: ignore[union-attr]
        assert store.count(target="tweet_0") == 12  # the target index lost the pruned rows
        counts = store.activity(unit="hour", since="2026-01-01")
        assert sum(c.events for c in counts or ()) == 60
        assert store.send(make_event(100)) == 101
        assert store.verify(against=result.checkpoint).ok
    with AuditStore(archive, readonly=True) as old:
        check = old.verify()
        assert check.ok and check.rows == 40 and old.count(target="tweet_0") == 8
        assert sum(c.events for c in old.activity(unit="day") or ()) == 40
        assert [i.seq for i in old.iter_events()] == list(range(40, 0, -1))
    assert keys(archive) == sorted(e.idempotency_key for e in events[:40])
    assert main(["verify", str(archive)]) == 0 and main(["verify", str(db)]) == 0


def test_pruning_again_appends_to_the_same_archive(tmp_path: Path) -> None:
    db, archive = tmp_path / "audit.db", tmp_path / "archive.db"
    fill(db, 90)
    with AuditStore(db) as store:
        store.prune(before=at(30), archive=archive)
        second = store.prune(before=at(70), archive=archive)
        assert (second.first, second.last) == (31, 70)
        nothing = store.prune(before=at(70), archive=archive)
        assert nothing.rows == 0
        assert store.verify().ok and store.count() == 20
    with AuditStore(archive, readonly=True) as old:
        assert old.verify().ok and old.count() == 70
    other = tmp_path / "other.db"
    with AuditStore(db) as store:
        store.prune(before=at(80), archive=other)  # a new archive starts at the store's base
        assert store.verify().ok
    with AuditStore(other, readonly=True) as newer:
        check = newer.verify()
        assert check.ok and (check.rows, check.base) == (10, 70)
        with pytest.raises(AuditConfigError, match="does not continue"):
            AuditStore(db).prune(before=at(85), archive=archive)


def test_rows_leave_only_from_the_start_of_the_chain(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with AuditStore(db) as store:
        for i in range(10):
            store.send(make_event(i))
        store.send(make_event(99))  # a newer event written before two older ones
        store.send(make_event(3, idempotency_key="late-1"))
        store.send(make_event(4, idempotency_key="late-2"))
        result = store.prune(before=at(50), archive=tmp_path / "a.db")
        assert (result.rows, result.kept_older) == (10, 2)
        assert store.verify().ok and store.count() == 3


def test_tampering_with_what_remains_is_still_caught(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fill(db, 50)
    with AuditStore(db) as store:
        store.prune(before=at(20), archive=tmp_path / "a.db")
    edited, deleted, rebased = (tmp_path / f"{n}.db" for n in ("e", "d", "b"))
    for copy in (edited, deleted, rebased):
        shutil.copy(db, copy)
    raw(edited, "UPDATE events SET record = replace(record, 'user_1', 'user_9') WHERE seq = 22")
    raw(deleted, "DELETE FROM events WHERE seq = 21")
    raw(rebased, "UPDATE chain_base SET seq = 21, hash = (SELECT hash FROM events WHERE seq = 21)")
    found = {}
    for copy in (edited, deleted, rebased):
        with AuditStore(copy, readonly=True) as store:
            found[copy.stem] = store.verify()
    assert found["e"].bad_row == 22 and "hash mismatch" in found["e"].reason
    assert found["d"].bad_row == 21 and "missing" in found["d"].reason
    # moving the base over row 21 looks like row 21 was pruned too: the archive ends at 20
    assert not found["b"].ok and found["b"].bad_row == 22
    gone = tmp_path / "gone.db"
    shutil.copy(db, gone)
    raw(gone, "DELETE FROM chain_base")  # the base deleted: rows 1-20 look deleted
    with AuditStore(gone, readonly=True) as store:
        check = store.verify()
    assert check.bad_row == 1 and "rows 1-20 missing" in check.reason


def test_a_keyed_store_keeps_its_base_under_the_head_mac(tmp_path: Path) -> None:
    db, archive = tmp_path / "audit.db", tmp_path / "archive.db"
    fill(db, 60, key=KEY)
    with pytest.raises(AuditConfigError, match="need its key"):
        AuditStore(db).prune(before=at(10), archive=archive)
    assert not archive.exists()
    with AuditStore(db, key=KEY) as store:
        store.prune(before=at(30), archive=archive)
        assert store.verify().ok and store.keyed
        line = store.checkpoint()
    with AuditStore(archive, readonly=True, key=KEY) as old:
        check = old.verify()
        assert check.ok and check.keyed and check.rows == 30
    moved = tmp_path / "moved.db"
    shutil.copy(db, moved)
    # an intruder without the key prunes two more rows: removes them and moves the base
    raw(moved, "UPDATE chain_base SET seq = 32, hash = (SELECT hash FROM events WHERE seq = 32)",
        "DELETE FROM event_targets WHERE seq <= 32", "DELETE FROM events WHERE seq <= 32")
    with AuditStore(moved, readonly=True, key=KEY) as store:
        check = store.verify()
    assert not check.ok and check.base == 32
    with AuditStore(db, readonly=True, key=KEY) as store:
        assert store.verify(against=line).ok


def test_a_keyed_store_pruned_by_an_intruder_is_caught_by_the_head_mac(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fill(db, 30, key=KEY)
    with AuditStore(db, key=KEY) as store:
        store.prune(before=at(10), archive=None)
        base = store.base()
        assert base is not None and base.seq == 10
    conn = sqlite3.connect(db)
    row = conn.execute("SELECT hash FROM events WHERE seq = 15").fetchone()
    conn.close()
    raw(db, "DELETE FROM event_targets WHERE seq <= 15", "DELETE FROM events WHERE seq <= 15",
        ("UPDATE chain_base SET seq = 15, hash = ?", (row[0],)),
        "DELETE FROM activity_hour", "DELETE FROM activity_day",
        'INSERT INTO activity_hour SELECT substr(occurred_at, 1, 13), "group", action, count(*) '
        "FROM events GROUP BY 1, 2, 3",
        'INSERT INTO activity_day SELECT substr(hour, 1, 10), "group", action, sum(events) '
        "FROM activity_hour GROUP BY 1, 2, 3")
    with AuditStore(db, readonly=True, key=KEY) as store:
        check = store.verify()
    assert check.bad_row == 0 and "prune base" in check.reason
    with AuditStore(db, readonly=True) as store:  # unkeyed, the same cut would pass alone
        with pytest.raises(AuditConfigError):
            store.verify()


def test_a_broken_chain_is_not_pruned(tmp_path: Path) -> None:
    db, archive = tmp_path / "audit.db", tmp_path / "archive.db"
    fill(db, 40)
    raw(db, "UPDATE events SET record = replace(record, 'user_1', 'user_7') WHERE seq = 6")
    with AuditStore(db) as store, pytest.raises(AuditError, match="row 6 does not follow"):
        store.prune(before=at(20), archive=archive)
    assert not archive.exists() and not Path(str(archive) + ".partial").exists()
    with AuditStore(db) as store:
        assert store.count() == 40 and store.base() is None
        with pytest.raises(AuditError, match="row 6"):
            store.prune(before=at(20), archive=None)
        assert store.count() == 40


def test_an_interrupted_prune_resumes_into_its_archive(tmp_path: Path) -> None:
    db, archive, backup = tmp_path / "audit.db", tmp_path / "archive.db", tmp_path / "b.db"
    fill(db, 50)
    shutil.copy(db, backup)
    with AuditStore(db) as store:
        store.prune(before=at(30), archive=archive)
    shutil.copy(backup, db)  # as if it stopped after writing the archive, before deleting
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    with AuditStore(db) as store:
        result = store.prune(before=at(35), archive=archive)
        assert (result.first, result.last) == (1, 35)
        assert store.verify().ok
    with AuditStore(archive, readonly=True) as old:
        assert old.verify().ok and old.count() == 35


def test_prune_refuses_the_store_itself_and_bad_values(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fill(db, 5)
    with AuditStore(db) as store:
        with pytest.raises(AuditConfigError, match="the store itself"):
            store.prune(before=at(3), archive=db)
        with pytest.raises(AuditValidationError, match="before"):
            store.prune(before="soon", archive=None)
        with pytest.raises(AuditValidationError, match="before"):
            store.prune(before=timedelta(days=-1), archive=None)
        not_a_store = tmp_path / "notes.txt"
        not_a_store.write_text("hello")
        with pytest.raises(AuditConfigError):
            store.prune(before=at(3), archive=not_a_store)
        assert store.count() == 5
    with AuditStore(db, readonly=True) as store, pytest.raises(AuditConfigError):
        store.prune(before=at(3), archive=None)


def test_verify_against_checkpoints_taken_before_the_prune(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fill(db, 30)
    with AuditStore(db) as store:
        old = store.checkpoint()  # at row 30
        raw_early = f"aic1.5.{next(i.hash for i in store.iter_events() if i.seq == 5)}." \
                    "2026-01-01T00:00:00Z.-"
        store.prune(before=at(10), archive=tmp_path / "a.db")
        assert store.verify(against=old).ok
        early = store.verify(against=raw_early)
        assert not early.ok and "verify the archive" in early.reason
        at_base = f"aic1.10.{store.base().hash}.2026-01-01T00:00:00Z.-"  # type: ignore[union-attr]
        assert store.verify(against=at_base).ok
    with AuditStore(tmp_path / "a.db", readonly=True) as archive:
        assert archive.verify(against=raw_early).ok


def test_writers_carry_on_while_a_prune_runs(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prune_module, "CHUNK", 25)
    db = tmp_path / "audit.db"
    fill(db, 400)
    sent: list[int | None] = []
    with AuditStore(db) as store:
        stop = threading.Event()

        def write() -> None:
            i = 1000
            while not stop.is_set() or len(sent) < 20:
                sent.append(store.send(make_event(i)))
                i += 1

        writer = threading.Thread(target=write)
        writer.start()
        try:
            result = store.prune(before=at(300), archive=tmp_path / "a.db")
        finally:
            stop.set()
            writer.join(30)
        assert result.rows == 300
        check = store.verify()
        assert check.ok and check.rows == 100 + len(sent), check
        assert all(seq is not None for seq in sent)


def test_an_old_store_is_migrated_and_pruned(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    write_schema_1(db, [make_event(i) for i in range(20)])
    with AuditStore(db) as store:
        assert sum(c.events for c in store.activity(unit="day") or ()) == 20  # backfilled
        store.prune(before=at(5), archive=tmp_path / "a.db")
        assert store.verify().ok
    with AuditStore(tmp_path / "a.db", readonly=True) as archive:
        assert archive.verify().ok and archive.count() == 5


def test_a_cut_chain_with_fixed_counts_still_fails_at_the_head(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fill(db, 20)
    with AuditStore(db) as store:
        line = store.checkpoint()
        store.prune(before=at(5), archive=None)
    cut_and_rewrite_head(db, 15)  # recomputes the counts too: only the checkpoint can tell
    with AuditStore(db, readonly=True) as store:
        assert store.verify().ok
        assert store.verify(against=line).bad_row == 16


def test_the_prune_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db, archive = tmp_path / "audit.db", tmp_path / "archive.db"
    fill(db, 30)
    code = main(["prune", str(db), "--before", at(12), "--archive", str(archive)])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert "rows 1-12 (12 events older than 2026-01-01 12:12:00Z)" in out
    assert f"moved to {archive}" in out and "checkpoint (keep it with the archive): aic1.30." in out
    assert main(["verify", str(archive)]) == 0 and main(["verify", str(db)]) == 0
    out, _ = capsys.readouterr()
    assert f"{db}: intact, 18 rows" in out
    assert main(["prune", str(db), "--before", at(12), "--archive", str(archive)]) == 0
    assert "nothing pruned" in capsys.readouterr().out
    assert main(["prune", str(db), "--before", at(20), "--no-archive"]) == 0
    assert "deleted (no archive)" in capsys.readouterr().out
    for bad in (["--before", "soon", "--no-archive"], ["--before", "90d"],
                ["--before", "1d", "--archive", "x", "--no-archive"]):
        assert main(["prune", str(db), *bad]) == 2
        assert "error" in capsys.readouterr().err
    raw(db, "UPDATE events SET record = replace(record, 'user_1', 'user_7') WHERE seq = 26")
    assert main(["prune", str(db), "--before", at(28), "--no-archive"]) == 1
    assert "does not follow" in capsys.readouterr().err
