"""Write throughput of the local audit store beside a naive writer of the same chain.

Run:  python benchmarks/bench_store.py [--rounds 5] [--dir PATH]

The disk of a shared machine is noisy: the cost of an fsync can change
tenfold within seconds, which made whole-run comparisons move several times
over between runs. So the variants are interleaved finely: in each round,
every variant opens a fresh store file (not timed), then the variants take
turns writing the next chunk of their events (``CHUNK`` events a turn, the
order rotating each turn) until each has written the same fixed number. A
variant's time in a round is the sum of its turns, so a slow patch of the
disk falls on every variant alike. The first round is a warm-up and is not
counted. Figures: the median events/s over rounds, and the median of the
per-round ratios to the naive writer (with their range).

- naive: one thread, one transaction per event — read the head, hash,
  INSERT, move the head, COMMIT — into the store's own schema (same indexes,
  the same target trigger), WAL, at the same ``synchronous`` level: the
  obvious way to keep the same chain.
- AuditStore.send: the store; with several threads, sends that arrive
  together share one transaction (group commit).

``synchronous=FULL`` (an fsync per commit, survives power loss) is where
group commit pays off; ``NORMAL`` (the default: survives a crash of the
process) has no fsync per commit, so there the figure is the store's
overhead per event. The last lines time ``verify`` (SQLite's integrity
check, the schema check and the chain walk) on each round's NORMAL stores.
The cost of an fsync on the same disk, probed each round, is printed too:
group commit saves fsyncs, so the FULL ratios grow with it.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from audit_instrument import ActionType, AuditEvent
from audit_instrument.event import format_timestamp
from audit_instrument.store import AuditStore, canonical_json, chain_hash

EVENTS = {"NORMAL": 4000, "FULL": 1200}
CHUNK = 100
THREADS = 8
KEY = "bench-store-key-0123456789abcdef"


def _events(n: int, tag: str) -> list[AuditEvent]:
    return [
        AuditEvent(
            group="organization_1", action="tweet.update", action_type=ActionType.UPDATE,
            actor_name="user@email.com", actor_id=f"user_{i % 50}",
            target_name="user@email.com", target_id=f"tweet_{i}", location="203.0.113.5",
            metadata={"body_was": "What time is the event", "body": "What time is the event?"},
            idempotency_key=f"bench-{tag}-{i}",
        )
        for i in range(n)
    ]


class Naive:
    """One thread, one transaction per event, the same chain and schema."""

    commits = 0

    def __init__(self, path: Path, synchronous: str) -> None:
        AuditStore(path).close()  # the same schema, indexes and trigger
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {synchronous}")

    def write(self, events: list[AuditEvent]) -> None:
        conn = self.conn
        for event in events:
            record = canonical_json(event)
            conn.execute("BEGIN IMMEDIATE")
            seq, previous = conn.execute("SELECT seq, hash FROM chain WHERE id = 1").fetchone()
            digest = chain_hash(previous, record)
            conn.execute(
                'INSERT INTO events (seq, occurred_at, action, actor_id, target_id, "group", '
                "idempotency_key, record, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (seq + 1, format_timestamp(event.occurred_at), event.action, event.actor_id,
                 event.target_id, event.group, event.idempotency_key, record, digest),
            )
            conn.execute("UPDATE chain SET seq = ?, hash = ? WHERE id = 1", (seq + 1, digest))
            conn.execute("COMMIT")
            self.commits += 1

    def close(self) -> None:
        self.conn.close()


class Store:
    """AuditStore.send from ``threads`` threads at once."""

    def __init__(self, path: Path, synchronous: str, threads: int, key: str | None) -> None:
        self.store = AuditStore(path, synchronous=synchronous, key=key)  # type: ignore[arg-type]
        self.threads = threads
        self.commits = 0
        backend = self.store._backend  # counted, to show how many events share a commit
        append = backend.append

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.commits += 1
            return append(*args, **kwargs)

        backend.append = counted  # type: ignore[method-assign]

    def write(self, events: list[AuditEvent]) -> None:
        if self.threads == 1:
            for event in events:
                self.store.send(event)
            return
        start = threading.Barrier(self.threads)

        def send(part: list[AuditEvent]) -> None:
            start.wait()
            for event in part:
                self.store.send(event)

        workers = [threading.Thread(target=send, args=(events[i::self.threads],))
                   for i in range(self.threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def close(self) -> None:
        self.store.close()


Figures = dict[str, dict[str, list[float]]]  # level -> variant -> one figure per round

VARIANTS: dict[str, tuple[int, str | None]] = {  # name: (threads, key); 0 threads = naive
    "naive, 1 thread": (0, None),
    "AuditStore.send, 1 thread": (1, None),
    f"AuditStore.send, {THREADS} threads": (THREADS, None),
    f"keyed AuditStore.send, {THREADS} threads": (THREADS, KEY),
}


def _round(tmp: Path, label: str, synchronous: str) -> dict[str, tuple[float, float]]:
    """One round at one level: (events/s, events per commit) of each variant, in turns."""
    count = EVENTS[synchronous]
    writers: dict[str, Naive | Store] = {}
    events: dict[str, list[AuditEvent]] = {}
    for number, (name, (threads, key)) in enumerate(VARIANTS.items()):
        path = tmp / f"{label}-{synchronous}-{number}.db"
        writers[name] = (Naive(path, synchronous) if threads == 0
                         else Store(path, synchronous, threads, key))
        events[name] = _events(count, f"{label}-{number}")
    spent = dict.fromkeys(VARIANTS, 0.0)
    names = list(VARIANTS)
    for turn, begin in enumerate(range(0, count, CHUNK)):
        shift = turn % len(names)
        for name in names[shift:] + names[:shift]:
            chunk = events[name][begin:begin + CHUNK]
            began = time.perf_counter()
            writers[name].write(chunk)
            spent[name] += time.perf_counter() - began
    for name, writer in writers.items():
        writer.close()
        key = VARIANTS[name][1]
        number = names.index(name)
        with AuditStore(tmp / f"{label}-{synchronous}-{number}.db", readonly=True,
                        key=key) as check:
            assert check.count() == count and check.head().seq == count
    return {name: (count / seconds, count / writers[name].commits)
            for name, seconds in spent.items()}


def _fsync_ms(tmp: Path, times: int = 30) -> float:
    """The median cost of one small write and fsync in ``tmp``: what a FULL commit waits for."""
    took = []
    fd = os.open(tmp / "fsync-probe", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for _ in range(times):
            os.write(fd, b"x" * 512)
            began = time.perf_counter()
            os.fsync(fd)
            took.append(time.perf_counter() - began)
    finally:
        os.close(fd)
    return statistics.median(took) * 1000


def _verify_rate(path: Path, key: str | None) -> float:
    with AuditStore(path, readonly=True, key=key) as store:
        began = time.perf_counter()
        result = store.verify()
        took = time.perf_counter() - began
    assert result.ok, result
    return result.rows / took


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Audit store write throughput.")
    parser.add_argument("--rounds", type=int, default=7, help="counted rounds (default 7)")
    parser.add_argument("--dir", help="where the files go (default: a temporary directory)")
    args = parser.parse_args(argv)
    rates: Figures = {level: {name: [] for name in VARIANTS} for level in EVENTS}
    ratios: Figures = {level: {name: [] for name in VARIANTS} for level in EVENTS}
    per_commit: Figures = {level: {name: [] for name in VARIANTS} for level in EVENTS}
    verify: dict[str, list[float]] = {"unkeyed": [], "keyed": []}
    fsync: list[float] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for round_ in range(args.rounds + 1):  # round 0 warms up and is not counted
            if round_:
                fsync.append(_fsync_ms(Path(tmp)))
            for level in EVENTS:
                found = _round(Path(tmp), str(round_), level)
                if not round_:
                    continue
                for name, (rate, shared) in found.items():
                    rates[level][name].append(rate)
                    ratios[level][name].append(rate / found["naive, 1 thread"][0])
                    per_commit[level][name].append(shared)
            if round_:
                verify["unkeyed"].append(_verify_rate(Path(tmp) / f"{round_}-NORMAL-1.db", None))
                verify["keyed"].append(_verify_rate(Path(tmp) / f"{round_}-NORMAL-3.db", KEY))
    print(f"{args.rounds} rounds (+1 warm-up); events per variant and round: "
          f"NORMAL {EVENTS['NORMAL']}, FULL {EVENTS['FULL']}, in turns of {CHUNK}; "
          f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}")
    print(f"fsync of the disk under test: median {statistics.median(fsync):.2f} ms "
          f"(per-round medians {min(fsync):.2f}-{max(fsync):.2f} ms)")
    print(f"{'synchronous / variant':<44} {'events/s':>9} {'x naive':>8} {'ratio range':>13}"
          f" {'events/commit':>14}")
    for level in EVENTS:
        for name in VARIANTS:
            spread = ratios[level][name]
            print(f"{level:<7} {name:<36} {statistics.median(rates[level][name]):>9,.0f} "
                  f"{statistics.median(spread):>7.2f}x {min(spread):>6.2f}-{max(spread):.2f}x"
                  f" {statistics.median(per_commit[level][name]):>14.1f}")
    for kind, found_rates in verify.items():
        print(f"verify, {kind}, {EVENTS['NORMAL']} rows: {statistics.median(found_rates):,.0f} "
              f"rows/s (range {min(found_rates):,.0f}-{max(found_rates):,.0f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
