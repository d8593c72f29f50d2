"""Exports of stored events: CSV with fixed columns, or JSON lines of full records.

Both read the store's rows as stored (``AuditStore.records``), newest first,
a page at a time, so memory stays flat whatever the size; neither builds an
event per row.

**JSONL**: one event record per line — the stored canonical JSON (sorted
keys), exactly what ``AuditEvent.from_dict`` reads back and the viewer's
JSON API returns.

**CSV** (RFC 4180, UTF-8, a header line, ``\\r\\n`` line ends), always these
columns in this order (:data:`CSV_COLUMNS`):

``occurred_at, group, action, action_type, actor_id, actor_name, actor_type,
target_id, target_name, targets, location, user_agent, metadata,
actor_metadata, version, idempotency_key, hash``

``metadata`` and ``actor_metadata`` are one JSON object each (``{}`` when
empty); ``targets`` is the JSON list of every target when the event has
more than the first or gives it a type or metadata, else empty;
``actor_type`` and ``version`` are empty unless the event sets them;
``hash`` is the row's chain hash. A cell that starts with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return is prefixed with ``'`` so that a
spreadsheet shows it as text instead of running it as a formula (CSV
injection); nothing else is changed.
"""

from __future__ import annotations

import csv
import itertools
import json
import multiprocessing
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Literal

__all__ = [
    "CSV_COLUMNS",
    "FORMATS",
    "Format",
    "csv_chunks",
    "csv_segment",
    "jsonl_chunks",
    "neutralise",
    "parallel_csv_chunks",
]

Format = Literal["csv", "jsonl"]
FORMATS: tuple[Format, ...] = ("csv", "jsonl")

CSV_COLUMNS = (
    "occurred_at", "group", "action", "action_type", "actor_id", "actor_name", "actor_type",
    "target_id", "target_name", "targets", "location", "user_agent", "metadata",
    "actor_metadata", "version", "idempotency_key", "hash",
)
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_FORMULA_FIRST = frozenset(_FORMULA_START)
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_decode = json.JSONDecoder().decode

StoredRows = Iterable[tuple[str, int, str, str]]
"""``(occurred_at, seq, record, hash)`` rows, as ``AuditStore.records`` yields them."""


def neutralise(cell: str) -> str:
    """``cell`` made safe from spreadsheet formula injection (see the module)."""
    return "'" + cell if cell.startswith(_FORMULA_START) else cell


def _csv_lines(rows: StoredRows, write: Callable[[list[str]], object]) -> Iterator[int]:
    """Write each row's cells with ``write``; yield after each row.

    Only cells a user can fill may start with a formula character; the
    others (times, the action type, JSON, hex) are passed as they are.
    """
    decode, encode, first = _decode, _encode, _FORMULA_FIRST
    for _, _, record, digest in rows:
        data = decode(record)
        texts = [
            data["group"], data["action"], data["actor_id"], data["actor_name"],
            data.get("actor_type") or "", data["target_id"], data["target_name"],
            data["location"], data["user_agent"], data["idempotency_key"],
        ]
        group, action, actor_id, actor_name, actor_type, target_id, target_name, \
            location, user_agent, key = ["'" + t if t[:1] in first else t for t in texts]
        targets = data.get("targets")
        actor_metadata = data.get("actor_metadata")
        version = data.get("version")
        write([
            data["occurred_at"], group, action, data["action_type"], actor_id, actor_name,
            actor_type, target_id, target_name, "" if targets is None else encode(targets),
            location, user_agent, encode(data["metadata"]),
            encode(actor_metadata) if actor_metadata else "{}",
            "" if version is None else str(version), key, digest,
        ])
        yield 1


def _pieces(
    lines: Iterator[int], buffer: list[str], counted: Callable[[int], None] | None, size: int,
) -> Iterator[bytes]:
    """Join what ``lines`` puts in ``buffer`` into pieces of about ``size`` characters."""
    done = 0
    length = sum(map(len, buffer))
    for _ in lines:
        done += 1
        length += len(buffer[-1])
        if length >= size:
            yield "".join(buffer).encode("utf-8")
            buffer.clear()
            length = 0
            if counted is not None:
                counted(done)
    if buffer:
        yield "".join(buffer).encode("utf-8")
    if counted is not None:
        counted(done)


def csv_chunks(
    rows: StoredRows, *, counted: Callable[[int], None] | None = None, size: int = 1 << 16,
    header: bool = True,
) -> Iterator[bytes]:
    """The CSV export of ``rows`` (header first), UTF-8, in pieces of about ``size`` bytes.

    ``counted(n)`` is called with the number of rows written so far after each piece.
    """
    buffer: list[str] = []
    writer = csv.writer(_Sink(buffer.append), lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    return _pieces(_csv_lines(rows, writer.writerow), buffer, counted, size)


def _context() -> multiprocessing.context.BaseContext:
    """Fork where there is fork (quick, and no re-import of ``__main__``), else spawn."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def csv_segment(path: str, filters: dict[str, Any], cursor: str | None, count: int) -> bytes:
    """CSV lines (no header) of the ``count`` rows after ``cursor``: a worker's share of
    :func:`parallel_csv_chunks`. Opens the store read-only itself."""
    from ..store import MAX_PAGE, AuditStore

    with AuditStore(path, readonly=True) as store:
        rows = store.records(page_size=min(count, MAX_PAGE), cursor=cursor, **filters)
        return b"".join(csv_chunks(itertools.islice(rows, count), header=False))


def parallel_csv_chunks(
    path: str, filters: dict[str, Any], *, workers: int,
    counted: Callable[[int], None] | None = None, segment: int = 20_000,
) -> Iterator[bytes]:
    """:func:`csv_chunks` of the store at ``path``, formatted by ``workers`` processes.

    Turning a stored record into a CSV line costs about ten times reading it
    (most of it decoding the record's JSON), so a large CSV export is cut
    into segments of ``segment`` rows that worker processes format while
    this one finds where the next segments begin and writes the finished
    ones in order; at most ``workers + 1`` segments are held at a time, so
    memory stays bounded. ``benchmarks/bench_viewer.py`` (export) shows the
    rows/s.
    """
    from ..store import MAX_PAGE, AuditStore
    from ..store.query import encode_cursor

    header: list[str] = []
    csv.writer(_Sink(header.append), lineterminator="\r\n").writerow(CSV_COLUMNS)
    yield header[0].encode("utf-8")
    done = 0
    with AuditStore(path, readonly=True) as store, ProcessPoolExecutor(
        workers, mp_context=_context()
    ) as pool:
        waiting: deque[tuple[Future[bytes], int]] = deque()
        cursor: str | None = None
        count = 0
        for occurred_at, seq, _, _ in store.records(page_size=MAX_PAGE, **filters):
            count += 1
            if count < segment:
                continue
            waiting.append((pool.submit(csv_segment, path, filters, cursor, count), count))
            cursor, count = encode_cursor(occurred_at, seq), 0
            while len(waiting) > workers:
                future, rows = waiting.popleft()
                yield future.result()
                done += rows
                if counted is not None:
                    counted(done)
        if count:
            waiting.append((pool.submit(csv_segment, path, filters, cursor, count), count))
        while waiting:
            future, rows = waiting.popleft()
            yield future.result()
            done += rows
            if counted is not None:
                counted(done)


def jsonl_chunks(
    rows: StoredRows, *, counted: Callable[[int], None] | None = None, size: int = 1 << 16
) -> Iterator[bytes]:
    """The JSON-lines export of ``rows``: each stored record on a line of its own."""
    buffer: list[str] = []
    append = buffer.append

    def lines() -> Iterator[int]:
        for row in rows:
            append(row[2] + "\n")
            yield 1

    return _pieces(lines(), buffer, counted, size)


class _Sink:
    """What ``csv.writer`` writes to: each line handed to ``write``."""

    __slots__ = ("write",)

    def __init__(self, write: Callable[[str], object]) -> None:
        self.write = write

