"""The viewer over HTTP on a 1,000,000-row store; export of 1,000,000 rows; prune of 1,000,000
of 2,000,000 rows.

Run:  python benchmarks/bench_viewer.py [--dir /tmp/bench] [--rows 1000000] [--requests 40]
                                        [--rounds 3] [--only pages|export|prune]

Stores are built once into ``--dir`` (``_bigstore.build_store``: 20 groups, 500
actors, 8 actions over 90 days; they verify) and copied for each use, since
the viewer records its reads and prune deletes.

- **pages**: the standalone server (``make_server``, what ``serve`` runs) on a
  copy of the 1M store, reached with httpx over loopback. After a warm-up
  request its background verify is waited for (and timed). Then, in turns,
  the first page (50 events, with chart and badge), a page filtered by actor,
  the chart alone (``/chart.svg``) and the JSON API: p50 and p90 over
  ``--requests`` each. Beside them, in the same process: the same first page
  read with ``store.query`` (what the HTTP and HTML cost on top), and the
  chart's 30 days counted by a ``GROUP BY`` scan of the events (what the
  activity counts save).
- **export**: ``python -m audit_instrument export --format csv|jsonl --out``
  of the 1M store as a child process (CSV both with its worker processes and
  with ``--jobs 1``): rows/s and the peak RSS of any of its processes
  (``wait4``); beside it a child that only reads the same rows in the same
  order.
- **prune**: on fresh copies of the 2M store per round, in rotating order:
  ``AuditStore.prune`` of the older half into a new archive; and the
  baseline the issue names — one transaction that writes the same rows to
  a file (their records, one per line, fsynced) and deletes them (``DELETE``
  from ``events`` and ``event_targets``) on a plain connection; and the same
  baseline with prune's 256 MiB page cache. Median times and ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from _bigstore import build_store

from audit_instrument.store import AuditStore
from audit_instrument.viewer.server import make_server

MONTH = ("2026-03-01", "2026-04-01")  # the last month of the built stores' 90 days


def _store(directory: Path, rows: int) -> Path:
    """The cached store of ``rows`` rows, built if missing."""
    path = directory / f"store-{rows}.db"
    if path.exists():
        with AuditStore(path, readonly=True) as store:
            if store.head().seq == rows:
                return path
    print(f"building a {rows:,}-row store in {path} (once)...", flush=True)
    started = time.perf_counter()
    build_store(path, rows)
    print(f"  built in {time.perf_counter() - started:.0f} s", flush=True)
    return path


def _copy(source: Path, target: Path) -> Path:
    for suffix in ("", "-wal", "-shm"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    shutil.copyfile(source, target)
    return target


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return f"p50 {statistics.median(values) * 1000:7.1f} ms   p90 {p90 * 1000:7.1f} ms"


def pages(directory: Path, rows: int, requests: int) -> None:
    work = _copy(_store(directory, rows), directory / "pages.db")
    server = make_server(AuditStore(work), port=0).start()
    try:
        url = server.url
        with httpx.Client(timeout=120) as client:
            started = time.perf_counter()
            client.get(url).raise_for_status()  # warm-up; starts the background verify
            server.viewer.chain.wait(600)
            verified = time.perf_counter() - started
            result = server.viewer.chain.view(refresh=False).result
            print(f"background verify of {rows:,} rows: {verified:.1f} s "
                  f"({rows / verified:,.0f} rows/s), {result}")
            month = f"since={MONTH[0]}&until={MONTH[1]}"
            probes: dict[str, str] = {
                "first page (50 events, chart, badge)": url,
                "page filtered by actor": url + "?actor=user_7",
                "first page of a month, with its chart": f"{url}?{month}",
                "chart of a month alone (/chart.svg)": f"{url}chart.svg?{month}",
                "JSON API, 50 events": url + "api/events?limit=50",
            }
            times: dict[str, list[float]] = {name: [] for name in probes}
            for turn in range(requests):
                names = list(probes)
                for name in names[turn % len(names):] + names[:turn % len(names)]:
                    begun = time.perf_counter()
                    answer = client.get(probes[name])
                    times[name].append(time.perf_counter() - begun)
                    assert answer.status_code == 200, answer.text[:200]
        store = server.store
        query = _timed(lambda: store.query(limit=50), requests)
        in_month = store.count(since=MONTH[0], until=MONTH[1])
        scan = _timed(lambda: _group_by_scan(work, *MONTH), max(3, requests // 8))
    finally:
        server.close()
    print(f"over HTTP, {requests} requests each ({rows:,} rows; target p50 <= 100 ms):")
    for name, values in times.items():
        print(f"  {name:40s} {_ms(values)}")
    first = statistics.median(times["first page (50 events, chart, badge)"])
    chart = statistics.median(times["chart of a month alone (/chart.svg)"])
    print(f"  beside it, in process: store.query(limit=50)        {_ms(query)}  "
          f"(the first page over HTTP: {first / statistics.median(query):.1f}x)")
    print(f"  beside it, in process: the month's {in_month:,} events counted by GROUP BY "
          f"{_ms(scan)}  (the chart from counts over HTTP: "
          f"{chart / statistics.median(scan):.2f}x)")


def _timed(fn: Callable[[], object], n: int) -> list[float]:
    out = []
    for _ in range(n):
        begun = time.perf_counter()
        fn()
        out.append(time.perf_counter() - begun)
    return out


def _group_by_scan(path: Path, since: str, until: str) -> None:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        conn.execute(
            "SELECT substr(occurred_at, 1, 10), action, count(*) FROM events "
            "WHERE occurred_at >= ? AND occurred_at < ? GROUP BY 1, 2", (since, until)
        ).fetchall()
    finally:
        conn.close()


_READ_ONLY = """
import sqlite3, sys
conn = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for (record,) in conn.execute(
            "SELECT record FROM events ORDER BY occurred_at DESC, seq DESC"):
        out.write(record + "\\n")
"""


def _child(args: list[str]) -> tuple[float, int]:
    """Run ``args``; its wall time and peak RSS in MiB."""
    begun = time.perf_counter()
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - begun
    if process.returncode:
        raise SystemExit(f"{args} failed with {process.returncode}")
    return elapsed, usage.ru_maxrss // 1024


def export(directory: Path, rows: int, rounds: int) -> None:
    source = _store(directory, rows)
    out = directory / "export.out"
    commands = {
        "csv": ["--format", "csv"],
        "csv1": ["--format", "csv", "--jobs", "1"],
        "jsonl": ["--format", "jsonl"],
    }
    found: dict[str, list[tuple[float, int]]] = {name: [] for name in [*commands, "read"]}
    for turn in range(rounds):
        order = list(found)
        for name in order[turn % len(order):] + order[:turn % len(order)]:
            if name == "read":
                args = [sys.executable, "-c", _READ_ONLY, str(source), str(out)]
            else:
                args = [sys.executable, "-m", "audit_instrument", "export", str(source),
                        *commands[name], "--out", str(out)]
            found[name].append(_child(args))
    out.unlink(missing_ok=True)
    print(f"export of {rows:,} rows to a file, child processes, median of {rounds} "
          "(target >= 100,000 rows/s, RSS <= 100 MB):")
    read = statistics.median(t for t, _ in found["read"])
    for name, label in (("csv", "export --format csv"),
                        ("csv1", "export --format csv --jobs 1"),
                        ("jsonl", "export --format jsonl"),
                        ("read", "read the rows only (baseline)")):
        seconds = statistics.median(t for t, _ in found[name])
        rss = max(r for _, r in found[name])
        print(f"  {label:32s} {rows / seconds:10,.0f} rows/s  {seconds:6.1f} s  "
              f"peak RSS {rss:4d} MiB  {seconds / read:4.2f}x the read")


def _baseline(path: Path, upto: int, file: Path, cache: int | None) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        if cache is not None:
            conn.execute(f"PRAGMA cache_size = {cache}")
        begun = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        with open(file, "w", encoding="utf-8") as out:
            for (record,) in conn.execute(
                    "SELECT record FROM events WHERE seq <= ? ORDER BY seq", (upto,)):
                out.write(record + "\n")
            out.flush()
            os.fsync(out.fileno())
        conn.execute("DELETE FROM event_targets WHERE seq <= ?", (upto,))
        conn.execute("DELETE FROM events WHERE seq <= ?", (upto,))
        conn.execute("COMMIT")
        return time.perf_counter() - begun
    finally:
        conn.close()


def prune(directory: Path, rows: int, rounds: int) -> None:
    source = _store(directory, 2 * rows)
    conn = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    cut = conn.execute("SELECT occurred_at FROM events WHERE seq = ?", (rows + 1,)).fetchone()[0]
    conn.close()
    archive = directory / "archive.db"
    flat = directory / "baseline.jsonl"
    times: dict[str, list[float]] = {"prune": [], "plain": [], "cached": []}

    def run_prune(path: Path) -> float:
        archive.unlink(missing_ok=True)
        with AuditStore(path) as store:
            begun = time.perf_counter()
            result = store.prune(before=cut, archive=archive)
            elapsed = time.perf_counter() - begun
        assert result.rows == rows, result
        return elapsed

    runs: dict[str, Callable[[Path], float]] = {
        "prune": run_prune,
        "plain": lambda path: _baseline(path, rows, flat, None),
        "cached": lambda path: _baseline(path, rows, flat, -262_144),
    }
    for turn in range(rounds):
        names = list(runs)
        for name in names[turn % 3:] + names[:turn % 3]:
            work = _copy(source, directory / "prune.db")
            times[name].append(runs[name](work))
    for path in (archive, flat, directory / "prune.db"):
        path.unlink(missing_ok=True)
    plain = statistics.median(times["plain"])
    ratios = [p / b for p, b in zip(times["prune"], times["plain"], strict=True)]
    cached = [p / b for p, b in zip(times["prune"], times["cached"], strict=True)]
    print(f"prune {rows:,} of {2 * rows:,} rows, {rounds} rounds on fresh copies "
          "(target <= 1.5x the plain baseline):")
    print(f"  baseline, plain connection: write the rows to a file + DELETE   {plain:6.1f} s")
    print(f"  baseline, with prune's 256 MiB page cache                    "
          f"{statistics.median(times['cached']):6.1f} s")
    print(f"  AuditStore.prune into a new archive                          "
          f"{statistics.median(times['prune']):6.1f} s   "
          f"{statistics.median(ratios):.2f}x plain (range {min(ratios):.2f}-{max(ratios):.2f}),"
          f" {statistics.median(cached):.2f}x cached")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()) / "audit-bench")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=("pages", "export", "prune"))
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    print(f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    if args.only in (None, "pages"):
        pages(args.dir, args.rows, args.requests)
    if args.only in (None, "export"):
        export(args.dir, args.rows, args.rounds)
    if args.only in (None, "prune"):
        prune(args.dir, args.rows, args.rounds)


if __name__ == "__main__":
    main()
