"""The README's one-screen example runs as written and records what its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.docs import python_blocks

from audit_instrument import AuditStore, configure
from audit_instrument.senders import read_jsonl


def test_the_one_screen_example_records_two_events(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    [(_, code)] = python_blocks("README.md", section="In one screen")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    configure()
    with AuditStore(tmp_path / "audit.db", readonly=True) as store:
        update, login = sorted(store.query().events, key=lambda e: e.action)
        assert store.verify().ok
    assert (update.action, update.actor_id, update.target_id, dict(update.metadata)) == (
        "tweet.update", "user_1", "tweet_5",
        {"body_was": "What time is the event", "body": "What time is the event?"})
    assert (login.action, login.metadata["method"], login.location) == (
        "user.login", "password", "1.1.1.1")
    assert len(read_jsonl(tmp_path / "audit.jsonl")) == 2
