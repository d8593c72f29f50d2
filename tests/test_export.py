"""Exports: the fixed CSV columns, JSON lines that read back as events, filters, the command."""

from __future__ import annotations

import csv
import io
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from support.events import make_event
from support.store import fill
from support.viewer import HOSTILE, hostile_event

from audit_instrument import AuditEvent, Target
from audit_instrument.cli import main
from audit_instrument.store import AuditStore
from audit_instrument.viewer.export import CSV_COLUMNS, csv_chunks, jsonl_chunks, neutralise


def _rows(store: AuditStore, **filters: object) -> list[tuple[str, int, str, str]]:
    return list(store.records(**filters))


def test_csv_has_the_documented_columns_and_metadata_as_one_json_cell(tmp_path: Path) -> None:
    with AuditStore(tmp_path / "a.db") as store:
        store.send(make_event(1, metadata={"body_was": "a, \"b\"", "body": "line1\nline2"}))
        store.send(AuditEvent(
            group="org", action="doc.share", action_type="U", actor_name="Ann", actor_id="ann",
            targets=[Target("doc_1", "Doc", type="document", metadata={"pages": 3}),
                     Target("user_2", "Bob")],
            actor_type="user", actor_metadata={"role": "admin"}, version=2,
            idempotency_key="rich",
        ))
        text = b"".join(csv_chunks(_rows(store))).decode("utf-8")
        digest = {item.event.idempotency_key: item.hash for item in store.iter_events()}
    assert text.endswith("\r\n")
    header, rich, plain = list(csv.reader(io.StringIO(text)))
    assert tuple(header) == CSV_COLUMNS
    cells = dict(zip(header, rich, strict=True))
    assert (cells["actor_type"], cells["version"], cells["hash"]) == ("user", "2", digest["rich"])
    assert json.loads(cells["targets"]) == [
        {"id": "doc_1", "name": "Doc", "type": "document", "metadata": {"pages": 3}},
        {"id": "user_2", "name": "Bob"}]
    assert json.loads(cells["actor_metadata"]) == {"role": "admin"}
    cells = dict(zip(header, plain, strict=True))
    assert json.loads(cells["metadata"]) == {"body_was": "a, \"b\"", "body": "line1\nline2"}
    assert (cells["targets"], cells["actor_type"], cells["version"]) == ("", "", "")
    assert cells["actor_metadata"] == "{}" and cells["occurred_at"] == "2026-01-01T12:01:00.000000Z"


def test_jsonl_lines_are_the_stored_records_and_read_back(tmp_path: Path) -> None:
    events = [make_event(i) for i in range(5)] + [hostile_event()]
    with AuditStore(tmp_path / "a.db") as store:
        for event in events:
            store.send(event)
        text = b"".join(jsonl_chunks(_rows(store), size=100)).decode("utf-8")
    lines = text.splitlines()
    back = {AuditEvent.from_dict(json.loads(line)).idempotency_key: line for line in lines}
    assert set(back) == {event.idempotency_key for event in events}
    for event in events:
        assert AuditEvent.from_dict(json.loads(back[event.idempotency_key])) == event


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_formula_cells_are_neutralised(cell: str) -> None:
    assert neutralise(cell) == "'" + cell
    assert neutralise("1-1") == "1-1" and neutralise("a=b") == "a=b"


def test_every_user_filled_cell_is_neutralised(tmp_path: Path) -> None:
    formula = "=cmd|'/C calc'!A0"
    with AuditStore(tmp_path / "a.db") as store:
        store.send(AuditEvent(
            group=formula, action="=x.y", action_type="C", actor_name=formula, actor_id=formula,
            target_name=formula, target_id=formula, location=formula, user_agent=formula,
            actor_type=formula, idempotency_key="=key", metadata={"m": formula},
        ))
        store.send(hostile_event())
        text = b"".join(csv_chunks(_rows(store))).decode("utf-8")
    header, *rows = list(csv.reader(io.StringIO(text)))
    for row in rows:
        for name, cell in zip(header, row, strict=True):
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
    formula_row = next(row for row in rows if row[header.index("idempotency_key")] == "'=key")
    for name in ("group", "actor_id", "actor_name", "actor_type", "target_id",
                 "target_name", "location", "user_agent"):
        assert formula_row[header.index(name)] == "'" + formula, name
    assert formula_row[header.index("action")] == "'=x.y"
    assert json.loads(formula_row[header.index("metadata")]) == {"m": formula}
    hostile_row = next(row for row in rows if row[header.index("idempotency_key")] == "hostile-0")
    assert hostile_row[header.index("location")] == "'" + HOSTILE["location"]


def test_the_export_command_writes_a_private_file_with_the_filters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db, out = tmp_path / "audit.db", tmp_path / "out.csv"
    fill(db, 40)
    assert main(["export", str(db), "--format", "csv", "--actor", "user_1", "--out", str(out),
                 "--jobs", "2"]) == 0
    _, err = capsys.readouterr()
    assert err.strip() == f"exported 10 events to {out} (CSV)"
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    rows = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"))))
    assert len(rows) == 11 and {row[4] for row in rows[1:]} == {"user_1"}
    assert not list(tmp_path.glob("*.partial"))
    assert main(["export", str(db), "--format", "jsonl", "--since", "2026-01-01T12:30Z"]) == 0
    out_text, err = capsys.readouterr()
    assert err == "" and len(out_text.splitlines()) == 10
    assert main(["export", str(db), "--format", "xml"]) == 2
    assert main(["export", str(db), "--jobs", "0"]) == 2
    assert main(["export", str(tmp_path / "missing.db")]) == 2
    assert main(["export", str(db), "--out", str(tmp_path / "no" / "such" / "dir.csv")]) == 2


def test_the_export_command_streams_to_a_pipe(tmp_path: Path) -> None:
    db = tmp_path / "audit.db"
    fill(db, 30)
    done = subprocess.run(
        [sys.executable, "-m", "audit_instrument", "export", str(db), "--format", "jsonl"],
        capture_output=True, check=True, timeout=60,
    )
    lines = done.stdout.decode("utf-8").splitlines()
    assert len(lines) == 30 and done.stderr == b""  # no progress line off a terminal
    assert json.loads(lines[0])["metadata"] == {"n": 29}


def test_the_export_command_shows_progress_on_a_terminal(tmp_path: Path) -> None:
    import pty

    db, out = tmp_path / "audit.db", tmp_path / "out.jsonl"
    fill(db, 30)
    leader, follower = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "audit_instrument", "export", str(db), "--format", "jsonl",
             "--out", str(out)],
            stderr=follower, stdout=subprocess.DEVNULL, timeout=60,
            env={**os.environ, "TERM": "xterm"},
        )
        os.close(follower)
        shown = b""
        while True:
            try:
                piece = os.read(leader, 4096)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not piece:
                break
            shown += piece
    finally:
        os.close(leader)
    assert done.returncode == 0
    assert b"exporting: 30/30 (100%)" in shown and b"exported 30 events" in shown
    assert len(out.read_text(encoding="utf-8").splitlines()) == 30


@pytest.mark.parametrize("filters", [{}, {"actor": "user_2"}, {"since": "2026-01-01T12:10Z"}])
def test_csv_formatted_by_worker_processes_is_the_same_file(
    tmp_path: Path, filters: dict[str, str]
) -> None:
    from audit_instrument.viewer.export import parallel_csv_chunks

    db = tmp_path / "audit.db"
    fill(db, 50)
    with AuditStore(db, readonly=True) as store:
        single = b"".join(csv_chunks(store.records(**filters)))
    counts: list[int] = []
    shared = b"".join(parallel_csv_chunks(str(db), filters, workers=2, counted=counts.append,
                                          segment=7))
    assert shared == single
    assert counts == sorted(counts) and counts[-1] == len(single.splitlines()) - 1
