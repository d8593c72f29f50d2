"""The store commands with hostile and unusual values: one line on stderr, exit 2, never a
traceback; verify against checkpoints and with keys."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
from support.events import make_event
from support.store import cut_and_rewrite_head, fill, raw

from audit_instrument.cli import main
from audit_instrument.store import KEY_ENV, AuditStore

KEY = "cli-test-key-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_key_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    fill(path, 12)
    return path


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(result: tuple[int, str, str], *words: str) -> None:
    code, out, err = result
    assert code == 2, result
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    for word in words:
        assert word in lines[0], lines[0]


# -- hostile values (issue: tracebacks from the CLI) ---------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--since", "99999999999999999999d"], ["--since", "out of range"]),
        (["--since", "999999999d"], ["--since", "out of range"]),
        (["--until", "999999999w"], ["--until", "out of range"]),
        (["--since", "0001-01-01T00:00:00+01:00"], ["--since", "out of range"]),
        (["--until", "9999-12-31T23:59:59-01:00"], ["--until", "out of range"]),
        (["--actor", "\udcff"], ["actor", "valid text"]),  # argv bytes b"\xff"
        (["--target", "x\udce9y"], ["target", "valid text"]),
        (["--action", ""], ["action"]),
        (["--limit", "99999999999999999999999"], ["--limit"]),
        (["--limit", "\udcff"], ["--limit"]),
        (["--cursor", "\udcff"], ["cursor"]),
        (["--cursor", "W" * 5000], ["cursor"]),
        (["--cursor", "WwoK" * 40], ["cursor"]),  # '[\n' nested: no recursion error
    ],
)
def test_events_bad_values_are_one_line(
    db: Path, capsys: pytest.CaptureFixture[str], args: list[str], words: list[str]
) -> None:
    assert_usage_error(run(capsys, "events", str(db), *args), *words)


def test_undecodable_file_name_is_shown_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = str(tmp_path / "caf\udce9.db")  # argv bytes b"caf\xe9.db"
    assert_usage_error(run(capsys, "events", name), "no such audit store", "\\udce9")
    fill(Path(name), 2)
    code, out, err = run(capsys, "verify", name)
    assert (code, err) == (0, "") and "caf\\udce9.db: intact, 2 rows" in out


def test_real_process_with_undecodable_argv(tmp_path: Path) -> None:
    fill(tmp_path / "audit.db", 2)
    env = {**os.environ, "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": ""}
    for args in ([b"--actor", b"\xff"], [b"--since", b"99999999999999999999d"]):
        result = subprocess.run(
            [sys.executable.encode(), b"-m", b"audit_instrument", b"events", *args],
            cwd=tmp_path, capture_output=True, timeout=60, stdin=subprocess.DEVNULL, env=env,
        )
        assert result.returncode == 2, result
        assert len(result.stderr.splitlines()) == 1 and b"Traceback" not in result.stderr


_WORDS = [
    "", "-", "--", "0", "-1", "1", "7d", "30m", "2h", "1w", "99999999999999999999d",
    "999999999d", "2026-01-31", "2026-01-31T12:00Z", "0001-01-01T00:00+01:00", "9999-12-31",
    "user_1", "tweet_2", "tweet.update", "organization_1", "\udcff", "\x00", "\x1b[2J",
    "é", "🙂", "a" * 300, "W" * 80, "aic1.1." + "0" * 64 + ".2026-01-01T00:00:00Z.-",
    "nan", "1e9", "10001", "10000", "NaN", "\ud800",
]
_OPTIONS = {
    "events": ["--actor", "--action", "--target", "--group", "--since", "--until", "--limit",
               "--cursor", "--json"],
    "verify": ["--against", "--key-file"],
    "checkpoint": ["--key-file"],
}


def test_fuzzed_arguments_never_raise(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """400 random command lines from hostile words (FUZZ_SEED=N explores other ones)."""
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "20260131")))
    for _ in range(400):
        command = rng.choice(sorted(_OPTIONS))
        args = [command, str(db) if rng.random() < 0.9 else rng.choice(_WORDS)]
        for _ in range(rng.randrange(4)):
            option = rng.choice(_OPTIONS[command])
            args.append(option)
            if option != "--json":
                args.append(rng.choice(_WORDS))
        code = main(args)  # an exception here is the failure
        err = capsys.readouterr().err
        assert code in (0, 1, 2), (args, code, err)
        assert "Traceback" not in err
        if code == 2:
            assert len(err.splitlines()) == 1, (args, err)


# -- verify and checkpoints -----------------------------------------------------------------


def test_checkpoint_then_verify_against_it(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, line, err = run(capsys, "checkpoint", str(db))
    assert code == 0 and err == "" and line.startswith("aic1.12.")
    code, out, _ = run(capsys, "verify", str(db), "--against", line.strip())
    assert code == 0 and "intact, 12 rows, matches the checkpoint" in out
    cut_and_rewrite_head(db, 9)
    assert run(capsys, "verify", str(db))[0] == 0  # an unkeyed chain can't see it alone
    code, out, err = run(capsys, "verify", str(db), "--against", line.strip())
    assert code == 1 and out == ""
    assert "NOT intact: row 10: rows 10-12 missing" in err


def test_verify_against_garbage_is_a_usage_error(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert_usage_error(run(capsys, "verify", str(db), "--against", "yesterday"), "against")


def test_verify_reports_a_dropped_index(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    raw(db, "DROP INDEX events_group")
    code, _, err = run(capsys, "verify", str(db))
    assert code == 1 and "index events_group is missing" in err


def test_keyed_store_with_the_key_from_the_environment_or_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "keyed.db"
    fill(db, 5, key=KEY)
    assert_usage_error(run(capsys, "verify", str(db)), "keyed", KEY_ENV)
    key_file = tmp_path / "store.key"
    key_file.write_text(KEY + "\n")
    code, out, _ = run(capsys, "verify", str(db), "--key-file", str(key_file))
    assert code == 0 and "intact, 5 rows, keyed chain" in out
    monkeypatch.setenv(KEY_ENV, KEY)
    code, line, _ = run(capsys, "checkpoint", str(db))
    assert code == 0 and not line.strip().endswith(".-")  # signed
    assert run(capsys, "verify", str(db), "--against", line.strip())[0] == 0
    monkeypatch.delenv(KEY_ENV)
    assert_usage_error(run(capsys, "verify", str(db), "--key-file", str(tmp_path / "nope")),
                       "cannot read the key file")
    (tmp_path / "short.key").write_text("abc")
    assert_usage_error(run(capsys, "verify", str(db), "--key-file", str(tmp_path / "short.key")),
                       "too short")
    for text in (out, line):
        assert KEY not in text


def test_events_needs_no_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "keyed.db"
    with AuditStore(db, key=KEY) as store:
        store.send(make_event(1))
    code, out, _ = run(capsys, "events", str(db), "--json")
    assert code == 0 and len(out.splitlines()) == 1
