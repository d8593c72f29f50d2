"""docs/workos.md: every example runs against the WorkOS stand-in and prints what the page says."""

from __future__ import annotations

import doctest
from pathlib import Path

from support.workos_server import WorkOSServer

DOC = Path(__file__).parents[1] / "docs" / "workos.md"


def test_the_examples_of_docs_workos_run_as_shown(server: WorkOSServer, tmp_path: Path) -> None:
    result = doctest.testfile(
        str(DOC), module_relative=False, optionflags=doctest.ELLIPSIS,
        globs={"WORKOS_URL": server.url, "OUTBOX_PATH": str(tmp_path / "audit-outbox.db")})
    assert result.attempted >= 10
    assert result.failed == 0
    assert server.accepted_count == 2
