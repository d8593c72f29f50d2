"""``verify [DB]``: check the store's hash chain; exit 0 if intact, 1 naming the first bad row."""

from __future__ import annotations

import argparse
import sys

from ._common import Commands, add_db_argument, open_store
from ._progress import Progress

__all__ = ["register", "run"]


def register(commands: Commands) -> None:
    """Add the ``verify`` command."""
    parser = commands.add_parser(
        "verify",
        help="check the hash chain of an audit store",
        description=(
            "Walk every row of the store and check its hash chain. Exit status 0 "
            "if intact, 1 naming the first row that was edited, deleted or moved."
        ),
    )
    add_db_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Verify ``args.db`` and print the outcome."""
    with open_store(args.db) as store:
        head = store.head()
        with Progress("verifying", head.seq) as progress:
            result = store.verify(progress=progress.update)
    if result.ok:
        print(f"{args.db}: intact, {result.rows} rows (head {head.hash[:12]})")
        return 0
    print(f"{args.db}: NOT intact: {result}", file=sys.stderr)
    return 1
