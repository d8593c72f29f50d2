"""``outbox [DB] status|dead|retry``: inspect a durable outbox and re-send its dead letters."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from .._progress import Progress
from ..delivery.outbox import Outbox
from ._common import CommandError, Commands, page_size
from ._table import show_value

__all__ = ["DEFAULT_OUTBOX", "register", "run"]

DEFAULT_OUTBOX = "audit-outbox.db"
_ACTIONS = ("status", "dead", "retry")


def register(commands: Commands) -> None:
    """Add the ``outbox`` command."""
    parser = commands.add_parser(
        "outbox",
        usage="%(prog)s [DB] {status,dead,retry} [options]",
        help="show a delivery outbox, list its dead letters, re-send them",
        description=(
            "status: pending and dead counts, delivered so far, age of the oldest pending "
            "event. dead: the events the server refused for good, with its message. "
            "retry: move dead letters back to pending (after a fix); with --send, deliver "
            "them now (key from --key or WORKOS_API_KEY)."
        ),
    )
    parser.add_argument("words", nargs="+", metavar="DB ACTION",
                        help=f"outbox file (default {DEFAULT_OUTBOX}) and one of "
                             f"{', '.join(_ACTIONS)}")
    parser.add_argument("--limit", metavar="N", type=page_size, default=20,
                        help="dead: at most N letters (default 20)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--send", action="store_true",
                        help="retry: deliver the pending events now and wait for them")
    parser.add_argument("--key", help="retry --send: the WorkOS API key (default WORKOS_API_KEY)")
    parser.add_argument("--base-url", default="https://api.workos.com",
                        help="retry --send: the WorkOS API (default https://api.workos.com)")
    parser.add_argument("--api", choices=("events", "audit_logs"), default="events",
                        help="retry --send: which WorkOS API the events go to")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="retry --send: give up waiting after this long (default 60)")
    parser.set_defaults(run=run)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 172800:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _open(path: str, *, write: bool) -> Outbox:
    """The outbox at ``path``: read-only to look at it; checked read-only first to change it."""
    if not Path(path).is_file():
        raise CommandError(f"no outbox at {path!r} (it is created by WorkOS(..., outbox=PATH))")
    box = Outbox(path, read_only=True)  # refuses a file that is not an outbox, writing nothing
    if not write:
        return box
    box.close()
    return Outbox(path)


def run(args: argparse.Namespace) -> int:
    """Run the outbox action."""
    words = list(args.words)
    if len(words) > 2 or words[-1] not in _ACTIONS:
        raise CommandError(f"expected [DB] {'|'.join(_ACTIONS)} (got {' '.join(words)!r})")
    action = words[-1]
    path = words[0] if len(words) == 2 else DEFAULT_OUTBOX
    with _open(path, write=action == "retry") as box:
        if action == "status":
            return _status(box, path, args.json)
        if action == "dead":
            return _dead(box, args.limit, args.json)
        moved = box.retry_dead()
    print(f"{path}: {moved} dead letter(s) moved back to pending")
    if args.send:
        return _send(path, args)
    if moved:
        print("they are sent the next time a sender with this outbox runs (or use --send)")
    return 0


def _status(box: Outbox, path: str, as_json: bool) -> int:
    status = box.status()
    if as_json:
        print(json.dumps({"pending": status.pending, "dead": status.dead,
                          "delivered": status.delivered,
                          "oldest_pending_age": status.oldest_pending_age}))
    else:
        print(f"{path}: {status.pending} pending (oldest {_age(status.oldest_pending_age)}), "
              f"{status.dead} dead, {status.delivered} delivered")
    return 0


def _dead(box: Outbox, limit: int, as_json: bool) -> int:
    letters = box.dead_letters(limit)
    if as_json:
        for letter in letters:
            print(json.dumps({"event": letter.event.to_record(), "status": letter.status,
                              "message": letter.message,
                              "failed_at": letter.failed_at.isoformat()}, ensure_ascii=False))
        return 0
    if not letters:
        print("no dead letters")
        return 0
    for letter in letters:
        event = letter.event
        print(f"{letter.failed_at:%Y-%m-%d %H:%M:%S}  HTTP {letter.status or '-'}  "
              f"{show_value(event.action)}  actor {show_value(event.actor_id)}  "
              f"target {show_value(event.target_id)}  key {event.idempotency_key}")
        print(f"    {show_value(letter.message, 200)}")
    return 0


def _send(path: str, args: argparse.Namespace) -> int:
    from ..senders.workos import WorkOS

    # the outcome is reported below as one line; the engine's warnings would repeat it
    logging.getLogger("audit_instrument").addHandler(logging.NullHandler())
    key = args.key or os.environ.get("WORKOS_API_KEY")
    workos = WorkOS(key, base_url=args.base_url, api=args.api, outbox=path, atexit_timeout=0)
    outbox = workos.outbox
    assert outbox is not None
    total = outbox.status().pending
    deadline = time.monotonic() + args.timeout
    with Progress("sending", total) as progress:
        while True:
            left = workos.flush(min(0.5, max(0.0, deadline - time.monotonic())))
            progress.update(total - left)
            if not left or time.monotonic() >= deadline:
                break
    workos.shutdown(5)
    with Outbox(path, read_only=True) as box:
        status = box.status()
    print(f"{path}: {status.pending} pending, {status.dead} dead after sending")
    if status.pending or status.dead:
        print(f"{args.prog} outbox: error: {status.pending + status.dead} event(s) not delivered "
              f"(see: {args.prog} outbox {path} dead)", file=sys.stderr)
        return 1
    return 0
