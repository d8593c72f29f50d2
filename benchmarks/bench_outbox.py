"""Outbox writes from 32 threads, both durability modes, beside a durable-queue library and a
one-thread naive writer; then a backlog built while the server is down.

Run:  python benchmarks/bench_outbox.py [--threads 32] [--events 40000] [--down-events 100000]

1. Events/s written by ``--threads`` threads each calling ``Outbox.add`` per
   event (WAL, ``synchronous=FULL``), timed until the last one is committed:

   * ``durability="batch"`` — ``add`` returns at once, committed within
     ``max_delay`` (10 ms). Target >= 50,000 events/s.
   * ``durability="commit"`` — ``add`` returns once committed (group commit).
     Target >= 5x persist-queue.
   * ``persist-queue``'s ``SQLiteAckQueue`` (a durable-queue library: WAL,
     SQLite's default ``synchronous=FULL``, one commit per ``put``) from the
     same number of threads: the peer.
   * ``WorkOS(outbox=..., durability=...).create_event`` in both modes: the
     same, with the delivery engine in front (the server down, so events
     stay in the outbox);
   * a naive writer: ONE thread committing each event in its own
     transaction, same schema and settings — the honest baseline (many
     threads fighting over the file's write lock only make it slower).

   Rounds alternate the order; medians and per-round ratios are printed,
   with the disk's fdatasync latency (commit-mode figures depend on it).
2. ``--down-events`` events emitted through ``WorkOS(outbox=...)`` while the
   server is down (nothing listens on its port), then the server (its own
   process) starts: peak RSS while the backlog builds, time to drain it all
   (unpaced: ``requests_per_second=None``), and a check that the server
   accepted each event once.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from audit_instrument.delivery import Outbox, RetryPolicy
from audit_instrument.event import ActionType, AuditEvent
from audit_instrument.senders.workos import WorkOS

ROOT = Path(__file__).resolve().parent.parent
SERVER = ROOT / "tests" / "support" / "workos_server.py"
SYNC: Literal["FULL", "NORMAL"] = "FULL"


def _event(n: int) -> AuditEvent:
    return AuditEvent(group="org_1", action="tweet.update", action_type=ActionType.UPDATE,
                      actor_name="user@email.com", actor_id="user_1",
                      target_name="user@email.com", target_id=f"tweet_{n}",
                      metadata={"body_was": "What time is the event", "body": "What time?"})


def _run_threads(threads: int, events: list[AuditEvent],
                 write: Callable[[list[AuditEvent]], None],
                 finish: Callable[[], None] = lambda: None) -> float:
    """Events/s: ``threads`` threads each ``write`` a share, then ``finish`` (commit the rest)."""
    chunks = [events[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=write, args=(chunk,)) for chunk in chunks]
    # The prepared events (and every earlier round's objects) are moved out of the
    # collector's sight, as for every writer alike: a full collection walking them
    # would be timed as part of whichever writer it happened to interrupt.
    gc.collect()
    gc.freeze()
    try:
        start = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        finish()
        return len(events) / (time.perf_counter() - start)
    finally:
        gc.unfreeze()


def bench_outbox(directory: Path, threads: int, count: int,
                 durability: Literal["commit", "batch"]) -> float:
    box = Outbox(directory / f"{durability}.db", synchronous=SYNC, durability=durability)
    events = [_event(n) for n in range(count)]

    def write(chunk: list[AuditEvent]) -> None:
        for item in chunk:
            box.add(item)

    rate = _run_threads(threads, events, write, finish=lambda: box.sync())
    assert box.status().pending == count
    box.close()
    return rate


def bench_create_event(directory: Path, threads: int, count: int,
                       durability: Literal["commit", "batch"]) -> float:
    """``WorkOS.create_event`` with an outbox (the engine included), the server down."""
    with socket.socket() as probe:  # nothing listens: events stay in the outbox
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    box = Outbox(directory / f"we-{durability}.db", synchronous=SYNC, durability=durability)
    workos = WorkOS("sk_test", base_url=url, outbox=box, atexit_timeout=0,
                    retry=RetryPolicy(initial_backoff=1.0, max_backoff=30.0, deadline=3600.0))
    events = [_event(n) for n in range(count)]

    def write(chunk: list[AuditEvent]) -> None:
        for item in chunk:
            workos.create_event(item)

    rate = _run_threads(threads, events, write, finish=lambda: box.sync())
    assert box.status().pending == count
    workos.shutdown(0)
    return rate


def bench_persist_queue(directory: Path, threads: int, count: int) -> float:
    from persistqueue import SQLiteAckQueue

    queue = SQLiteAckQueue(str(directory / "pq"), multithreading=True, auto_commit=True)
    events = [_event(n) for n in range(count)]

    def write(chunk: list[AuditEvent]) -> None:
        for item in chunk:
            queue.put(item.to_json())

    rate = _run_threads(threads, events, write)
    assert queue.size == count
    queue.close()
    return rate


def bench_naive(directory: Path, count: int) -> float:
    """ONE thread, one transaction per event, on the outbox's schema and settings."""
    path = directory / "naive.db"
    Outbox(path, synchronous=SYNC).close()
    events = [_event(n) for n in range(count)]
    conn = sqlite3.connect(path, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA synchronous={SYNC}")

    def write(chunk: list[AuditEvent]) -> None:
        for item in chunk:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO outbox (key, record, created_at) VALUES (?, ?, ?)",
                         (item.idempotency_key, item.to_json(), time.time()))
            conn.execute("COMMIT")

    rate = _run_threads(1, events, write)
    assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == count
    conn.close()
    return rate


def fsync_latency(directory: Path, count: int = 50) -> float:
    """Median seconds of one 4 KiB overwrite + fdatasync in ``directory`` (the disk's pace)."""
    path = directory / "fsync.probe"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        times = []
        for n in range(count):
            os.pwrite(fd, b"x" * 4096, (n % 8) * 4096)
            start = time.perf_counter()
            os.fdatasync(fd)
            times.append(time.perf_counter() - start)
    finally:
        os.close(fd)
        path.unlink()
    return statistics.median(times)


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def bench_server_down(directory: Path, count: int, threads: int) -> dict[str, float]:
    with socket.socket() as probe:  # a port nobody listens on: the server is down
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    queue_size = 1000
    # Unpaced: this measures the backlog, not WorkOS's rate limit (at the default
    # 95 requests/s, 100,000 events take 18 minutes to drain).
    workos = WorkOS("sk_test", base_url=url, outbox=directory / "down.db", queue_size=queue_size,
                    retry=RetryPolicy(initial_backoff=0.5, max_backoff=3.0, deadline=3600.0),
                    atexit_timeout=0, requests_per_second=None)
    rss_before = _rss_mb()
    peak = rss_before
    batch = 10_000

    def emit(chunk: range) -> None:
        for n in chunk:
            workos.create_event(_event(n))

    start = time.perf_counter()
    for first in range(0, count, batch):
        numbers = range(first, min(count, first + batch))
        workers = [threading.Thread(target=emit, args=(numbers[i::threads],))
                   for i in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        peak = max(peak, _rss_mb())
    emit_rate = count / (time.perf_counter() - start)
    server = subprocess.Popen([sys.executable, str(SERVER), "--port", str(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        server.stdout.readline()
        started = time.perf_counter()
        while workos.flush(5.0):
            peak = max(peak, _rss_mb())
        drain = time.perf_counter() - started
        peak = max(peak, _rss_mb())
        with urllib.request.urlopen(url + "/_stats", timeout=30) as answer:
            stats = json.loads(answer.read())
    finally:
        workos.shutdown(5)
        assert server.stdin is not None
        server.stdin.close()
        server.wait(30)
    assert stats["accepted"] == count, stats
    return {"emit_rate": emit_rate, "rss_before": rss_before, "rss_peak": peak,
            "drain_s": drain, "drain_rate": count / drain, "queue_size": queue_size,
            "duplicates": stats["duplicates"],
            "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def _clean(directory: Path) -> None:
    for path in directory.iterdir():
        if path.is_dir():
            for inner in path.iterdir():
                inner.unlink()
            path.rmdir()
        else:
            path.unlink()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--events", type=int, default=40_000, help="events per outbox run")
    parser.add_argument("--peer-events", type=int, default=4_000,
                        help="events per persist-queue and naive run (they are slower)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--down-events", type=int, default=100_000,
                        help="events emitted while the server is down (0: skip)")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL",
                        help="SQLite durability for our writers: FULL survives power loss, "
                             "NORMAL a process crash")
    args = parser.parse_args(argv)
    global SYNC
    SYNC = "NORMAL" if args.synchronous == "NORMAL" else "FULL"
    names = ("batch", "commit", "create_event, batch", "create_event, commit", "persist-queue",
             "naive, 1 thread")
    rates: dict[str, list[float]] = {name: [] for name in names}
    fsyncs: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        directory = Path(tmp)
        runs: dict[str, Callable[[], float]] = {
            "batch": lambda: bench_outbox(directory, args.threads, args.events, "batch"),
            "commit": lambda: bench_outbox(directory, args.threads, args.events, "commit"),
            "create_event, batch": lambda: bench_create_event(directory, args.threads,
                                                              args.events, "batch"),
            "create_event, commit": lambda: bench_create_event(directory, args.threads,
                                                               args.events, "commit"),
            "persist-queue": lambda: bench_persist_queue(directory, args.threads,
                                                         args.peer_events),
            "naive, 1 thread": lambda: bench_naive(directory, args.peer_events),
        }
        for round_ in range(args.rounds):
            fsyncs.append(fsync_latency(directory))
            order = names if round_ % 2 == 0 else tuple(reversed(names))
            for name in order:
                _clean(directory)
                rates[name].append(runs[name]())
            print(f"round {round_ + 1}: " + ", ".join(
                f"{name} {rates[name][-1]:,.0f}/s" for name in names), file=sys.stderr)
        down = bench_server_down(directory, args.down_events, args.threads) \
            if args.down_events else None

    def ratio(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(rates[a], rates[b], strict=True))

    print(f"\nOutbox writes, {args.threads} threads (the naive writer: 1), "
          f"synchronous={SYNC}, WAL (medians of {args.rounds} rounds; fdatasync median "
          f"{statistics.median(fsyncs) * 1e6:.0f} µs)\n")
    print("| writer | events/s committed | vs naive 1-thread | vs persist-queue | target |")
    print("| --- | ---:| ---:| ---:| --- |")
    targets = {"batch": ">= 50,000/s", "commit": ">= 5x persist-queue",
               "create_event, batch": "", "create_event, commit": "",
               "persist-queue": "peer", "naive, 1 thread": "baseline"}
    labels = {"batch": 'Outbox.add, durability="batch"',
              "commit": 'Outbox.add, durability="commit"',
              "create_event, batch": 'WorkOS.create_event, durability="batch"',
              "create_event, commit": 'WorkOS.create_event, durability="commit"',
              "persist-queue": "persist-queue SQLiteAckQueue.put",
              "naive, 1 thread": "naive: 1 thread, 1 commit per event"}
    for name in names:
        print(f"| {labels[name]} | {statistics.median(rates[name]):,.0f} | "
              f"{ratio(name, 'naive, 1 thread'):.1f}x | {ratio(name, 'persist-queue'):.1f}x | "
              f"{targets[name]} |")
    if down:
        print(f"\nServer down while {args.down_events:,} events are emitted "
              f"(in-memory queue {down['queue_size']:.0f}; the rest waits on disk)\n")
        print("| measure | value |")
        print("| --- | ---:|")
        print(f"| emit rate while down (ev/s) | {down['emit_rate']:,.0f} |")
        print(f"| RSS before / peak (MB) | {down['rss_before']:.0f} / {down['rss_peak']:.0f} |")
        print(f"| time to drain after the server returns (s) | {down['drain_s']:.1f} |")
        print(f"| drain rate (ev/s) | {down['drain_rate']:,.0f} |")
        print(f"| accepted by the server / duplicates | {args.down_events:,} / "
              f"{down['duplicates']:.0f} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
