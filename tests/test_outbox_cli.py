"""``python -m audit_instrument outbox`` and ``send`` through the real entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.events import make_event
from support.workos import API_KEY
from support.workos_server import WorkOSServer

from audit_instrument.delivery import Outbox
from audit_instrument.senders.workos import WorkOS

MakeWorkOS = Callable[..., WorkOS]


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "audit_instrument", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def _clean_env(**extra: str) -> dict[str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "WORKOS_API_KEY"}
    env.update(extra)
    return env


@pytest.fixture
def outbox_with_dead_letter(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path
) -> Path:
    """An outbox holding one delivered event, one dead letter and two pending events."""
    path = tmp_path / "outbox.db"
    server.reject_actions["tweet.delete"] = (422, "Target tweet_9 does not exist")
    workos = make_workos(outbox=path)
    workos.create_event(make_event(1)).result(timeout=5)
    rejected = make_event(9, action="tweet.delete", action_type="D", target_id="tweet_9")
    workos.create_event(rejected).exception(timeout=5)
    server.hang_all = True
    workos.create_event(make_event(2))
    workos.create_event(make_event(3))
    workos.shutdown(0.2)
    server.hang_all = False
    return path


def test_status_counts_pending_dead_and_delivered(outbox_with_dead_letter: Path) -> None:
    done = cli("outbox", str(outbox_with_dead_letter), "status")
    assert done.returncode == 0, done.stderr
    assert "2 pending" in done.stdout and "1 dead" in done.stdout
    assert "1 delivered" in done.stdout
    done = cli("outbox", str(outbox_with_dead_letter), "status", "--json")
    data = json.loads(done.stdout)
    assert (data["pending"], data["dead"], data["delivered"]) == (2, 1, 1)
    assert data["oldest_pending_age"] >= 0


def test_dead_lists_the_servers_message(outbox_with_dead_letter: Path) -> None:
    done = cli("outbox", str(outbox_with_dead_letter), "dead")
    assert done.returncode == 0, done.stderr
    assert "tweet.delete" in done.stdout and "HTTP 422" in done.stdout
    assert "Target tweet_9 does not exist" in done.stdout
    [line] = cli("outbox", str(outbox_with_dead_letter), "dead", "--json").stdout.splitlines()
    letter = json.loads(line)
    assert letter["status"] == 422 and letter["event"]["target_id"] == "tweet_9"


def test_retry_moves_dead_letters_back_and_send_delivers_them(
    server: WorkOSServer, outbox_with_dead_letter: Path
) -> None:
    server.reject_actions.clear()  # the fix
    done = cli("outbox", str(outbox_with_dead_letter), "retry", "--send",
               "--base-url", server.url, env=_clean_env(WORKOS_API_KEY=API_KEY))
    assert done.returncode == 0, done.stderr
    assert "1 dead letter(s) moved back to pending" in done.stdout
    assert "0 pending, 0 dead" in done.stdout
    assert server.accepted_count == 4
    with Outbox(outbox_with_dead_letter) as box:
        assert box.status().delivered == 4


def test_retry_without_send_only_requeues(outbox_with_dead_letter: Path) -> None:
    done = cli("outbox", str(outbox_with_dead_letter), "retry")
    assert done.returncode == 0
    with Outbox(outbox_with_dead_letter) as box:
        assert (box.status().pending, box.status().dead) == (3, 0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("outbox", "{missing}", "status"), "no outbox at"),
        (("outbox", "{corrupt}", "status"), "not a database"),
        (("outbox", "{corrupt}", "explode"), "expected [DB] status|dead|retry"),
        (("outbox", "status", "--limit", "0"), "--limit"),
    ],
    ids=["missing-file", "corrupt-file", "bad-action", "bad-limit"],
)
def test_user_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"garbage" * 100)
    filled = [a.format(missing=tmp_path / "nope.db", corrupt=corrupt) for a in args]
    done = cli(*filled)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def test_send_reports_acceptance(server: WorkOSServer) -> None:
    done = cli("send", "--key", API_KEY, "--base-url", server.url, env=_clean_env())
    assert done.returncode == 0, done.stderr
    assert "accepted by" in done.stdout
    [request] = server.requests
    assert request.json()["action"] == "audit_instrument.test"
    assert request.idempotency_key in done.stdout


def test_send_with_a_wrong_key_fails_with_the_servers_answer(server: WorkOSServer) -> None:
    done = cli("send", "--key", "sk_wrong", "--base-url", server.url, env=_clean_env())
    assert done.returncode == 1
    assert "401" in done.stderr and "Unauthorized" in done.stderr
    assert "sk_wrong" not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1


def test_send_without_a_key_says_where_keys_come_from() -> None:
    done = cli("send", "--base-url", "http://127.0.0.1:9", env=_clean_env())
    assert done.returncode == 2
    assert "WORKOS_API_KEY" in done.stderr and "Traceback" not in done.stderr


def test_send_refuses_plain_http_to_a_remote_host() -> None:
    done = cli("send", "--key", API_KEY, "--base-url", "http://example.com", env=_clean_env())
    assert done.returncode == 2 and "https" in done.stderr
