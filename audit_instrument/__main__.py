"""``python -m audit_instrument``: the command line (see :mod:`audit_instrument.cli`)."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main(prog="python -m audit_instrument"))
