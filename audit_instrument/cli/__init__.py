"""The command line: ``python -m audit_instrument …`` or ``audit-instrument …``.

Each subcommand is a public module of this package with a
``register(commands)`` function that adds its parser to ``commands`` (an
argparse sub-parsers object) and sets ``run=<function(args) -> int>`` as a
default. Modules are found by listing the package, so adding a command is
adding a file::

    # audit_instrument/cli/hello.py
    def register(commands: Commands) -> None:
        parser = commands.add_parser("hello", help="say hello")
        parser.set_defaults(run=lambda args: print("hello") or 0)

User mistakes (a missing file, a bad filter value) are one line on stderr
and exit status 2; ``CommandError(message, code)`` raised from ``run`` does
that, and so does any :class:`~audit_instrument.AuditConfigError` or
:class:`~audit_instrument.AuditValidationError`.

>>> from audit_instrument.cli import main
>>> main(["verify", "audit.db"])          # doctest: +SKIP
audit.db: intact, 7 rows (head 3f9a6c1e2b7d)
0
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
from collections.abc import Sequence

from ..errors import AuditConfigError, AuditError, AuditValidationError
from ._common import CommandError, Commands, Parser, fail

__all__ = ["CommandError", "Commands", "build_parser", "main"]

PROG = "audit-instrument"
_ORDER = (
    "demo", "events", "serve", "export", "verify", "checkpoint", "prune", "outbox", "send",
)


def _command_modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def build_parser(prog: str = PROG) -> Parser:
    """The parser with every subcommand module registered."""
    parser = Parser(
        prog=prog,
        description="Record, inspect and verify audit events (audit_instrument).",
        epilog=f"Start with:  {prog} demo",
    )
    commands = parser.add_subparsers(
        title="commands", dest="command", metavar="COMMAND", required=True
    )
    for name in _command_modules():
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = PROG) -> int:
    """Run one command; return its exit status (0 ok, 1 failed check, 2 user error)."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    args.prog = prog
    name = f"{prog} {args.command}"
    try:
        status: int = args.run(args)
        sys.stdout.flush()
    except CommandError as error:
        fail(name, str(error))
        return error.code
    except (AuditConfigError, AuditValidationError) as error:
        fail(name, str(error))
        return 2
    except AuditError as error:
        fail(name, str(error))
        return 1
    except KeyboardInterrupt:
        fail(name, "interrupted")
        return 130
    except BrokenPipeError:  # e.g. `events | head`: the reader left; stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return status
