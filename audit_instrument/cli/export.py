"""``export [DB] --format csv|jsonl [filters] [--out FILE]``: every matching event, streamed.

Rows are read a page at a time and written as they come, so memory stays
flat at any size. The columns of the CSV and the lines of JSONL are
described in :mod:`audit_instrument.viewer.export`. With ``--out`` the file
is written under a temporary name (mode 0600) and renamed when complete.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import BinaryIO

from .._progress import Progress
from ._common import (
    CommandError,
    Commands,
    add_db_argument,
    display_path,
    open_store,
    parse_when,
)

__all__ = ["register", "run"]

_MAX_WORKERS = 4  # processes formatting CSV (benchmarks/bench_viewer.py, export)


def register(commands: Commands) -> None:
    """Add the ``export`` command."""
    parser = commands.add_parser(
        "export",
        help="write the events of an audit store as CSV or JSON lines",
        description=(
            "Write every event matching the filters, newest first, as CSV (fixed columns, "
            "metadata as one JSON column) or JSON lines (one full event record per line), "
            "to stdout or --out FILE. A progress line is shown on a terminal."
        ),
    )
    add_db_argument(parser)
    parser.add_argument("--format", choices=("csv", "jsonl"), default="csv",
                        help="csv (default) or jsonl")
    parser.add_argument("--actor", metavar="ID", help="only events by this actor id")
    parser.add_argument("--action", metavar="NAME", help="only this action")
    parser.add_argument("--target", metavar="ID", help="only events on this target id")
    parser.add_argument("--group", metavar="ID", help="only events of this group")
    parser.add_argument("--since", metavar="WHEN", type=parse_when,
                        help="from this time on (inclusive): a date, a time, or an age: 7d")
    parser.add_argument("--until", metavar="WHEN", type=parse_when, help="before this time")
    parser.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout")
    parser.add_argument(
        "--jobs", metavar="N", type=int, default=min(os.cpu_count() or 1, _MAX_WORKERS),
        help="processes formatting CSV (default: the CPUs, at most 4; 1: this one alone)",
    )
    parser.set_defaults(run=run)


def _open_out(path: Path) -> tuple[BinaryIO, Path]:
    partial = path.with_name(path.name + ".partial")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as error:
        raise CommandError(f"{display_path(path)}: cannot write ({error.strerror})") from error
    return os.fdopen(fd, "wb"), partial


def run(args: argparse.Namespace) -> int:
    """Write the export."""
    from ..viewer.export import csv_chunks, jsonl_chunks, parallel_csv_chunks

    if not 1 <= args.jobs <= 64:
        raise CommandError(f"--jobs must be from 1 to 64 (got {args.jobs})")
    filters = {name: getattr(args, name) for name in
               ("actor", "action", "target", "group", "since", "until")}
    with open_store(args.db) as store:
        progress = Progress("exporting")
        if progress.enabled:
            progress.total = store.count(**filters)
        chunks = csv_chunks if args.format == "csv" else jsonl_chunks
        out: BinaryIO
        partial: Path | None = None
        if args.out is None:
            out = sys.stdout.buffer
        else:
            out, partial = _open_out(Path(args.out))
        written = 0

        def counted(rows: int) -> None:
            nonlocal written
            written = rows
            progress.update(rows)

        if args.format == "csv" and args.jobs > 1:  # formatting CSV is the cost: share it
            pieces = parallel_csv_chunks(args.db, filters, workers=args.jobs, counted=counted)
        else:
            pieces = chunks(store.records(**filters), counted=counted)
        try:
            with progress:
                for piece in pieces:
                    out.write(piece)
            out.flush()
            if partial is not None:
                os.fsync(out.fileno())
                out.close()
                os.replace(partial, args.out)
        except BaseException:
            if partial is not None:
                out.close()
                partial.unlink(missing_ok=True)
            raise
    if args.out is not None:
        kind = "CSV" if args.format == "csv" else "JSON lines"
        print(f"exported {written:,} events to {display_path(args.out)} ({kind})",
              file=sys.stderr)
    return 0
