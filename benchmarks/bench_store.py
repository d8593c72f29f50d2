"""Write throughput of the local audit store beside a naive commit-per-event writer.

Run:  python benchmarks/bench_store.py [--events 5000] [--threads 8] [--rounds 3]

Every variant writes the same events to a fresh SQLite file (WAL) in a temp
directory; variants are interleaved over several rounds and the median
events/s is reported with its ratio to the naive writer at the same
``synchronous`` level, measured in the same run.

- naive: one thread, ``BEGIN; INSERT; COMMIT`` per event into the store's own
  table and indexes (no hash chain): the obvious implementation.
- AuditStore.send: the hash chain (read head, insert, move head) in one
  transaction; with several threads, concurrent sends share a transaction
  (group commit).

``synchronous=FULL`` (an fsync per commit, survives power loss) is where
group commit pays off; it runs on a fifth of the events.
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
from audit_instrument.event import format_timestamp
from audit_instrument.store import AuditStore, canonical_json

Variant = Callable[[Path, list[AuditEvent]], None]


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


def _naive(synchronous: str) -> Variant:
    def run(path: Path, events: list[AuditEvent]) -> None:
        AuditStore(path).close()  # the same schema and indexes
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        for seq, event in enumerate(events, 1):
            conn.execute("BEGIN")
            conn.execute(
                'INSERT INTO events (seq, occurred_at, action, actor_id, target_id, "group", '
                "idempotency_key, record, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, '')",
                (seq, format_timestamp(event.occurred_at), event.action, event.actor_id,
                 event.target_id, event.group, event.idempotency_key, canonical_json(event)),
            )
            conn.execute("COMMIT")
        conn.close()

    return run


def _store(synchronous: str, threads: int) -> Variant:
    def run(path: Path, events: list[AuditEvent]) -> None:
        store = AuditStore(path, synchronous=synchronous)  # type: ignore[arg-type]
        start = threading.Barrier(threads)

        def send(chunk: list[AuditEvent]) -> None:
            start.wait()
            for event in chunk:
                store.send(event)

        workers = [
            threading.Thread(target=send, args=(events[i::threads],)) for i in range(threads)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        store.close()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Audit store write throughput.")
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    n = args.threads
    variants: dict[str, tuple[str, Variant, int]] = {
        "NORMAL  naive, 1 thread": ("NORMAL", _naive("NORMAL"), args.events),
        "NORMAL  AuditStore.send, 1 thread": ("NORMAL", _store("NORMAL", 1), args.events),
        f"NORMAL  AuditStore.send, {n} threads": ("NORMAL", _store("NORMAL", n), args.events),
        "FULL    naive, 1 thread": ("FULL", _naive("FULL"), args.events // 5),
        "FULL    AuditStore.send, 1 thread": ("FULL", _store("FULL", 1), args.events // 5),
        f"FULL    AuditStore.send, {n} threads": ("FULL", _store("FULL", n), args.events // 5),
    }
    rates: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for i, (name, (_, run, count)) in enumerate(variants.items()):
                events = _events(count)
                path = Path(tmp) / f"{round_}-{i}.db"
                began = time.perf_counter()
                run(path, events)
                rates[name].append(count / (time.perf_counter() - began))
                with AuditStore(path, readonly=True) as check:
                    assert check.count() == count
    base = {
        level: statistics.median(rates[f"{level:<7} naive, 1 thread"])
        for level in ("NORMAL", "FULL")
    }
    print(
        f"median of {args.rounds} rounds, {args.events} events per NORMAL run, "
        f"{args.events // 5} per FULL run (SQLite {sqlite3.sqlite_version})"
    )
    print(f"{'synchronous / variant':<38} {'events/s':>10} {'x naive':>9}")
    for name, (level, _, _) in variants.items():
        rate = statistics.median(rates[name])
        print(f"{name:<38} {rate:>10,.0f} {rate / base[level]:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
