"""``workos-export``: create a WorkOS audit-log export and download its CSV.

::

    python -m audit_instrument workos-export --org org_1 --from 2026-01-01 --to 2026-02-01 \\
        [--action user.login ...] [--actor-name NAME ...] [--actor-id ID ...] [--target TYPE ...] \\
        [-o january.csv]
    python -m audit_instrument workos-export --id audit_log_export_01H... -o january.csv
    python -m audit_instrument workos-export --org org_1 --from 7d --create-only

Waits until WorkOS has the export ready, then streams the CSV with a progress
line on a terminal. Exit status 0 when the file is written, 1 when WorkOS
refused or the export failed, 2 for a usage mistake.
"""

from __future__ import annotations

import argparse
import logging
import os
from datetime import UTC, datetime

from ._common import CommandError, Commands, display_path, parse_when

__all__ = ["register", "run"]


def register(commands: Commands) -> None:
    """Add the ``workos-export`` command."""
    parser = commands.add_parser(
        "workos-export",
        help="create a WorkOS audit-log export and download its CSV",
        description="Create an audit-log export of one organization's events in WorkOS (or "
                    "take an existing one with --id), wait until it is ready and download the "
                    "CSV. The API key goes to WorkOS only, never to the download host.",
    )
    parser.add_argument("--key", help="WorkOS API key (default: the WORKOS_API_KEY variable)")
    parser.add_argument("--base-url", default="https://api.workos.com",
                        help="WorkOS API base URL (default https://api.workos.com)")
    parser.add_argument("--id", dest="export_id", metavar="EXPORT_ID",
                        help="download this existing export instead of creating one")
    parser.add_argument("--org", dest="organization_id", metavar="ORGANIZATION_ID",
                        help="the organization whose events to export")
    parser.add_argument("--from", dest="range_start", type=parse_when, metavar="WHEN",
                        help="start: a date/time (2026-01-01, 2026-01-01T12:00Z) or an age "
                             "(7d, 12h)")
    parser.add_argument("--to", dest="range_end", type=parse_when, metavar="WHEN",
                        help="end, as --from (default: now)")
    parser.add_argument("--action", dest="actions", action="append", metavar="ACTION",
                        help="only this action (repeatable)")
    parser.add_argument("--actor-name", dest="actor_names", action="append", metavar="NAME",
                        help="only this actor name (repeatable)")
    parser.add_argument("--actor-id", dest="actor_ids", action="append", metavar="ID",
                        help="only this actor id (repeatable)")
    parser.add_argument("--target", dest="targets", action="append", metavar="TYPE",
                        help="only this target type (repeatable)")
    parser.add_argument("-o", "--output", metavar="PATH",
                        help="where to write the CSV (default: EXPORT_ID.csv)")
    parser.add_argument("--create-only", action="store_true",
                        help="create the export, print its id and stop")
    parser.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS",
                        help="how long to wait for the export to be ready (default 600)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Create (or take) the export, wait for it, download it."""
    from ..senders.workos import WorkOS

    logging.getLogger("audit_instrument").addHandler(logging.NullHandler())
    key = args.key or os.environ.get("WORKOS_API_KEY")
    if args.export_id and (args.organization_id or args.range_start):
        raise CommandError("give --id, or --org with --from, not both")
    if not args.export_id and not (args.organization_id and args.range_start):
        raise CommandError("give --org and --from (and optionally --to), or --id")
    if args.export_id and args.create_only:
        raise CommandError("--create-only creates an export: it does not go with --id")
    workos = WorkOS(key, base_url=args.base_url, atexit_timeout=0)
    try:
        export_id = args.export_id
        if not export_id:
            export = workos.create_export(
                args.organization_id, args.range_start,
                args.range_end or datetime.now(UTC), actions=args.actions,
                actor_names=args.actor_names, actor_ids=args.actor_ids, targets=args.targets)
            export_id = export.id
            if args.create_only:
                print(export_id)
                return 0
        output = args.output or f"{export_id}.csv"
        path = workos.download_export(export_id, output, timeout=args.timeout)
    finally:
        workos.shutdown(0)
    size = path.stat().st_size
    print(f"wrote {display_path(path)} ({size:,} bytes) from export {export_id}")
    return 0
