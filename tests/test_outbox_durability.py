"""Durability modes, measured by kill -9: what a crash loses in "batch" mode, and in "commit"."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from support.events import make_event
from support.waiting import wait_for

from audit_instrument import AuditConfigError
from audit_instrument.delivery import Outbox
from audit_instrument.senders.workos import WorkOS

MAX_DELAY = 0.01
SLACK = 0.5  # scheduling on a busy 2-core machine: the flusher may run this late

_EMITTER = textwrap.dedent("""
    import sys, time
    from audit_instrument import AuditEvent
    from audit_instrument.delivery import Outbox
    from audit_instrument.senders.workos import WorkOS
    url, path, durability, max_delay = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    box = Outbox(path, synchronous="NORMAL", durability=durability, max_delay=max_delay)
    workos = WorkOS("sk_test", base_url=url, outbox=box, atexit_timeout=0)
    out = sys.stdout
    n = 0
    while True:
        workos.create_event(AuditEvent(
            group="org_1", action="user.login", action_type="C", actor_name="a@b.c",
            actor_id="user_1", target_name="t", target_id=str(n)))
        out.write(f"{n} {time.time()}\\n")  # returned at this time
        out.flush()
        n += 1
""")


def _dead_port() -> int:
    with socket.socket() as probe:  # nothing listens there: delivery keeps failing, rows stay
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _on_disk(path: Path) -> set[int]:
    with sqlite3.connect(path) as conn:
        return {int(target) for (target,) in conn.execute(
            "SELECT json_extract(record, '$.target_id') FROM outbox")}


@pytest.mark.parametrize("durability", ["batch", "commit"])
def test_kill_9_loses_at_most_the_last_max_delay_in_batch_mode_and_nothing_in_commit_mode(
    tmp_path: Path, durability: str
) -> None:
    path = tmp_path / "outbox.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _EMITTER, f"http://127.0.0.1:{_dead_port()}", str(path),
         durability, str(MAX_DELAY)], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None
    returned: dict[int, float] = {}
    while len(returned) < 2000:
        line = child.stdout.readline()
        assert line, "the emitter stopped"
        n, at = line.split()
        returned[int(n)] = float(at)
    os.kill(child.pid, signal.SIGKILL)
    killed_at = time.time()
    for line in child.stdout:  # written before the kill
        n, at = line.split()
        returned[int(n)] = float(at)
    child.wait(10)
    child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    on_disk = _on_disk(path)
    lost = set(returned) - on_disk
    assert on_disk <= set(returned) | {max(returned) + 1}  # (one may be committed, not printed)
    if durability == "commit":
        assert lost == set()  # on disk before create_event returned
    else:
        # Only events returned within the last max_delay (plus scheduling slack) are lost.
        assert all(returned[n] >= killed_at - MAX_DELAY - SLACK for n in lost), sorted(lost)[:5]
        window = [n for n, at in returned.items() if at >= killed_at - MAX_DELAY - SLACK]
        assert len(lost) <= len(window)


def test_batch_mode_returns_before_the_commit_and_commits_within_max_delay(
    tmp_path: Path
) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, durability="batch", max_delay=0.5) as box:
        box.add_many([make_event(n) for n in range(5)])
        assert box.status().pending == 0  # not yet: the caller did not wait
        wait_for(lambda: box.status().pending == 5, timeout=5)


def test_durability_is_checked_and_must_go_with_an_outbox(tmp_path: Path) -> None:
    with pytest.raises(AuditConfigError, match="durability"):
        Outbox(tmp_path / "a.db", durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(AuditConfigError, match="durability"):
        WorkOS("sk_test", base_url="http://127.0.0.1:9", durability="batch")
    workos = WorkOS("sk_test", base_url="http://127.0.0.1:9", outbox=tmp_path / "b.db",
                    durability="batch")
    try:
        assert workos.outbox is not None and workos.outbox.durability == "batch"
    finally:
        workos.shutdown(0)
