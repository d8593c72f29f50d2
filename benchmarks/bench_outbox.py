"""Outbox write throughput vs a naive commit-per-event writer; a backlog while the server is down.

Run:  python benchmarks/bench_outbox.py [--threads 32] [--events 40000] [--down-events 1000000]

1. Events/s committed to the outbox (group commit, ``synchronous=FULL``) by
   several threads each calling ``Outbox.add`` per event, beside a naive writer
   that commits each event in its own transaction on the same schema and
   settings, in the same run (rounds alternate which goes first).
   Targets: >= 20 000 events/s and >= 10x the naive writer. Also printed: the
   disk's fdatasync latency during the run (both figures depend on it: with N
   threads each waiting for its own commit, at most N events share one fsync),
   and ``Outbox.add_many`` (bulk producers, 100 events per call) for reference.
2. ``--down-events`` events emitted through ``WorkOS(outbox=...)`` while the
   server is down (nothing listens on its port), then the server (its own
   process) starts: peak RSS while the backlog builds, time to drain it all,
   and a check that the server accepted each event once.
"""

from __future__ import annotations

import argparse
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


def _run_threads(threads: int, events: list[AuditEvent], write: object) -> float:
    chunks = [events[i::threads] for i in range(threads)]
    workers = [threading.Thread(target=write, args=(chunk,)) for chunk in chunks]  # type: ignore[arg-type]
    start = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return len(events) / (time.perf_counter() - start)


def bench_group_commit(directory: Path, threads: int, count: int) -> float:
    box = Outbox(directory / "group.db", synchronous=SYNC)
    events = [_event(n) for n in range(count)]

    def write(chunk: list[AuditEvent]) -> None:
        for item in chunk:
            box.add(item)

    rate = _run_threads(threads, events, write)
    assert box.status().pending == count
    box.close()
    return rate


def bench_add_many(directory: Path, threads: int, count: int, per_call: int = 100) -> float:
    box = Outbox(directory / "many.db", synchronous=SYNC)
    events = [_event(n) for n in range(count)]

    def write(chunk: list[AuditEvent]) -> None:
        for start in range(0, len(chunk), per_call):
            box.add_many(chunk[start:start + per_call])

    rate = _run_threads(threads, events, write)
    assert box.status().pending == count
    box.close()
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


def bench_naive(directory: Path, threads: int, count: int) -> float:
    path = directory / "naive.db"
    Outbox(path, synchronous=SYNC).close()  # the same schema
    events = [_event(n) for n in range(count)]

    def write(chunk: list[AuditEvent]) -> None:
        conn = sqlite3.connect(path, timeout=60, isolation_level=None)
        conn.execute(f"PRAGMA synchronous={SYNC}")
        for item in chunk:
            record = json.dumps(item.to_record(), ensure_ascii=False, separators=(",", ":"))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO outbox (key, record, created_at) VALUES (?, ?, ?)",
                         (item.idempotency_key, record, time.time()))
            conn.execute("COMMIT")
        conn.close()

    return _run_threads(threads, events, write)


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
    workos = WorkOS("sk_test", base_url=url, outbox=directory / "down.db", queue_size=queue_size,
                    retry=RetryPolicy(initial_backoff=0.5, max_backoff=3.0, deadline=3600.0),
                    atexit_timeout=0)
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--events", type=int, default=40_000, help="group-commit events")
    parser.add_argument("--naive-events", type=int, default=4_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--down-events", type=int, default=1_000_000,
                        help="events emitted while the server is down (0: skip)")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL",
                        help="SQLite durability for both writers: FULL survives power loss, "
                             "NORMAL a process crash")
    args = parser.parse_args(argv)
    global SYNC
    SYNC = "NORMAL" if args.synchronous == "NORMAL" else "FULL"
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        directory = Path(tmp)
        group: list[float] = []
        naive: list[float] = []
        many: list[float] = []
        fsyncs: list[float] = []
        for round_ in range(args.rounds):
            for name in ("group.db", "naive.db", "many.db"):
                for suffix in ("", "-wal", "-shm"):
                    Path(directory, name + suffix).unlink(missing_ok=True)
            fsyncs.append(fsync_latency(directory))
            if round_ % 2 == 0:
                group.append(bench_group_commit(directory, args.threads, args.events))
                naive.append(bench_naive(directory, args.threads, args.naive_events))
            else:
                naive.append(bench_naive(directory, args.threads, args.naive_events))
                group.append(bench_group_commit(directory, args.threads, args.events))
            many.append(bench_add_many(directory, args.threads, args.events))
            fsyncs.append(fsync_latency(directory))
            print(f"round {round_ + 1}: group {group[-1]:.0f} ev/s, naive {naive[-1]:.0f} ev/s "
                  f"({group[-1] / naive[-1]:.1f}x), add_many {many[-1]:.0f} ev/s, "
                  f"fdatasync {fsyncs[-2] * 1e6:.0f}/{fsyncs[-1] * 1e6:.0f} us", file=sys.stderr)
        down = bench_server_down(directory, args.down_events, args.threads) \
            if args.down_events else None
    g, n = statistics.median(group), statistics.median(naive)
    ratio = statistics.median(a / b for a, b in zip(group, naive, strict=True))
    sync_us = statistics.median(fsyncs) * 1e6
    print(f"\nOutbox writes, {args.threads} threads, synchronous={SYNC}, WAL "
          f"(medians of {args.rounds}; fdatasync median {sync_us:.0f} us)\n")
    print("| writer | events/s committed | ratio (median of per-round) | target |")
    print("| --- | ---:| ---:| --- |")
    print(f"| group commit (Outbox.add per event) | {g:,.0f} | {ratio:.1f}x "
          "| >= 20 000/s, >= 10x |")
    print(f"| naive commit per event | {n:,.0f} | 1.0x | |")
    m = statistics.median(many)
    print(f"| Outbox.add_many, 100 per call (reference) | {m:,.0f} | {m / n:.1f}x | |")
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
