"""``send --key … [--base-url …]``: send one test event to WorkOS and print the outcome."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from ..event import ActionType, AuditEvent
from ._common import Commands

__all__ = ["register", "run"]


def register(commands: Commands) -> None:
    """Add the ``send`` command."""
    parser = commands.add_parser(
        "send",
        help="send one test event to WorkOS and print the outcome",
        description="Send one test event (action audit_instrument.test) to check a key and "
                    "the connection. Exit status 0 if accepted, 1 if not.",
    )
    parser.add_argument("--key", help="WorkOS API key (default: the WORKOS_API_KEY variable)")
    parser.add_argument("--base-url", default="https://api.workos.com",
                        help="WorkOS API base URL (default https://api.workos.com)")
    parser.add_argument("--api", choices=("events", "audit_logs"), default="events",
                        help="the legacy POST /events format (default) or POST /audit_logs/events")
    parser.add_argument("--group", default="audit-instrument-test",
                        help="group / organization id of the test event")
    parser.add_argument("--timeout", type=float, default=15.0, metavar="SECONDS",
                        help="give up after this long, retries included (default 15)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Send the test event and report."""
    from ..errors import DeliveryError
    from ..senders.workos import WorkOS

    # the outcome is reported below as one line; the engine's warnings would repeat it
    logging.getLogger("audit_instrument").addHandler(logging.NullHandler())
    key = args.key or os.environ.get("WORKOS_API_KEY")
    workos = WorkOS(key, base_url=args.base_url, api=args.api, deadline=args.timeout,
                    timeout=min(10.0, args.timeout), atexit_timeout=0)
    event = AuditEvent(
        group=args.group, action="audit_instrument.test", action_type=ActionType.CREATE,
        actor_name="audit-instrument CLI", actor_id="audit-instrument-cli",
        target_name="connection check", target_id="audit-instrument-test",
        metadata={"sent_by": "audit-instrument send"},
    )
    started = time.monotonic()
    try:
        workos.create_event(event).result(timeout=args.timeout + 5)
    except (DeliveryError, TimeoutError) as error:
        print(f"{args.prog} send: error: not accepted by {workos.base_url}: {error}",
              file=sys.stderr)
        return 1
    finally:
        workos.shutdown(1)
    took = (time.monotonic() - started) * 1000
    print(f"accepted by {workos.base_url} ({args.api} API) in {took:.0f} ms; "
          f"idempotency key {event.idempotency_key}")
    return 0
