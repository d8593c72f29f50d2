"""The JSONL, logging and memory senders."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from support.events import make_event

from audit_instrument import (
    AuditConfigError,
    AuditEvent,
    AuditValidationError,
    audit,
    audit_actor,
    configure,
    emit,
)
from audit_instrument.senders import JsonlSender, LoggingSender, MemorySender, read_jsonl


def test_jsonl_file_is_private_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sent = [make_event(1), make_event(2)]
    with JsonlSender(path) as sender:
        configure(sender)
        for one in sent:
            emit(one)
        assert read_jsonl(path) == sent  # flushed per event, readable while open
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with JsonlSender(path) as sender:  # appends
        sender.send(make_event(3))
    assert len(read_jsonl(path)) == 3


def test_jsonl_concurrent_writers_yield_one_valid_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sender = JsonlSender(path)
    configure(sender)

    @audit(
        "tweet.read",
        "R",
        target=lambda n: (f"tweet_{n}", "t"),
        metadata=lambda n: {"padding": "x" * 400, "n": n},
    )
    def read(n: int) -> None: ...

    def worker(k: int) -> None:
        with audit_actor({"id": f"user_{k}"}, group="organization_1"):
            for i in range(250):
                read(k * 1000 + i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    sender.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2000
    keys = {json.loads(line)["idempotency_key"] for line in lines}
    assert len(keys) == 2000
    assert sorted(e.metadata["n"] for e in read_jsonl(path)) == sorted(
        k * 1000 + i for k in range(8) for i in range(250)
    )


def test_logging_sender_writes_one_json_line(caplog: pytest.LogCaptureFixture) -> None:
    configure(LoggingSender("myapp.audit"))
    sent = make_event(7)
    with caplog.at_level(logging.INFO, logger="myapp.audit"):
        emit(sent)
    (record,) = [r for r in caplog.records if r.name == "myapp.audit"]
    assert AuditEvent.from_dict(json.loads(record.getMessage())) == sent
    assert record.audit_event is sent  # type: ignore[attr-defined]


def test_logging_sender_is_silent_when_disabled(caplog: pytest.LogCaptureFixture) -> None:
    configure(LoggingSender("quiet.audit", level=logging.DEBUG))
    with caplog.at_level(logging.INFO, logger="quiet.audit"):
        emit(make_event(action="user.login", action_type="C"))
    assert not [r for r in caplog.records if r.name == "quiet.audit"]


def test_memory_sender_keeps_order() -> None:
    memory = MemorySender()
    configure(memory)
    sent = [make_event(n) for n in range(5)]
    for one in sent:
        emit(one)
    assert list(memory) == sent and memory[0] is sent[0] and len(memory) == 5
    memory.clear()
    assert len(memory) == 0


def test_jsonl_path_that_is_a_directory_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(AuditConfigError, match="is a directory"):
        JsonlSender(tmp_path)
    with pytest.raises(AuditConfigError, match="cannot open"):
        JsonlSender(tmp_path / "missing" / "audit.jsonl")


_FULL_DISK = """
import resource, signal, sys
from audit_instrument import DeliveryError
from audit_instrument.senders import JsonlSender
sys.path.insert(0, sys.argv[2])
from support.events import make_event
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)         # a full disk: writes fail, no signal
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
sender = JsonlSender(sys.argv[1])
for n in range(200):
    try:
        sender.send(make_event(n, metadata={"n": n, "body": "x" * (n % 50)}))
    except DeliveryError:
        print("refused", n)
    else:
        print("written", n)
"""


def test_jsonl_full_disk_leaves_no_torn_line(tmp_path: Path) -> None:
    """A write cut short by a full disk (here RLIMIT_FSIZE) is undone: only whole lines stay."""
    path = tmp_path / "audit.jsonl"
    tests = str(Path(__file__).parent)
    done = subprocess.run([sys.executable, "-c", _FULL_DISK, str(path), tests],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    outcome = dict(line.split()[::-1] for line in done.stdout.splitlines())
    written = {n for n, what in outcome.items() if what == "written"}
    assert written and len(written) < 200  # the limit was reached
    text = path.read_bytes()
    assert text.endswith(b"\n")
    events = read_jsonl(path, strict=True)
    assert {str(e.metadata["n"]) for e in events} == written


def test_read_jsonl_skips_and_reports_a_torn_line_anywhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    lines = [make_event(n).to_json() for n in range(5)]
    lines[2] = lines[2][:40]  # torn in the middle of the file
    path.write_text("\n".join(lines) + "\n" + lines[4][:10])  # and at its end
    events = read_jsonl(path)
    assert [e.metadata["n"] for e in events] == [0, 1, 3, 4]
    assert "skipped 2 line(s)" in caplog.text and "3, 6" in caplog.text
    with pytest.raises(AuditValidationError, match="line 3"):
        read_jsonl(path, strict=True)
