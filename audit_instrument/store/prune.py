"""Retention: move the oldest rows of a store into an archive, keeping both verifiable.

:meth:`AuditStore.prune` runs :func:`prune`:

1. Which rows may go: rows leave a chain only from its start, so the rows
   pruned are those from the base (or row 1) up to the row before the first
   one that is not older than ``before``. An old event recorded after a
   newer one stays until everything before it is old enough.
2. The rows are read in chain order and their hashes checked as they are
   copied, so a broken chain is never pruned (that would delete the
   evidence): the prune stops, changing nothing, and names the row.
3. They are written to the archive (:mod:`.archive`): an audit store file
   of its own, which ``verify`` checks alone.
4. They are deleted from the store in chunks of :data:`CHUNK` rows, each one
   transaction that also moves the store's base (the last row removed and
   its hash, from which the first row kept continues) and, on a keyed
   chain, renews the head MAC, which covers the base. The store verifies at
   every moment, and other writers get the lock between chunks.

A prune interrupted after the archive was written leaves rows in both the
archive and the store; pruning again into the same archive resumes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from threading import Lock
from typing import Protocol, TypeVar

from ..errors import AuditConfigError, AuditError, AuditValidationError
from ..event import format_timestamp
from .archive import ArchiveEnd, archive_end, write_archive
from .backend import Backend, Row
from .chain import GENESIS_HASH, ChainBase, ChainKey, Linker, Seal
from .query import Filters, make_filters

__all__ = ["CHUNK", "PruneResult", "prune"]

CHUNK = 100_000
"""Rows deleted per transaction: writers wait at most one (a second or two on a large
store); smaller chunks rewrite the same index pages over and over, and cost up to twice
as much in all (``benchmarks/bench_viewer.py``, prune)."""

T = TypeVar("T")


class Reader(Protocol):
    """The store's way to run a read: ``read(fn)`` calls ``fn`` under its read lock."""

    def __call__(self, fn: Callable[[], T]) -> T: ...


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :meth:`AuditStore.prune` did.

    ``rows`` rows (``first`` to ``last``) left the store; ``archive`` is
    where they went (``None`` when they were only deleted). ``kept_older``
    counts rows older than ``before`` that stay because a newer row comes
    before them in the chain. ``checkpoint`` is the store's checkpoint after
    the prune: keep it with the archive.
    """

    rows: int
    first: int
    last: int
    archive: Path | None
    kept_older: int
    checkpoint: str


def _before_text(before: object) -> str:
    """``before`` (a datetime, ISO text, or an age as a timedelta) as stored text."""
    if isinstance(before, timedelta):
        if before < timedelta(0):
            raise AuditValidationError("before", "must not be a negative age", before)
        before = datetime.now(UTC) - before
    try:
        text = make_filters(until=before).until
    except AuditValidationError as error:
        raise AuditValidationError("before", error.rule, before) from None
    if text is None:
        raise AuditValidationError("before", "is required: a datetime, ISO text or an age")
    return text


class _Checked:
    """Rows passed through as they are, each checked to follow the one before in the chain.

    Raises :class:`~audit_instrument.AuditError` at the first that does not;
    ``end`` is the last row's ``(seq, hash)``; ``progress(phase, done, total)``
    is called every 10,000 rows. One loop does it all: it runs once per row
    moved (``benchmarks/bench_viewer.py``, prune).
    """

    def __init__(
        self, rows: Iterable[Row], linker: Linker, after: ArchiveEnd, where: str,
        report: Callable[[int], None] | None,
    ) -> None:
        self._rows = rows
        self._linker = linker
        self._where = where
        self._report = report
        self.end = after

    def __iter__(self) -> Iterator[Row]:
        expected, previous = self.end[0] + 1, self.end[1]
        link = self._linker.link
        seal = self._linker.seal
        keyed_from = seal.keyed_from if seal is not None else None
        sha256, report = hashlib.sha256, self._report
        for row in self._rows:
            seq, record, digest = row[0], row[7], row[8]
            if keyed_from is None or seq < keyed_from:
                computed = sha256((previous + record).encode("utf-8")).hexdigest()
            else:
                computed = link(seq, previous, record)
            if seq != expected or computed != digest:
                raise AuditError(
                    f"{self._where}: row {min(seq, expected)} does not follow the row before "
                    "it in the chain: nothing was pruned; run verify"
                )
            yield row
            expected, previous = seq + 1, digest
            if report is not None and seq % 10_000 == 0:
                report(seq)
        self.end = (expected - 1, previous)


def _resume_point(
    backend: Backend, path: Path, start: int, start_hash: str, where: str
) -> ArchiveEnd:
    """Where the rows for ``path`` begin: the store's base, or the end of an archive
    that already holds rows the store still has (an interrupted prune)."""
    end = archive_end(path)
    if end is None or end == (start, start_hash):
        return (start, start_hash)
    seq, digest = end
    if seq > start:
        held = next(iter(backend.archive_rows(seq, seq)), None)
        if held is not None and held[8] == digest:
            return end
    raise AuditConfigError(
        f"{path}: this archive does not continue where the store's chain starts (row "
        f"{start}): it ends at row {seq}. Prune into the archive the last prune wrote, "
        "or into a new file"
    )


def prune(
    backend: Backend,
    *,
    before: object,
    archive: str | os.PathLike[str] | None,
    key: ChainKey | None,
    linker: Callable[[Seal | None], Linker],
    write_lock: Lock,
    read: Reader,
    checkpoint: Callable[[], str],
    progress: Callable[[str, int, int], None] | None = None,
) -> PruneResult:
    """Prune ``backend`` (see the module); ``read``/``write_lock`` are the store's."""
    where = backend.location
    before_text = _before_text(before)
    base = read(backend.base)
    start = 0 if base is None else base.seq
    start_hash = GENESIS_HASH if base is None else base.hash
    upto = read(lambda: backend.prunable(before_text))
    path = None if archive is None else Path(archive)

    def older() -> int:  # counted once the old rows are gone: a short index range then
        return read(lambda: backend.count(Filters(until=before_text)))

    if upto <= start:
        return PruneResult(0, 0, 0, path, older(), checkpoint())
    seal = read(backend.seal)
    chain = linker(seal)  # raises if the chain is keyed and the key is missing or wrong
    total = upto - start

    def report(phase: str) -> Callable[[int], None] | None:
        if progress is None:
            return None
        return lambda seq: progress(phase, seq - start, total)

    if path is None:
        for _ in _Checked(backend.archive_rows(start + 1, upto), chain, (start, start_hash),
                          where, report("checking")):
            pass
    else:
        after = _resume_point(backend, path, start, start_hash, where)
        if after[0] < upto:
            rows = _Checked(backend.archive_rows(after[0] + 1, upto), chain, after, where,
                            report("archiving"))
            write_archive(
                path, rows, backend.archive_targets(after[0] + 1, upto),
                base=base, seal=seal, key=key, where=where,
            )
    pruned_at = format_timestamp(datetime.now(UTC))
    done = start
    while done < upto:
        step = min(done + CHUNK, upto)
        with write_lock:
            moved: ChainBase = backend.prune_upto(step, done, pruned_at, linker)
        done = moved.seq
        if progress is not None:
            progress("pruning", done - start, total)
    return PruneResult(total, start + 1, upto, path, older(), checkpoint())
