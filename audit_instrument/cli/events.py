"""``events [DB] [filters] [--json]``: list stored events, newest first."""

from __future__ import annotations

import argparse
import json
import sys

from ._common import Commands, add_db_argument, open_store, page_size, parse_when
from ._table import render

__all__ = ["register", "run"]


def register(commands: Commands) -> None:
    """Add the ``events`` command."""
    parser = commands.add_parser(
        "events",
        help="list the events of an audit store, newest first",
        description=(
            "List events newest first: a table (updates show before and after side by "
            "side), or one JSON object per line with --json."
        ),
    )
    add_db_argument(parser)
    parser.add_argument("--actor", metavar="ID", help="only events by this actor id")
    parser.add_argument("--action", metavar="NAME", help="only this action, e.g. tweet.update")
    parser.add_argument(
        "--target", metavar="ID", help="only events on this target id (any of their targets)"
    )
    parser.add_argument("--group", metavar="ID", help="only events of this group (organization)")
    parser.add_argument(
        "--since", metavar="WHEN", type=parse_when,
        help="from this time on (inclusive): 2026-01-31, 2026-01-31T12:00Z, or an age: 30m, 2h, 7d",
    )
    parser.add_argument("--until", metavar="WHEN", type=parse_when, help="before this time")
    parser.add_argument(
        "--limit", metavar="N", type=page_size, default=50, help="at most N events (default 50)"
    )
    parser.add_argument("--cursor", metavar="TOKEN", help="continue after a previous page")
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per line (the full event record)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Print the matching events."""
    with open_store(args.db) as store:
        page = store.query(
            actor=args.actor, action=args.action, target=args.target, group=args.group,
            since=args.since, until=args.until, limit=args.limit, cursor=args.cursor,
        )
    out = sys.stdout
    if args.json:
        for item in page:
            record = item.event.to_record()
            out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
    elif page.items:
        out.write(render(page) + "\n")
    else:
        out.write("no events match\n")
    if page.next_cursor is not None:
        out.flush()
        print(f"(more events: add --cursor {page.next_cursor})", file=sys.stderr)
    return 0
