"""``serve [DB] [--port 8765] [--host 127.0.0.1]``: a store's web viewer, standard library only.

Loopback by default. On another address the viewer needs an access token:
read from ``AUDIT_VIEWER_TOKEN`` or ``--token-file``, or made and printed
here. Reads are recorded in the store (``audit_log.view`` /
``audit_log.export`` by the local user or the token's holder).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from ._common import (
    CommandError,
    Commands,
    add_db_argument,
    add_key_argument,
    display_path,
    open_store,
)

__all__ = ["TOKEN_ENV", "register", "run"]

TOKEN_ENV = "AUDIT_VIEWER_TOKEN"
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,200}")


def register(commands: Commands) -> None:
    """Add the ``serve`` command."""
    parser = commands.add_parser(
        "serve",
        help="open the web viewer of an audit store",
        description=(
            "Serve the audit log viewer of a store: the events newest first with filters, "
            "each event in full, an activity chart, the hash chain's state, CSV and JSON-lines "
            "downloads and a JSON API. Loopback only by default. Every read is recorded in "
            "the store as an audit_log.view or audit_log.export event."
        ),
    )
    add_db_argument(parser)
    parser.add_argument("--port", type=int, default=8765, metavar="N",
                        help="port to listen on (default 8765; 0 picks a free one)")
    parser.add_argument(
        "--host", default="127.0.0.1", metavar="ADDRESS",
        help="address to listen on (default 127.0.0.1: this machine only); any other "
             "address needs an access token",
    )
    parser.add_argument(
        "--token-file", metavar="PATH",
        help=f"read the access token from this file (default: {TOKEN_ENV}, else a new one "
             "is made and printed)",
    )
    parser.add_argument(
        "--allow-host", action="append", default=[], metavar="NAME",
        help="also answer to this host name in the Host header (repeatable), e.g. the name "
             "other machines reach this one by",
    )
    add_key_argument(parser)
    parser.set_defaults(run=run)


def _token(args: argparse.Namespace) -> tuple[str | None, bool]:
    """The access token and whether it was made here (None on loopback without one)."""
    from ..viewer.server import is_loopback, new_token

    text: str | None = None
    if args.token_file:
        try:
            text = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, ValueError) as error:
            raise CommandError(f"{display_path(args.token_file)}: cannot read the token file "
                               f"({getattr(error, 'strerror', None) or error})") from error
    elif os.environ.get(TOKEN_ENV):
        text = os.environ[TOKEN_ENV].strip()
    if text is not None:
        if not _TOKEN.fullmatch(text):
            raise CommandError("the access token must be 16-200 characters of A-Z a-z 0-9 . _ ~ -")
        return text, False
    if is_loopback(args.host):
        return None, False
    return new_token(), True


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from ..viewer.server import is_loopback, make_server

    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port must be from 0 to 65535 (got {args.port})")
    token, made = _token(args)
    if not Path(args.db).is_file():  # never serve an empty store made by a typo
        raise CommandError(f"{display_path(args.db)}: no such audit store")
    store = open_store(args.db, readonly=False, key_file=args.key_file)
    try:
        running = make_server(store, host=args.host, port=args.port, token=token,
                              allow_hosts=args.allow_host)
    except BaseException:
        store.close()
        raise
    name = display_path(args.db)
    if is_loopback(args.host):
        reach = "loopback only: other machines cannot connect (see --host)"
    else:
        reach = "reachable from other machines; an access token is required"
    print(f"Audit log viewer of {name}, {reach}")
    if made:
        print(f"Open: {running.url}?token={token}")
    else:
        print(f"Open: {running.url}")
    print("Every read is recorded in the store as an audit_log.view event. Ctrl-C stops.",
          flush=True)
    try:
        running.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        running.close()
    return 0
