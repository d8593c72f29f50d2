"""``prune [DB] --before 90d --archive FILE``: move old rows into an archive; both stay verifiable.

See :meth:`audit_instrument.store.AuditStore.prune`. Exit 0 when done (also
when nothing was old enough), 1 when the rows to move fail their chain
check (nothing is changed), 2 for a usage error.
"""

from __future__ import annotations

import argparse
from datetime import UTC

from .._progress import Progress
from ._common import (
    CommandError,
    Commands,
    add_db_argument,
    add_key_argument,
    display_path,
    open_store,
    parse_when,
)

__all__ = ["register", "run"]


def register(commands: Commands) -> None:
    """Add the ``prune`` command."""
    parser = commands.add_parser(
        "prune",
        help="move events older than a date into an archive store",
        description=(
            "Move the rows older than --before, from the start of the chain, into --archive: "
            "an audit store file of its own (verify ARCHIVE checks it alone; pruning again "
            "into it appends). The store keeps a checkpoint of the last row moved, so verify "
            "still passes on it and still catches changes to what remains. Their hashes are "
            "checked as they are copied: a broken chain is not pruned."
        ),
    )
    add_db_argument(parser)
    parser.add_argument("--before", metavar="WHEN", type=parse_when, required=True,
                        help="prune events older than this: an age (90d, 12w) or a date")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--archive", metavar="FILE", help="the archive store to move them to")
    where.add_argument("--no-archive", action="store_true",
                       help="delete them without keeping them anywhere")
    add_key_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Prune and print what was done."""
    bars: dict[str, Progress] = {}

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.close()
            bar = bars[phase] = Progress(phase, total)
        bar.update(done)

    with open_store(args.db, readonly=False, key_file=args.key_file) as store:
        try:
            result = store.prune(before=args.before, archive=args.archive, progress=progress)
        finally:
            for bar in bars.values():
                bar.close()
    name = display_path(args.db)
    when = args.before.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    if not result.rows:
        print(f"{name}: no rows older than {when} at the start of the chain; nothing pruned")
    else:
        where = (f"moved to {display_path(args.archive)}" if args.archive
                 else "deleted (no archive)")
        print(f"{name}: rows {result.first:,}-{result.last:,} ({result.rows:,} events older "
              f"than {when}) {where}; the chain now starts after row {result.last:,}")
    if result.kept_older:
        print(f"{result.kept_older:,} older events stay: a newer event comes before them in "
              "the chain, and rows leave only from its start")
    print(f"checkpoint (keep it with the archive): {result.checkpoint}")
    if args.archive is None and not args.no_archive:  # pragma: no cover - argparse requires one
        raise CommandError("give --archive FILE or --no-archive")
    return 0
