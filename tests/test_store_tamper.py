"""Tamper evidence beyond the plain chain: SQLite's own checks, keyed chains, checkpoints.

Each attack is run the way an intruder with write access to the file but
without the key would: raw SQL on the file, hashes recomputed where that
helps them. The plain chain can't see some of them; a key or a checkpoint
kept elsewhere does.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from support.events import make_event
from support.store import (
    cut_and_rewrite_head,
    edit_and_recompute,
    fill,
    raw,
    wipe_and_reset_head,
    zero_page_of,
)

from audit_instrument import AuditConfigError, AuditValidationError
from audit_instrument.store import KEY_ENV, AuditStore, Checkpoint, Verification

KEY = "k" * 8 + "3f1c0b9a7e2d4c6f"
OTHER_KEY = "another key, 32 bytes long......"


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "audit.db"


def verify(db: Path, *, key: str | None = None, against: str | None = None) -> Verification:
    with AuditStore(db, readonly=True, key=key) as store:
        return store.verify(against=against)


def checkpoint(db: Path, *, key: str | None = None) -> str:
    with AuditStore(db, readonly=True, key=key) as store:
        return store.checkpoint()


# -- the file itself ------------------------------------------------------------------------


def test_dropped_index_is_found_by_the_schema_check(db: Path) -> None:
    fill(db, 10)
    assert verify(db).ok
    raw(db, "DROP INDEX events_actor")
    result = verify(db)
    assert not result.ok and result.bad_row is None
    assert "index events_actor is missing" in str(result)


def test_changed_index_is_found_by_the_schema_check(db: Path) -> None:
    fill(db, 10)
    raw(db, "DROP INDEX events_idempotency_key",
        "CREATE INDEX events_idempotency_key ON events (idempotency_key)")  # no longer UNIQUE
    result = verify(db)
    assert "index events_idempotency_key was changed" in result.reason


def test_dropped_trigger_is_found_by_the_schema_check(db: Path) -> None:
    fill(db, 3)
    raw(db, "DROP TRIGGER events_first_target")
    assert "trigger events_first_target is missing" in verify(db).reason


def test_zero_filled_page_is_found_by_the_integrity_check(db: Path) -> None:
    fill(db, 300)
    zero_page_of(db, "events_actor")  # an index page: every query still answers
    with AuditStore(db, readonly=True) as store:
        assert store.count() == 300
        result = store.verify()
    assert not result.ok
    assert result.reason.startswith("SQLite integrity check:")


def test_extra_index_of_the_user_is_not_a_problem(db: Path) -> None:
    fill(db, 3)
    raw(db, "CREATE INDEX my_report ON events (action, actor_id)")
    assert verify(db).ok


# -- what a plain chain cannot see, and a key or a checkpoint does ---------------------------

Attack = Callable[[Path], None]

ATTACKS: dict[str, Attack] = {
    "cut last rows, rewrite head": lambda db: cut_and_rewrite_head(db, 7),
    "delete everything, reset head": wipe_and_reset_head,
    "edit a row, recompute the chain": lambda db: edit_and_recompute(db, 4, '"n":3', '"n":30'),
}


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_unkeyed_chain_alone_cannot_see_a_rewrite(db: Path, attack: Attack) -> None:
    fill(db, 10)
    attack(db)
    assert verify(db).ok  # the documented limit of an unkeyed chain


@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_keyed_chain_sees_a_rewrite(db: Path, attack: Attack) -> None:
    fill(db, 10, key=KEY)
    assert verify(db, key=KEY).ok
    attack(db)
    result = verify(db, key=KEY)
    assert not result.ok, result
    assert result.keyed


@pytest.mark.parametrize("keyed", [False, True], ids=["unkeyed", "keyed"])
@pytest.mark.parametrize("attack", ATTACKS.values(), ids=ATTACKS.keys())
def test_checkpoint_sees_a_rewrite(db: Path, attack: Attack, keyed: bool) -> None:
    key = KEY if keyed else None
    fill(db, 10, key=key)
    line = checkpoint(db, key=key)
    assert verify(db, key=key, against=line).ok
    attack(db)
    result = verify(db, key=key, against=line)
    assert not result.ok, result


def test_checkpoint_names_the_rows_cut_off(db: Path) -> None:
    fill(db, 10)
    line = checkpoint(db)
    cut_and_rewrite_head(db, 7)
    result = verify(db, against=line)
    assert result.bad_row == 8
    assert "rows 8-10 missing" in result.reason and "checkpoint" in result.reason


def test_checkpoint_names_the_rewritten_row(db: Path) -> None:
    fill(db, 10)
    line = checkpoint(db)
    edit_and_recompute(db, 4, '"n":3', '"n":30')
    result = verify(db, against=line)
    assert result.bad_row == 10 and "rewritten" in result.reason


def test_checkpoint_still_holds_after_more_writes(db: Path) -> None:
    fill(db, 5)
    line = checkpoint(db)
    with AuditStore(db) as store:
        for i in range(5, 9):
            store.send(make_event(i))
        assert store.verify(against=line).ok
        assert store.verify(against=Checkpoint.parse(line)).ok


def test_checkpoint_of_an_empty_store(db: Path) -> None:
    AuditStore(db).close()
    line = checkpoint(db)
    assert line.startswith("aic1.0.") and line.endswith(".-")
    assert verify(db, against=line).ok


def test_checkpoint_line_round_trips(db: Path) -> None:
    fill(db, 3, key=KEY)
    line = checkpoint(db, key=KEY)
    parsed = Checkpoint.parse(line)
    assert str(parsed) == line
    with AuditStore(db, readonly=True, key=KEY) as store:
        assert (parsed.seq, parsed.hash) == (3, store.head().hash)
    assert parsed.mac is not None and len(parsed.mac) == 32


def test_forged_checkpoint_is_refused(db: Path) -> None:
    fill(db, 5, key=KEY)
    line = checkpoint(db, key=KEY)
    other = Path(str(db) + ".other")
    fill(other, 3, key=OTHER_KEY)
    forged = line.replace(".5.", ".4.", 1)
    for bad in (forged, checkpoint(other, key=OTHER_KEY)):
        result = verify(db, key=KEY, against=bad)
        assert not result.ok and "MAC does not match" in result.reason


@pytest.mark.parametrize(
    "bad", ["", "aic1", "aic1.5.xyz.2026-01-01T00:00:00Z.-", "aic2.1." + "0" * 64 + ".x.-",
            "aic1.1." + "0" * 64 + ".2026-02-30T00:00:00Z.-", 17, "\udcff"],
)
def test_malformed_checkpoint_is_a_validation_error(db: Path, bad: object) -> None:
    fill(db, 2)
    with AuditStore(db, readonly=True) as store, pytest.raises(AuditValidationError) as info:
        store.verify(against=bad)  # type: ignore[arg-type]
    assert info.value.field == "against"


# -- keyed chains ----------------------------------------------------------------------------


def test_keyed_store_reads_back_and_verifies(db: Path) -> None:
    events = fill(db, 6, key=KEY)
    with AuditStore(db, key=KEY) as store:
        assert store.keyed
        assert [s.event for s in store.query(limit=10)] == sorted(
            events, key=lambda e: e.occurred_at, reverse=True)
        assert store.send(make_event(6)) == 7
        result = store.verify()
    assert result.ok and result.keyed and result.rows == 7


def test_keyed_rows_are_not_plain_sha256(db: Path) -> None:
    fill(db, 2, key=KEY)
    fill(Path(str(db) + ".plain"), 2)
    keyed = sqlite3.connect(db).execute("SELECT hash FROM events").fetchall()
    plain = sqlite3.connect(str(db) + ".plain").execute("SELECT hash FROM events").fetchall()
    assert keyed != plain and len(keyed[0][0]) == 64


def test_verify_without_the_key_says_it_needs_it(db: Path) -> None:
    fill(db, 3, key=KEY)
    with AuditStore(db, readonly=True) as store:  # reading needs no key
        assert store.count() == 3
        with pytest.raises(AuditConfigError, match=f"keyed .*needs the key .*{KEY_ENV}"):
            store.verify()


def test_writing_without_the_key_or_with_another_is_refused(db: Path) -> None:
    fill(db, 3, key=KEY)
    with pytest.raises(AuditConfigError, match="keyed"):
        AuditStore(db)
    with pytest.raises(AuditConfigError, match="keyed"):
        AuditStore(db, key=OTHER_KEY)


def test_wrong_key_fails_verification(db: Path) -> None:
    fill(db, 3, key=KEY)
    result = verify(db, key=OTHER_KEY)
    assert not result.ok and "not the given key's" in result.reason


def test_removing_the_seal_does_not_unkey_the_store(db: Path) -> None:
    fill(db, 5, key=KEY)
    raw(db, "DELETE FROM chain_seal")
    result = verify(db, key=KEY)
    assert not result.ok and "seal was removed" in result.reason


def test_key_from_the_environment(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)
    fill(db, 3)
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(AuditConfigError, match="keyed"):
        verify(db)
    assert verify(db, key=KEY).ok


def test_key_added_to_an_unkeyed_store_protects_the_rows_before(db: Path) -> None:
    fill(db, 4)
    with AuditStore(db, key=KEY) as store:
        assert store.keyed
        store.send(make_event(4))
        store.send(make_event(5))
        assert store.verify().ok
    edit_and_recompute(db, 2, '"n":1', '"n":10')  # an unkeyed row, rehashed from there
    result = verify(db, key=KEY)
    assert result.bad_row == 5  # the first keyed row no longer links


def test_truncating_below_where_the_key_starts_is_seen(db: Path) -> None:
    fill(db, 4)
    with AuditStore(db, key=KEY) as store:
        store.send(make_event(4))
    cut_and_rewrite_head(db, 2)
    assert not verify(db, key=KEY).ok


def test_short_or_bad_keys_are_refused_without_echoing_them(db: Path) -> None:
    for bad in ("pw-Q7x", b"pw-Q7x", "pw-Q7x" + "y" * 9, "pw-Q7x\udcff" * 3):
        with pytest.raises(AuditConfigError) as info:
            AuditStore(db, key=bad)
        assert "pw-Q7x" not in str(info.value)
    with pytest.raises(AuditConfigError, match="str or bytes"):
        AuditStore(db, key=12345678901234567890)  # type: ignore[arg-type]


def test_key_never_leaves_the_process(db: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = "S3CRET-" + "abcdef0123456789"
    with AuditStore(db, key=secret) as store:
        store.send(make_event(0))
        shown = [repr(store), str(store.verify()), store.checkpoint(), repr(store._key)]
    fill_bad = Path(str(db) + ".wrong")
    fill(fill_bad, 1, key=KEY)
    with pytest.raises(AuditConfigError) as info:
        AuditStore(fill_bad, key=secret)
    shown.append(str(info.value))
    shown.append(caplog.text)
    for text in shown:
        assert secret not in text
    for path in db.parent.iterdir():
        data = path.read_bytes()
        assert secret.encode() not in data and secret.encode().hex().encode() not in data
    with pytest.raises(TypeError):
        import pickle

        pickle.dumps(store._key)


def test_files_of_a_keyed_store_are_private(db: Path) -> None:
    fill(db, 1, key=KEY)
    assert os.stat(db).st_mode & 0o077 == 0
