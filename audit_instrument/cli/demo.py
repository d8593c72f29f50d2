"""``demo``: run the instrumented tweet service into ./audit.db and print what was recorded."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from ..store import StoredEvent
from ._common import DEFAULT_DB, CommandError, Commands, display_path, open_store
from ._table import render

__all__ = ["register", "run"]


def register(commands: Commands) -> None:
    """Add the ``demo`` command."""
    parser = commands.add_parser(
        "demo",
        help="run an instrumented tweet service and show its audit trail",
        description=(
            "Run a small tweet service instrumented with @audit, audit_actor and "
            "with audit(...): two users post, edit and delete tweets, one login fails. "
            "Events go to the local store (--db) and a JSON-lines file (--jsonl). "
            "No account or server needed."
        ),
    )
    parser.add_argument(
        "--db", default=DEFAULT_DB, metavar="PATH", help=f"store file (default {DEFAULT_DB})"
    )
    parser.add_argument(
        "--jsonl", default="audit.jsonl", metavar="PATH",
        help="also append the events to this JSON-lines file (default audit.jsonl)",
    )
    parser.add_argument("--no-jsonl", action="store_true", help="don't write the JSON-lines file")
    parser.add_argument(
        "--json", action="store_true", help="print the events as JSON lines instead of a table"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the recorded events, oldest first."""
    from ..demo import run_demo
    from ..senders.jsonl import JsonlSender

    senders: list[object] = []
    with open_store(args.db, readonly=False) as store:
        senders.append(store)
        jsonl = None
        if not args.no_jsonl:
            try:
                jsonl = JsonlSender(args.jsonl)
            except OSError as error:
                raise CommandError(
                    f"{display_path(args.jsonl)}: cannot write ({error.strerror})"
                ) from error
            senders.append(jsonl)
        try:
            events = run_demo(*senders)
        finally:
            if jsonl is not None:
                jsonl.close()
        wanted = {event.idempotency_key for event in events}
        found: list[StoredEvent] = []
        for item in store.iter_events(page_size=max(len(wanted), 1)):
            if item.event.idempotency_key in wanted:
                found.append(item)
                if len(found) == len(wanted):
                    break
        found.sort(key=lambda item: item.seq)
        intact = store.verify().ok
    if args.json:
        for item in found:
            print(json.dumps(item.event.to_record(), ensure_ascii=False, separators=(",", ":")))
        return 0
    db = shlex.quote(display_path(args.db))
    where = display_path(args.db) + ("" if jsonl is None else f" and {display_path(args.jsonl)}")
    print(f"Recorded {len(found)} events of the tweet service demo in {where}:\n")
    print(render(found))
    prog = getattr(args, "prog", "audit-instrument")
    db_arg = "" if Path(args.db) == Path(DEFAULT_DB) else f" {db}"
    print(
        f"\nHash chain {'intact' if intact else 'BROKEN'}. Next:\n"
        f"  {prog} events{db_arg} --action tweet.update\n"
        f"  {prog} events{db_arg} --actor user_2 --json\n"
        f"  {prog} verify{db_arg}"
    )
    return 0
