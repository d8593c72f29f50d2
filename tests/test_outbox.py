"""The durable SQLite outbox: on disk before return, restart and crash safety, dead letters."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.events import make_event
from support.waiting import wait_child, wait_for
from support.workos import API_KEY, FAST, ServerProcess
from support.workos_server import WorkOSServer

from audit_instrument import AuditConfigError, AuditValidationError, DeliveryError
from audit_instrument.delivery import Outbox
from audit_instrument.senders.workos import WorkOS

MakeWorkOS = Callable[..., WorkOS]


def _rows(path: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT key, state FROM outbox ORDER BY id").fetchall()


def test_event_is_on_disk_before_create_event_returns(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path
) -> None:
    server.hang_all = True
    path = tmp_path / "outbox.db"
    workos = make_workos(outbox=path, timeout=30)
    handle = workos.create_event(make_event(1))
    assert _rows(path) == [(handle.event.idempotency_key, 0)]  # another connection sees it
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    workos.shutdown(0.1)
    status = Outbox(path).status()
    assert status.pending == 1 and status.oldest_pending_age is not None


def test_delivered_events_leave_the_outbox(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    workos = make_workos(outbox=path)
    handles = [workos.create_event(make_event(n)) for n in range(20)]
    assert workos.flush(10) == 0
    assert all(h.delivered for h in handles)
    assert _rows(path) == []
    workos.shutdown(1)
    with Outbox(path) as box:
        assert (box.status().pending, box.status().delivered) == (0, 20)


def test_restart_sends_pending_events_with_their_original_keys(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    server.hang_all = True
    first = make_workos(outbox=path, timeout=30)
    keys = {first.create_event(make_event(n)).event.idempotency_key for n in range(5)}
    assert first.shutdown(0.1) == 5  # left on disk, not lost
    server.hang_all = False
    second = make_workos(outbox=path)
    assert second.flush(10) == 0
    assert set(server.accepted) == keys
    assert Outbox(path).status().pending == 0


def test_rejected_event_becomes_a_dead_letter_and_can_be_resent(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    server.reject_actions["tweet.update"] = (422, "Invalid target type")
    workos = make_workos(outbox=path)
    handle = workos.create_event(make_event(1))
    error = handle.exception(timeout=5)
    assert isinstance(error, DeliveryError) and error.status == 422
    workos.flush(5)
    box = Outbox(path)
    assert box.status().dead == 1 and box.status().pending == 0
    [letter] = box.dead_letters(10)
    assert letter.event == handle.event
    assert letter.status == 422 and "Invalid target type" in letter.message
    assert time.time() - letter.failed_at.timestamp() < 60
    server.reject_actions.clear()  # "after a fix"
    assert box.retry_dead() == 1
    assert box.status().dead == 0 and box.status().pending == 1
    box.close()
    assert workos.flush(10) == 0  # the running sender picks it up again
    assert handle.event.idempotency_key in server.accepted


def test_many_threads_commit_every_event(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", synchronous="NORMAL")
    events = [make_event(n) for n in range(800)]

    def write(chunk: list[object]) -> None:
        for item in chunk:
            box.add(item)  # type: ignore[arg-type]

    threads = [threading.Thread(target=write, args=(events[i::8],)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert box.status().pending == 800
    assert {e.idempotency_key for e in box.claim(1000)} == {e.idempotency_key for e in events}
    box.close()


def test_a_claimed_event_is_not_claimed_again_while_its_owner_lives(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as writer:
        for n in range(10):
            writer.add(make_event(n))
    first, second = Outbox(path), Outbox(path)
    assert len(first.claim(6)) == 6
    assert len(second.claim(100)) == 4
    assert second.claim(100) == [] and second.claimable() == 0
    first.close()
    second.close()


def test_corrupt_file_is_a_clear_config_error(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(AuditConfigError, match="not a database"):
        WorkOS(API_KEY, base_url="http://127.0.0.1:9", outbox=path)
    assert path.read_bytes().startswith(b"this is not")  # left untouched


@pytest.mark.parametrize("where", ["missing-dir/outbox.db", "."], ids=["no-parent", "a-directory"])
def test_unusable_path_is_a_clear_config_error(tmp_path: Path, where: str) -> None:
    with pytest.raises(AuditConfigError, match="outbox"):
        Outbox(tmp_path / where)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes read-only files anyway")
def test_read_only_file_is_a_clear_config_error(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path).close()
    path.chmod(0o400)
    with pytest.raises(AuditConfigError, match=r"permissions|readonly"):
        Outbox(path)


# -- processes ----------------------------------------------------------------------------------
_CHILD = textwrap.dedent("""
    import sys
    from audit_instrument import AuditEvent
    from audit_instrument.delivery import Outbox, RetryPolicy
    from audit_instrument.senders.workos import WorkOS
    url, path, mode, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    # NORMAL survives a process crash (what these tests do) and, without an fsync
    # per event, emits far faster than the server accepts: the kill lands mid-delivery.
    workos = WorkOS("sk_test", base_url=url, outbox=Outbox(path, synchronous="NORMAL"),
                    atexit_timeout=0,
                    retry=RetryPolicy(initial_backoff=0.01, max_backoff=0.05))
    if mode == "emit":
        for n in range(count):
            workos.create_event(AuditEvent(
                group="org_1", action="user.login", action_type="C", actor_name="a@b.c",
                actor_id="user_1", target_name="t", target_id=f"{sys.argv[5]}-{n}"))
        print("COMMITTED", count, flush=True)
    left = workos.flush(120)
    print("LEFT", left, "DELIVERED", workos.engine.delivered, flush=True)
    workos.shutdown(5)
""")


def _child(url: str, path: Path, mode: str, count: int = 0, tag: str = "x"
           ) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", _CHILD, url, str(path), mode, str(count), tag],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_sigkill_mid_delivery_then_a_new_process_delivers_each_event_once(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    remote = server_process("--latency", "0.005")  # slow enough to kill mid-delivery
    path = tmp_path / "outbox.db"
    crashed = _child(remote.url, path, "emit", 400)
    assert crashed.stdout is not None
    assert crashed.stdout.readline().split() == ["COMMITTED", "400"]
    wait_for(lambda: remote.stats()["accepted"] >= 50, timeout=30)
    crashed.send_signal(signal.SIGKILL)
    crashed.wait(10)
    assert crashed.returncode == -signal.SIGKILL
    crashed.stdout.close()
    assert crashed.stderr is not None
    crashed.stderr.close()
    accepted_at_crash = remote.stats()["accepted"]
    assert accepted_at_crash < 400, "the crash came too late to test anything"
    assert Outbox(path).status().pending >= 400 - accepted_at_crash
    survivor = _child(remote.url, path, "drain")
    out, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err
    assert "LEFT 0" in out
    stats = remote.stats()
    assert stats["accepted"] == 400  # every committed event, each once (server dedupes by key)
    assert Outbox(path).status().pending == 0


@pytest.mark.slow
def test_two_processes_share_one_outbox_and_deliver_each_event_once(
    server_process: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    remote = server_process("--latency", "0.002")
    path = tmp_path / "outbox.db"
    with Outbox(path, synchronous="NORMAL") as box:  # a backlog both will drain
        for n in range(300):
            box.add(make_event(n))
    children = [_child(remote.url, path, "emit", 200, tag=f"p{i}") for i in range(2)]
    outputs = [child.communicate(timeout=120) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert "LEFT 0" in out
    stats = remote.stats()
    assert stats["accepted"] == 700
    assert stats["duplicates"] == 0  # never two processes on the same event
    delivered = [int(out.split()[-1]) for out, _ in outputs]
    assert sum(delivered) == 700
    with Outbox(path) as box:
        assert box.status().pending == 0 and box.status().delivered == 700


def test_outbox_survives_fork_with_its_own_connection(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    workos = make_workos(outbox=path)
    workos.create_event(make_event(0)).result(timeout=5)
    workos.flush(timeout=5)  # fork with the delivery threads idle, as an app would
    child_event = make_event(1)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            workos.create_event(child_event).result(timeout=5)
            code = 0
        finally:
            os._exit(code)
    assert wait_child(pid, timeout=20) == 0
    assert child_event.idempotency_key in server.accepted
    workos.create_event(make_event(2)).result(timeout=5)
    assert FAST.deadline > 0 and server.accepted_count == 3


def test_create_events_commits_the_lot_before_returning(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path
) -> None:
    server.hang_all = True
    path = tmp_path / "outbox.db"
    workos = make_workos(outbox=path, timeout=30, queue_size=3)  # 3 queued, 7 wait on disk
    handles = workos.create_events([make_event(n) for n in range(10)])
    assert [key for key, _ in _rows(path)] == [h.event.idempotency_key for h in handles]
    assert workos.shutdown(0.1) == 10  # left on disk, not lost
    server.hang_all = False
    again = make_workos(outbox=path)
    assert again.flush(10) == 0
    assert sorted(server.accepted) == sorted(h.event.idempotency_key for h in handles)
    assert server.duplicates == 0


def test_create_events_delivers_each_once_and_settles_every_handle(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path
) -> None:
    workos = make_workos(outbox=tmp_path / "outbox.db", queue_size=4)
    handles = workos.create_events([make_event(n) for n in range(25)])
    assert workos.flush(10) == 0
    assert [h.result(5) for h in handles] == [h.event for h in handles]
    assert all(h.delivered for h in handles)
    assert sorted(server.accepted) == sorted(h.event.idempotency_key for h in handles)
    with Outbox(tmp_path / "outbox.db") as box:
        assert box.status().pending == 0


@pytest.mark.parametrize("durable", [True, False])
def test_create_events_with_one_bad_event_queues_none(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path, durable: bool
) -> None:
    path = tmp_path / "outbox.db"
    workos = make_workos(outbox=path if durable else None)
    bad = make_event(1).to_dict() | {"action": "no-category"}
    with pytest.raises(AuditValidationError) as caught:
        workos.create_events([make_event(0), bad, make_event(2)])
    assert caught.value.field == "action"
    assert workos.flush(5) == 0 and server.accepted == {}
    if durable:
        assert _rows(path) == []


def test_create_events_after_shutdown_settles_each_handle_with_an_error(
    server: WorkOSServer, make_workos: MakeWorkOS, tmp_path: Path
) -> None:
    workos = make_workos(outbox=tmp_path / "outbox.db")
    workos.shutdown(1)
    handles = workos.create_events([make_event(0), make_event(1)])
    assert [type(h.exception(1)) for h in handles] == [DeliveryError, DeliveryError]
    assert _rows(tmp_path / "outbox.db") == []
