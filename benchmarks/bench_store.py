"""Write throughput of the local audit store, beside a naive commit-per-event baseline.

Run:  python benchmarks/bench_store.py [--events 20000] [--threads 4]

All variants run in the same process, each on a fresh SQLite file in a temp
directory, interleaved over several rounds; the median events/s is reported
with ratios to the baseline, so machine noise mostly cancels out.

- baseline: one INSERT + COMMIT per event on a plain WAL table (no hash chain,
  no indexes), from one thread: the cheapest "obvious" store.
- store, 1 thread: ``AuditStore.send`` — hash chain, six indexes, one
  transaction per event.
- store, N threads: the same, N threads sending at once, so group commit
  batches their events into shared transactions.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from audit_instrument import AuditEvent
from audit_instrument.store import AuditStore


def _events(n: int) -> list[AuditEvent]:
    return [
        AuditEvent(
            group="organization_1", action="tweet.update", action_type="U",
            actor_name="user@email.com", actor_id=f"user_{i % 50}",
            target_name="user@email.com", target_id=f"tweet_{i}", location="203.0.113.5",
            metadata={"body_was": "What time is the event", "body": "What time is the event?"},
        )
        for i in range(n)
    ]


def _baseline(path: Path, events: list[AuditEvent], threads: int) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, record TEXT NOT NULL)")
    import json

    for event in events:
        conn.execute("BEGIN")
        conn.execute("INSERT INTO events (record) VALUES (?)", (json.dumps(event.to_record()),))
        conn.execute("COMMIT")
    conn.close()


def _store(path: Path, events: list[AuditEvent], threads: int) -> None:
    store = AuditStore(path)
    chunks = [events[i::threads] for i in range(threads)]
    start = threading.Barrier(threads)

    def run(chunk: list[AuditEvent]) -> None:
        start.wait()
        for event in chunk:
            store.send(event)

    workers = [threading.Thread(target=run, args=(chunk,)) for chunk in chunks]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert store.count() == len(events) and store.verify().ok
    store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    variants: dict[str, tuple[Callable[[Path, list[AuditEvent], int], None], int]] = {
        "baseline: commit per event, 1 thread": (_baseline, 1),
        "AuditStore.send, 1 thread": (_store, 1),
        f"AuditStore.send, {args.threads} threads": (_store, args.threads),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, (fn, threads) in variants.items():
                events = _events(args.events)
                path = Path(tmp) / f"{round_}-{len(list(Path(tmp).iterdir()))}.db"
                began = time.perf_counter()
                fn(path, events, threads)
                rates[name].append(args.events / (time.perf_counter() - began))
    base = statistics.median(rates["baseline: commit per event, 1 thread"])
    print(
        f"{args.events} events per run, median of {args.rounds} rounds "
        f"(SQLite {sqlite3.sqlite_version})"
    )
    print(f"{'variant':<40} {'events/s':>10} {'x baseline':>11}")
    for name, values in rates.items():
        rate = statistics.median(values)
        print(f"{name:<40} {rate:>10,.0f} {rate / base:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
