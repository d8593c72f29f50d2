"""The CLI through its real entry point: ``python -m audit_instrument`` in a subprocess."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from support.events import T0, make_event
from support.store import fill, raw, swap_rows

from audit_instrument import AuditEvent
from audit_instrument.cli import main
from audit_instrument.senders import read_jsonl
from audit_instrument.store import AuditStore


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would; stdin closed, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "audit_instrument", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "error:" in lines[0]
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture
def store30(tmp_path: Path) -> tuple[Path, list[AuditEvent]]:
    db = tmp_path / "audit.db"
    return db, fill(db, 30)


def _keys(stdout: str) -> list[str]:
    return [json.loads(line)["idempotency_key"] for line in stdout.splitlines()]


def _newest_first(events: list[AuditEvent]) -> list[str]:
    return [e.idempotency_key for e in sorted(events, key=lambda e: e.occurred_at, reverse=True)]


# -- the parser ----------------------------------------------------------------------


def test_help_lists_the_commands(tmp_path: Path) -> None:
    result = cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("demo", "events", "verify"):
        assert command in result.stdout


def test_missing_or_unknown_command_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(cli(cwd=tmp_path), "COMMAND")
    assert_one_line_error(cli("evnts", cwd=tmp_path), "evnts")
    assert_one_line_error(cli("events", "--bogus", cwd=tmp_path), "--bogus")


def test_console_script_is_installed(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "audit-instrument"
    if not script.exists():
        pytest.skip("package not installed with its console script")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "usage: audit-instrument" in result.stdout


# -- demo ------------------------------------------------------------------------------


def test_demo_records_and_prints_the_tweet_service(tmp_path: Path) -> None:
    result = cli("demo", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    db, jsonl = tmp_path / "audit.db", tmp_path / "audit.jsonl"
    for path in (db, jsonl):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with AuditStore(db, readonly=True) as store:
        stored = [s.event for s in store.iter_events()]
        assert store.verify().ok
    assert len(stored) == 7
    assert {e.idempotency_key for e in read_jsonl(jsonl)} == {e.idempotency_key for e in stored}
    assert sorted(e.action for e in stored) == sorted(
        ["user.login"] * 3 + ["tweet.create"] * 2 + ["tweet.update", "tweet.delete"]
    )
    out = result.stdout
    assert "Recorded 7 events" in out and "Hash chain intact" in out
    update_line = next(line for line in out.splitlines() if "tweet.update" in line)
    assert re.search(r"body +What time is the event +What time is the event\?$", update_line)
    failed = [line for line in out.splitlines() if line.split()[-2:] == ["outcome", "failure"]]
    assert len(failed) == 1
    assert "python -m audit_instrument verify" in out


def test_demo_json_and_custom_paths(tmp_path: Path) -> None:
    result = cli("demo", "--db", "x.db", "--no-jsonl", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    events = [AuditEvent.from_dict(json.loads(line)) for line in result.stdout.splitlines()]
    assert [e.action for e in events][:3] == ["user.login", "tweet.create", "tweet.update"]
    assert (tmp_path / "x.db").exists()
    assert not (tmp_path / "audit.jsonl").exists() and not (tmp_path / "audit.db").exists()


def test_demo_twice_appends_and_prints_only_its_own_run(tmp_path: Path) -> None:
    assert cli("demo", cwd=tmp_path).returncode == 0
    second = cli("demo", cwd=tmp_path)
    assert second.returncode == 0
    assert "Recorded 7 events" in second.stdout
    rows = [line for line in second.stdout.splitlines() if line[:3].strip().isdigit()]
    assert [int(line.split()[0]) for line in rows] == list(range(8, 15))
    with AuditStore(tmp_path / "audit.db", readonly=True) as store:
        assert store.count() == 14 and store.verify().ok
    assert len(read_jsonl(tmp_path / "audit.jsonl")) == 14


def test_demo_refuses_a_file_that_is_not_a_store(tmp_path: Path) -> None:
    (tmp_path / "audit.db").write_text("my notes, not a database\n" * 100)
    assert_one_line_error(cli("demo", cwd=tmp_path), "audit.db", "not a SQLite database")


# -- events ------------------------------------------------------------------------------


def test_events_table_newest_first_with_before_and_after(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with AuditStore(db) as store:
        store.send(make_event(1, action="tweet.update", action_type="U",
                              metadata={"body_was": "old text", "body": "new text"}))
        store.send(make_event(2, action="tweet.delete", action_type="D",
                              metadata={"body_was": "gone"}))
    result = cli("events", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    header, first, second = result.stdout.splitlines()
    assert header.split() == ["#", "WHEN", "(UTC)", "GROUP", "ACTOR", "ACTION", "TARGET",
                              "FIELD", "BEFORE", "AFTER"]
    assert first.split()[0] == "2" and "tweet.delete" in first and first.split()[-2:] == [
        "body", "gone"
    ]
    assert second.split()[-5:] == ["body", "old", "text", "new", "text"]
    # before and after in their own columns
    assert second.index("old text") == header.index("BEFORE")
    assert second.index("new text") == header.index("AFTER")
    assert result.stderr == ""


def test_events_escapes_control_characters(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    with AuditStore(db) as store:
        store.send(make_event(1, metadata={"body": "\x1b[2Jwiped\nsecond line"}))
    result = cli("events", cwd=tmp_path)
    assert "\x1b" not in result.stdout
    assert "\\x1b[2Jwiped\\nsecond line" in result.stdout
    assert len(result.stdout.splitlines()) == 2


@pytest.mark.parametrize(
    ("args", "keep"),
    [
        (["--actor", "user_1"], lambda e: e.actor_id == "user_1"),
        (["--action", "tweet.delete"], lambda e: e.action == "tweet.delete"),
        (["--target", "tweet_3"], lambda e: e.target_id == "tweet_3"),
        (["--group", "organization_1"], lambda e: e.group == "organization_1"),
        (["--since", "2026-01-01T12:25"], lambda e: e.occurred_at >= T0 + timedelta(minutes=25)),
        (["--until", "2026-01-01T12:03:00Z"], lambda e: e.occurred_at < T0 + timedelta(minutes=3)),
        (["--since", "2026-01-01", "--until", "2026-01-02", "--actor", "user_2"],
         lambda e: e.actor_id == "user_2"),
        (["--since", "1h"], lambda e: False),  # every event is from January 2026
    ],
)
def test_events_json_with_each_filter(
    store30: tuple[Path, list[AuditEvent]], args: list[str], keep: object
) -> None:
    db, events = store30
    result = cli("events", str(db), "--json", "--limit", "100", *args, cwd=db.parent)
    assert result.returncode == 0, result.stderr
    expected = _newest_first([e for e in events if keep(e)])  # type: ignore[operator]
    assert _keys(result.stdout) == expected
    for line in result.stdout.splitlines():
        AuditEvent.from_dict(json.loads(line))  # each line is a whole, valid event


def test_events_pages_with_a_cursor(store30: tuple[Path, list[AuditEvent]]) -> None:
    db, events = store30
    seen: list[str] = []
    args = ["events", str(db), "--json", "--limit", "12"]
    while True:
        result = cli(*args, cwd=db.parent)
        assert result.returncode == 0
        seen += _keys(result.stdout)
        if not result.stderr:
            break
        assert "--cursor" in result.stderr
        token = result.stderr.split("--cursor ")[1].split(")")[0]
        args = ["events", str(db), "--json", "--limit", "12", "--cursor", token]
    assert seen == _newest_first(events)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--since", "yesterday"], ["--since", "yesterday"]),
        (["--until", "2026-13-45"], ["--until"]),
        (["--limit", "0"], ["--limit"]),
        (["--limit", "many"], ["--limit"]),
        (["--cursor", "garbage"], ["cursor"]),
    ],
)
def test_events_bad_values_are_one_line_errors(
    store30: tuple[Path, list[AuditEvent]], args: list[str], words: list[str]
) -> None:
    db, _ = store30
    assert_one_line_error(cli("events", str(db), *args, cwd=db.parent), *words)


def test_events_on_a_missing_file_does_not_create_it(tmp_path: Path) -> None:
    assert_one_line_error(cli("events", "nope.db", cwd=tmp_path), "nope.db", "no such audit store")
    assert_one_line_error(cli("events", cwd=tmp_path), "audit.db")
    assert list(tmp_path.iterdir()) == []


def test_events_on_a_foreign_database(tmp_path: Path) -> None:
    raw(tmp_path / "app.db", "CREATE TABLE users (id INTEGER)")
    assert_one_line_error(cli("events", "app.db", cwd=tmp_path), "not an audit store")


def test_events_with_no_match(store30: tuple[Path, list[AuditEvent]]) -> None:
    db, _ = store30
    result = cli("events", str(db), "--actor", "nobody", cwd=db.parent)
    assert (result.returncode, result.stdout) == (0, "no events match\n")


# -- verify --------------------------------------------------------------------------------


def test_verify_intact_store(store30: tuple[Path, list[AuditEvent]]) -> None:
    db, _ = store30
    result = cli("verify", str(db), cwd=db.parent)
    assert result.returncode == 0, result.stderr
    assert "intact, 30 rows" in result.stdout
    assert result.stderr == ""  # no progress line when stderr is not a terminal


@pytest.mark.parametrize(
    ("tamper", "row"),
    [
        (lambda db: raw(db, "UPDATE events SET record = replace(record, '\"n\":7', '\"n\":70') "
                            "WHERE seq = 8"), 8),
        (lambda db: raw(db, "UPDATE events SET target_id = 'tweet_x' WHERE seq = 12"), 12),
        (lambda db: raw(db, "DELETE FROM events WHERE seq = 5"), 5),
        (lambda db: swap_rows(db, 20, 21), 20),
        (lambda db: raw(db, "DELETE FROM events WHERE seq > 27"), 28),
    ],
    ids=["edited", "edited-column", "deleted", "swapped", "truncated"],
)
def test_verify_names_the_first_bad_row(
    store30: tuple[Path, list[AuditEvent]], tamper: object, row: int
) -> None:
    db, _ = store30
    tamper(db)  # type: ignore[operator]
    result = cli("verify", str(db), cwd=db.parent)
    assert result.returncode == 1
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert f"row {row}:" in line and "NOT intact" in line


def test_verify_missing_file(tmp_path: Path) -> None:
    assert_one_line_error(cli("verify", cwd=tmp_path), "audit.db", "no such audit store")


def test_verify_shows_progress_only_on_a_terminal(
    store30: tuple[Path, list[AuditEvent]],
) -> None:
    db, _ = store30
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "audit_instrument", "verify", str(db)],
            stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL,
            env={**os.environ, "TERM": "xterm"},
        )
        os.close(follower)
        follower = -1
        out, _ = proc.communicate(timeout=60)
        shown = b""
        while select.select([leader], [], [], 0)[0]:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
        if follower != -1:
            os.close(follower)
    assert proc.returncode == 0
    assert b"verifying: 30/30 (100%)" in shown
    assert shown.endswith(b"\r\x1b[K")  # erased before the summary line
    assert b"intact, 30 rows" in out


# -- in-process entry point -------------------------------------------------------------


def test_main_returns_the_exit_status(
    store30: tuple[Path, list[AuditEvent]], capsys: pytest.CaptureFixture[str]
) -> None:
    db, _ = store30
    assert main(["verify", str(db)]) == 0
    assert "intact" in capsys.readouterr().out
    assert main(["events", str(db), "--limit", "x"]) == 2
    assert main(["--help"]) == 0
