"""The JSONL, logging and memory senders."""

from __future__ import annotations

import json
import logging
import os
import stat
import threading
from pathlib import Path

import pytest
from support.events import make_event

from audit_instrument import AuditEvent, audit, audit_actor, configure, emit
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
