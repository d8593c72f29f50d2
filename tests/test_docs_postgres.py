"""docs/postgres.md: the Python examples run as written against a real PostgreSQL server."""

from __future__ import annotations

import contextlib
import io

import pytest
from support.docs import python_blocks
from support.postgres import PgSchema
from support.waiting import wait_for

from audit_instrument import configure


def test_the_examples_of_docs_postgres_run(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocks = python_blocks("docs/postgres.md")
    assert [heading for heading, _ in blocks] == [
        "", "psycopg", "SQLAlchemy"]  # the opening example, then the transactional ones
    monkeypatch.setenv("AUDIT_DB", pg.url)
    # the examples' own tables go to the test's schema too
    monkeypatch.setenv("DATABASE_URL", f"{pg.dsn}?options=-csearch_path%3D{pg.schema}")
    namespace: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for heading, code in blocks:
            exec(compile(code, f"docs/postgres.md ({heading})", "exec"), namespace)
    assert out.getvalue().splitlines() == ["tweet.update", "intact: 1 rows"]
    store = namespace["store"]
    wait_for(lambda: store.count() == 4)  # type: ignore[attr-defined]
    assert pg.execute("SELECT body FROM {s}.tweets") == [("Newer",)]
    result = store.verify()  # type: ignore[attr-defined]
    assert result.ok and result.rows == 4
    configure()
    store.close()  # type: ignore[attr-defined]
