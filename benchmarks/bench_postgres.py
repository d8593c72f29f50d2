"""The PostgreSQL store beside a naive writer of the same chain, and beside the SQLite store.

Run:  python benchmarks/bench_postgres.py [--rounds 3] [--rows 1000000] [--dir PATH]

Starts a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``, fsync on, the
server's defaults otherwise) on 127.0.0.1, and measures in one run:

1. **Writes**: 4 processes x 8 threads, each thread sending one event at a
   time into one chain, for

   - ``AuditStore.send`` (PostgreSQL): group commit per process, the head
     locked for the insert-and-advance only, the WAL flush waited for
     after releasing it;
   - the same with the flush waited for under the head lock (a plain
     synchronous ``COMMIT``), to show what waiting apart buys — again with
     a slower flush (``commit_delay`` = 1 ms before each WAL flush, as a
     slower disk or a synchronous standby adds), where it matters most;
   - a naive writer keeping the same chain in the store's own tables: per
     event ``BEGIN``, lock the head (``SELECT … FOR UPDATE``), ``INSERT`` the
     row and its target, advance the head, ``COMMIT`` (the server's
     ``synchronous_commit = on``, as for the store), one connection per thread;
   - and the same pair on SQLite (one file, WAL, ``synchronous=NORMAL``; the
     naive writer: per event ``BEGIN IMMEDIATE``, read the head, ``INSERT``,
     advance, ``COMMIT``).

   Each variant starts its processes (not timed; each opens its connection and
   builds its events), then all are released at once; the time runs until
   the last one is done. Variants take turns within a round, in an order
   that rotates each round, so a slow patch of the shared disk falls on all;
   the first round is a warm-up. Figures: median events/s over the counted
   rounds, and the median of the per-round ratios to the naive writer of the
   same database, with their range. The disk's fsync cost is probed each round.

2. **Queries and verify** on a store of ``--rows`` rows (1,000 actors,
   filled through the store's own append path in batches), PostgreSQL and
   SQLite alike: ``query(actor=...)`` for 300 random actors (a page of 50,
   newest first), p50 and p90; ``query(target=...)``; ``verify()`` in rows/s.

3. **Writes inside callers' transactions** (PostgreSQL): 8 transactions that
   audit and then stay open 0.3 s, all at once — total time against the
   2.4 s they would take one after another; and the delay from a caller's
   ``COMMIT`` to the rows being in the chain: by the store that wrote them
   (p50, max over 40 transactions), and by another store instance when the
   writer closed before the commit (the ``POLL`` interval, 5 transactions).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg
from support.postgres import Cluster, find_bindir

from audit_instrument import ActionType, AuditEvent, configure, emit
from audit_instrument.event import format_timestamp
from audit_instrument.store import AuditStore, canonical_json, chain_hash
from audit_instrument.store.backend import NewRow
from audit_instrument.store.postgres import PostgresBackend

PROCESSES = 4
THREADS = 8
# events per thread and round, by variant: each variant runs for a few seconds
PER_THREAD = {"pg store": 300, "pg store, flush under lock": 120, "pg naive": 40,
              "sqlite store": 150, "sqlite naive": 40}
BASELINE = {"pg store": "pg naive", "pg store, flush under lock": "pg naive",
            "sqlite store": "sqlite naive"}
ACTORS = 1000


def _event(i: int, tag: str) -> AuditEvent:
    return AuditEvent(
        group=f"organization_{i % 7}", action="tweet.update", action_type=ActionType.UPDATE,
        actor_name="user@email.com", actor_id=f"user_{i % ACTORS}",
        target_name="user@email.com", target_id=f"tweet_{i}", location="203.0.113.5",
        metadata={"body_was": "What time is the event", "body": "What time is the event?"},
        idempotency_key=f"bench-{tag}-{i}",
    )


# -- 1. writes: 4 processes x 8 threads ------------------------------------------------------


class _NaivePostgres:
    """Per event: BEGIN, lock the head, INSERT the row and its target, advance, COMMIT."""

    def __init__(self, url: str, schema: str) -> None:
        self.conn = psycopg.connect(url)
        s = f'"{schema}"'
        self.head = f"SELECT seq, hash FROM {s}.chain WHERE id = 1 FOR UPDATE"
        self.insert = (
            f'INSERT INTO {s}.events (seq, occurred_at, action, actor_id, target_id, "group", '
            "idempotency_key, record, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
        )
        self.target = (
            f"INSERT INTO {s}.event_targets (target_id, occurred_at, seq) VALUES (%s, %s, %s)"
        )
        self.advance = f"UPDATE {s}.chain SET seq = %s, hash = %s WHERE id = 1"

    def send(self, event: AuditEvent) -> None:
        record = canonical_json(event)
        when = format_timestamp(event.occurred_at)
        conn = self.conn
        with conn.transaction():
            seq, previous = conn.execute(self.head).fetchone()  # type: ignore[misc]
            seq += 1
            digest = chain_hash(previous, record)
            conn.execute(self.insert, (seq, when, event.action, event.actor_id,
                                       event.target_id, event.group, event.idempotency_key,
                                       record, digest))
            conn.execute(self.target, (event.target_id, when, seq))
            conn.execute(self.advance, (seq, digest))

    def close(self) -> None:
        self.conn.close()


class _NaiveSQLite:
    """Per event: BEGIN IMMEDIATE, read the head, INSERT, advance, COMMIT."""

    def __init__(self, path: str) -> None:
        self.conn = sqlite3.connect(path, isolation_level=None, timeout=60,
                                    check_same_thread=False)
        self.conn.execute("PRAGMA synchronous = NORMAL")

    def send(self, event: AuditEvent) -> None:
        record = canonical_json(event)
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        seq, previous = conn.execute("SELECT seq, hash FROM chain WHERE id = 1").fetchone()
        seq += 1
        digest = chain_hash(previous, record)
        conn.execute(
            'INSERT INTO events (seq, occurred_at, action, actor_id, target_id, "group", '
            "idempotency_key, record, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (seq, format_timestamp(event.occurred_at), event.action, event.actor_id,
             event.target_id, event.group, event.idempotency_key, record, digest),
        )
        conn.execute("UPDATE chain SET seq = ?, hash = ? WHERE id = 1", (seq, digest))
        conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()


def _writer_process(variant: str, where: str, schema: str, first: int, per_thread: int,
                    ready: Any, go: Any, done: Any, release: Any) -> None:
    """One process of a variant: THREADS threads, each sending its events one at a time."""
    events = [[_event(first + t * per_thread + i, variant.replace(" ", "-"))
               for i in range(per_thread)] for t in range(THREADS)]
    if variant.endswith("naive"):
        senders = [_NaivePostgres(where.split("?")[0], schema) if variant.startswith("pg")
                   else _NaiveSQLite(where) for _ in range(THREADS)]
        sends = [sender.send for sender in senders]
        closes = [sender.close for sender in senders]
    else:
        PostgresBackend.flush_apart = not variant.endswith("under lock")
        store = AuditStore(where)
        sends = [store.send] * THREADS
        closes = [store.close]

    failures: list[BaseException] = []

    def run(t: int) -> None:
        send = sends[t]
        try:
            for event in events[t]:
                send(event)
        except BaseException as error:
            failures.append(error)
            raise

    threads = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    ready.put(os.getpid())
    go.wait()
    cpu = time.process_time()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]
    done.put((time.perf_counter(), time.process_time() - cpu))
    release.wait()  # the server's processes are measured before the connections go
    for close in closes:
        close()


def _server_cpu() -> float:
    """CPU seconds used so far by every PostgreSQL process of this machine."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().split()
        except OSError:
            continue
        if fields[1].startswith("(postgres"):
            ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def _run_variant(
    variant: str, where: str, schema: str, first: int
) -> tuple[float, float, float]:
    """One variant's processes released together, timed to the last one: events/s, and the
    CPU microseconds per event of the writer processes and of the database server."""
    context = multiprocessing.get_context("spawn")
    ready, done = context.Queue(), context.Queue()
    go, release = context.Event(), context.Event()
    per_thread = PER_THREAD[variant]
    processes = [
        context.Process(target=_writer_process, args=(
            variant, where, schema, first + p * THREADS * per_thread, per_thread,
            ready, go, done, release))
        for p in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    _collect(ready, processes, variant)
    server = _server_cpu()
    began = time.perf_counter()
    go.set()
    finished = _collect(done, processes, variant)
    server = _server_cpu() - server
    release.set()
    ended = max(end for end, _ in finished)
    for process in processes:
        process.join(60)
        assert process.exitcode == 0, f"{variant}: a writer failed"
    events = PROCESSES * THREADS * per_thread
    client = sum(cpu for _, cpu in finished)
    return events / (ended - began), client / events * 1e6, server / events * 1e6


def _collect(queue: Any, processes: list[Any], variant: str) -> list[Any]:
    """One item from each process, failing as soon as one of them died."""
    items: list[Any] = []
    deadline = time.monotonic() + 900
    while len(items) < len(processes):
        try:
            items.append(queue.get(timeout=0.5))
        except Exception:  # queue.Empty
            if any(p.exitcode not in (None, 0) for p in processes):
                raise SystemExit(f"{variant}: a writer process failed") from None
            if time.monotonic() > deadline:
                raise SystemExit(f"{variant}: writers did not finish") from None
    return items


def _fsync_ms(directory: Path, times: int = 30) -> float:
    took = []
    fd = os.open(directory / "fsync-probe", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        for _ in range(times):
            os.write(fd, b"x" * 512)
            began = time.perf_counter()
            os.fsync(fd)
            took.append(time.perf_counter() - began)
    finally:
        os.close(fd)
    return statistics.median(took) * 1000


def bench_writes(cluster: Cluster, tmp: Path, rounds: int) -> None:
    figures: dict[str, list[tuple[float, float, float]]] = {v: [] for v in PER_THREAD}
    fsyncs = []
    names = list(PER_THREAD)
    for round_ in range(rounds + 1):
        schemas = {v: f"w{round_}_{i}" for i, v in enumerate(names)}
        wheres = {}
        for variant in names:
            if variant.startswith("pg"):
                wheres[variant] = cluster.url(schema=schemas[variant])
            else:
                wheres[variant] = str(tmp / f"w{round_}-{names.index(variant)}.db")
            AuditStore(wheres[variant]).close()  # the schema, made before timing
        fsyncs.append(_fsync_ms(cluster.root))
        shift = round_ % len(names)
        measured = {}
        for variant in names[shift:] + names[:shift]:
            measured[variant] = _run_variant(variant, wheres[variant], schemas[variant],
                                             round_ * 10_000_000)
        for variant in names:
            written = PROCESSES * THREADS * PER_THREAD[variant]
            with AuditStore(wheres[variant], readonly=True) as check:
                result = check.verify()
                assert result.ok and result.rows == written, (variant, result)
            if round_:
                figures[variant].append(measured[variant])
        print(f"  round {round_}{' (warm-up)' if not round_ else ''}: " + ", ".join(
            f"{v} {measured[v][0]:,.0f}/s" for v in names), flush=True)
        for variant in names:
            if variant.startswith("pg"):
                cluster.execute(f'DROP SCHEMA "{schemas[variant]}" CASCADE')
    print(f"\nwrites: {PROCESSES} processes x {THREADS} threads, one event per send, one chain; "
          f"{rounds} rounds (+1 warm-up)")
    print(f"fsync of the disk under test: median {statistics.median(fsyncs):.2f} ms "
          f"(per-round {min(fsyncs):.2f}-{max(fsyncs):.2f} ms)")
    print(f"{'variant':28s} {'events/s':>9s} {'x naive':>8s} {'ratio range':>12s} "
          f"{'CPU us/event: writers':>22s} {'server':>7s}")
    for variant in names:
        rates = [rate for rate, _, _ in figures[variant]]
        client = statistics.median(c for _, c, _ in figures[variant])
        server = statistics.median(s for _, _, s in figures[variant])
        base = BASELINE.get(variant)
        if base is None:
            ratio, spread = "1.00x", ""
        else:
            ratios = [a / b[0] for a, b in zip(rates, figures[base])]
            ratio = f"{statistics.median(ratios):.2f}x"
            spread = f"{min(ratios):.2f}-{max(ratios):.2f}x"
        print(f"{variant:28s} {statistics.median(rates):9,.0f} {ratio:>8s} {spread:>12s} "
              f"{client:22,.0f} {server:7,.0f}")
    print(f"(the machine's {os.cpu_count()} CPUs give {os.cpu_count() or 1} million CPU "
          "microseconds a second to share among writers and server)")


def bench_slow_flush(cluster: Cluster, rounds: int) -> None:
    """The store against itself with the flush under the head, on a slower flush."""
    cluster.execute("ALTER SYSTEM SET commit_delay = 1000")  # 1 ms before each WAL flush
    cluster.execute("ALTER SYSTEM SET commit_siblings = 0")
    cluster.execute("SELECT pg_reload_conf()")
    names = ["pg store", "pg store, flush under lock"]
    figures: dict[str, list[float]] = {name: [] for name in names}
    try:
        for round_ in range(rounds + 1):
            for variant in names[round_ % 2:] + names[:round_ % 2]:
                schema = f"slow{round_}_{names.index(variant)}"
                url = cluster.url(schema=schema)
                AuditStore(url).close()
                rate = _run_variant(variant, url, schema, round_ * 10_000_000)[0]
                if round_:
                    figures[variant].append(rate)
                cluster.execute(f'DROP SCHEMA "{schema}" CASCADE')
    finally:
        cluster.execute("ALTER SYSTEM RESET commit_delay")
        cluster.execute("ALTER SYSTEM RESET commit_siblings")
        cluster.execute("SELECT pg_reload_conf()")
    ratios = [a / b for a, b in zip(figures[names[0]], figures[names[1]])]
    print(f"\nthe same with a slower flush (commit_delay = 1 ms before each WAL flush, as a "
          f"slower disk or a synchronous standby would add); {rounds} rounds (+1 warm-up)")
    for variant in names:
        print(f"{variant:28s} {statistics.median(figures[variant]):9,.0f} events/s")
    print(f"flush waited for after the head is released: {statistics.median(ratios):.2f}x "
          f"the flush under the head ({min(ratios):.2f}-{max(ratios):.2f}x)")


# -- 2. queries and verify on a large store -------------------------------------------------


def _rows(count: int, batch: int) -> Iterator[list[NewRow]]:
    """Rows of ``count`` distinct events, as the store makes them, ``batch`` at a time."""
    base = _event(0, "fill").to_record()
    start = 1_700_000_000.0
    rows: list[NewRow] = []
    for i in range(count):
        record = dict(base)
        when = format_timestamp_from(start + i * 0.25)
        record.update(actor_id=f"user_{i % ACTORS}", target_id=f"tweet_{i}",
                      occurred_at=when, idempotency_key=f"fill-{i}")
        text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        rows.append(NewRow(when, record["action"], record["actor_id"], record["target_id"],
                           record["group"], record["idempotency_key"], text,
                           (record["target_id"],)))
        if len(rows) == batch:
            yield rows
            rows = []
    if rows:
        yield rows


def format_timestamp_from(epoch: float) -> str:
    from datetime import UTC, datetime

    return format_timestamp(datetime.fromtimestamp(epoch, UTC))


def _fill(store: AuditStore, count: int) -> float:
    began = time.perf_counter()
    for batch in _rows(count, 2000):
        store._write_lock.acquire()
        try:
            store._backend.append(batch, store._linker)
        finally:
            store._write_lock.release()
    return count / (time.perf_counter() - began)


def _timed(query: Callable[..., object], calls: list[dict[str, str]]) -> list[float]:
    """Milliseconds each ``query(**filters)`` took, sorted."""
    took = []
    for filters in calls:
        began = time.perf_counter()
        query(**filters)
        took.append((time.perf_counter() - began) * 1000)
    return sorted(took)


def bench_large(cluster: Cluster, tmp: Path, rows: int) -> None:
    print(f"\nqueries and verify on {rows:,} rows ({ACTORS:,} actors; a page of 50, "
          "newest first)")
    print(f"{'store':12s} {'fill rows/s':>12s} {'actor p50':>10s} {'actor p90':>10s} "
          f"{'target p50':>11s} {'verify rows/s':>14s} {'reading alone':>14s}")
    random.seed(7)
    for name, where in (("PostgreSQL", cluster.url(schema="large")),
                        ("SQLite", str(tmp / "large.db"))):
        store = AuditStore(where)
        fill_rate = _fill(store, rows)
        if name == "PostgreSQL":
            cluster.execute("VACUUM ANALYZE large.events")
            cluster.execute("VACUUM ANALYZE large.event_targets")
        actors = [f"user_{random.randrange(ACTORS)}" for _ in range(300)]
        for actor in actors[:20]:  # warm the cache as a running server would be
            store.query(actor=actor)
        by_actor = _timed(store.query, [{"actor": actor} for actor in actors])
        by_target = _timed(store.query, [{"target": f"tweet_{random.randrange(rows)}"}
                                         for _ in range(300)])
        began = time.perf_counter()
        result = store.verify()
        verify_rate = result.rows / (time.perf_counter() - began)
        assert result.ok and result.rows == rows, result
        with store._backend.snapshot() as snapshot:  # the rows verify walks, without the walk
            began = time.perf_counter()
            read = sum(1 for _ in snapshot.rows())
            read_rate = read / (time.perf_counter() - began)
        store.close()
        print(f"{name:12s} {fill_rate:12,.0f} {statistics.median(by_actor):8.2f}ms "
              f"{by_actor[int(len(by_actor) * 0.9)]:8.2f}ms {statistics.median(by_target):9.2f}ms "
              f"{verify_rate:14,.0f} {read_rate:14,.0f}", flush=True)


# -- 3. writes inside callers' transactions ----------------------------------------------------


def bench_transactions(cluster: Cluster) -> None:
    url = cluster.url(schema="txn")
    dsn = cluster.url()
    store = AuditStore(url)
    configure(store)

    def open_transaction(i: int) -> None:
        with psycopg.connect(dsn) as conn:
            with store.in_transaction(conn):
                emit(_event(i, "open"))
            time.sleep(0.3)  # the business transaction goes on
            conn.commit()

    spans = []
    for round_ in range(3):
        threads = [threading.Thread(target=open_transaction, args=(round_ * 8 + i,))
                   for i in range(8)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        spans.append(time.perf_counter() - began)
    print("\nwrites inside callers' transactions (PostgreSQL)")
    print(f"8 transactions that audit, then stay open 0.3 s, all at once: median "
          f"{statistics.median(spans):.2f} s (one after another: 2.40 s)")

    delays = []
    with psycopg.connect(dsn) as conn:
        for i in range(40):
            with store.in_transaction(conn):
                emit(_event(1000 + i, "delay"))
            expected = store.count() + 1
            conn.commit()
            began = time.perf_counter()
            while store.count() < expected:
                time.sleep(0.0005)
            delays.append((time.perf_counter() - began) * 1000)
    configure()
    store.close()
    print(f"commit -> in the chain, by the store that wrote them: p50 "
          f"{statistics.median(delays):.1f} ms, max {max(delays):.1f} ms (40 transactions)")

    late = []
    other = AuditStore(url)
    for i in range(5):
        writer = AuditStore(url)
        configure(writer)
        with psycopg.connect(dsn) as conn:
            with writer.in_transaction(conn):
                emit(_event(2000 + i, "late"))
            writer.close()  # gone before the commit: another instance must chain it
            expected = other.count() + 1
            conn.commit()
            began = time.perf_counter()
            while other.count() < expected:
                time.sleep(0.002)
            late.append((time.perf_counter() - began) * 1000)
    configure()
    other.close()
    print(f"commit -> in the chain, by another store instance (the writer closed): p50 "
          f"{statistics.median(late):.0f} ms, max {max(late):.0f} ms (5 transactions; "
          "POLL = 1 s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dir", help="where the SQLite files go (default: a temp dir)")
    parser.add_argument("--skip", action="append", default=[],
                        choices=["writes", "large", "transactions"])
    args = parser.parse_args()
    bindir = find_bindir()
    if bindir is None:
        sys.exit("bench_postgres: PostgreSQL binaries not found (apt-get install postgresql)")
    tmp = Path(args.dir or tempfile.mkdtemp(prefix="bench-postgres-"))
    cluster = Cluster(bindir, fsync=True).start()
    try:
        cluster.execute("CREATE DATABASE audit_tests", database="postgres")
        version = cluster.execute("SHOW server_version")[0][0]
        print(f"PostgreSQL {version} (fsync on, synchronous_commit on), SQLite "
              f"{sqlite3.sqlite_version}, psycopg {psycopg.__version__}, Python "
              f"{sys.version.split()[0]}, {os.cpu_count()} CPUs", flush=True)
        if "writes" not in args.skip:
            bench_writes(cluster, tmp, args.rounds)
            bench_slow_flush(cluster, args.rounds)
        if "large" not in args.skip:
            bench_large(cluster, tmp, args.rows)
        if "transactions" not in args.skip:
            bench_transactions(cluster)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
