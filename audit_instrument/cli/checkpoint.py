"""``checkpoint [DB]``: print the store's chain head as a checkpoint line to keep elsewhere."""

from __future__ import annotations

import argparse

from ._common import Commands, add_db_argument, add_key_argument, open_store

__all__ = ["register", "run"]


def register(commands: Commands) -> None:
    """Add the ``checkpoint`` command."""
    parser = commands.add_parser(
        "checkpoint",
        help="print a checkpoint of the chain head, to keep outside the store",
        description=(
            "Print the chain head as one line (row, hash, time, and an HMAC on a keyed "
            "store). Keep it outside the store - a log, a ticket, another system - and "
            "later run: verify DB --against LINE, which proves that no row up to it was "
            "cut off or rewritten."
        ),
    )
    add_db_argument(parser)
    add_key_argument(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the checkpoint line."""
    with open_store(args.db, key_file=args.key_file) as store:
        print(store.checkpoint())
    return 0
