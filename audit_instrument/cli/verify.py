"""``verify [DB] [--against CHECKPOINT]``: check the file and the hash chain of a store.

Exit 0 if intact, 1 naming the first problem, 2 for a usage error (a keyed
store without its key, a malformed checkpoint).
"""

from __future__ import annotations

import argparse
import sys

from .._progress import Progress
from ._common import Commands, add_db_argument, add_key_argument, display_path, open_store

__all__ = ["register", "run"]


def register(commands: Commands) -> None:
    """Add the ``verify`` command."""
    parser = commands.add_parser(
        "verify",
        help="check the file and the hash chain of an audit store",
        description=(
            "Run the database's checks (SQLite's integrity check; the schema), then walk "
            "every row of the store and check its hash chain. Exit status 0 if intact, 1 "
            "naming the first problem (a row edited, deleted or moved, a damaged file, a dropped "
            "index). A keyed store needs its key (AUDIT_STORE_KEY or --key-file)."
        ),
    )
    add_db_argument(parser)
    parser.add_argument(
        "--against", metavar="CHECKPOINT",
        help="also prove that no row up to this checkpoint (from the checkpoint command) "
             "was cut off or rewritten",
    )
    add_key_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Verify ``args.db`` and print the outcome."""
    with open_store(args.db, key_file=args.key_file) as store:
        head = store.head()
        with Progress("verifying", head.seq) as progress:
            result = store.verify(progress=progress.update, against=args.against)
    name = display_path(args.db)
    if result.ok:
        keyed = ", keyed chain" if result.keyed else ""
        checked = ", matches the checkpoint" if args.against else ""
        pending = f", {result.pending} pending (not chained yet)" if result.pending else ""
        print(f"{name}: intact, {result.rows} rows{keyed}{checked}{pending} "
              f"(head {head.hash[:12]})")
        return 0
    print(f"{name}: NOT intact: {result}", file=sys.stderr)
    return 1
