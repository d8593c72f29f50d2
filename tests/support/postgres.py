"""A throwaway PostgreSQL cluster for the tests, and a fresh schema per test.

The session fixture ``postgres_cluster`` runs ``initdb`` into a temporary
directory and ``pg_ctl start`` on a free port of 127.0.0.1, with its socket
in that directory (as the ``postgres`` user when the suite runs as root, since
the server refuses to run as root), and stops it when the session ends. Every
test shares it: the ``pg`` fixture gives each test a schema of its own.

Without the server binaries (``pg_ctl``/``initdb`` on ``PATH`` or under
``/usr/lib/postgresql/*/bin``) or psycopg the PostgreSQL tests are skipped
with the reason — except with ``CI=true`` in the environment, where a
missing server is a failure.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

__all__ = ["Cluster", "PgSchema", "find_bindir", "pg", "postgres_cluster"]

_DATABASE = "audit_tests"
_schemas = itertools.count(1)


def find_bindir() -> Path | None:
    """Where ``pg_ctl`` and ``initdb`` are, or ``None``."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                      key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                      else 0)
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """A PostgreSQL server of its own, in a temporary directory, on 127.0.0.1."""

    def __init__(self, bindir: Path, *, fsync: bool = False) -> None:
        self.bindir = bindir
        self.fsync = fsync  # off for the tests: a server crash is safe without it, not the OS
        self.root = Path(tempfile.mkdtemp(prefix="audit-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.port = 0
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *args: str, timeout: float = 60) -> None:
        command = [str(self.bindir / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr}\n{log}")

    def start(self) -> Cluster:
        if not self.data.exists():
            self._run("initdb", "-A", "trust", "--no-sync", "-U", "postgres", "-E", "UTF8",
                      "--locale", "C", "-D", str(self.data))
        for attempt in range(3):
            self.port = self.port or _free_port()
            try:
                self._pg_ctl_start()
                break
            except RuntimeError:
                if attempt == 2:
                    raise
                self.port = 0  # someone took the port meanwhile: another one
        return self

    def _pg_ctl_start(self) -> None:
        options = (f"-k {self.root} -c listen_addresses=127.0.0.1 -p {self.port} "
                   f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=200")
        self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data), "-l", str(self.log),
                  "-o", options)

    def restart(self) -> None:
        """Stop the server (fast: sessions are cut off) and start it again on the same port."""
        self._run("pg_ctl", "stop", "-w", "-m", "fast", "-D", str(self.data))
        self._pg_ctl_start()

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "stop", "-w", "-m", "immediate", "-D", str(self.data))
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = _DATABASE, **params: str) -> str:
        query = "&".join(f"{key}={value}" for key, value in params.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}" + (
            f"?{query}" if query else "")

    def execute(self, sql: str, params: Any = None, database: str = _DATABASE) -> list[Any]:
        """Run one statement as the superuser in its own connection (autocommit)."""
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []


@dataclass
class PgSchema:
    """One test's own schema in the shared test database."""

    cluster: Cluster
    schema: str

    @property
    def url(self) -> str:
        """The store URL of this test's schema."""
        return self.cluster.url(schema=self.schema)

    @property
    def dsn(self) -> str:
        """The database URL, for the test's own connections (psycopg, SQLAlchemy)."""
        return self.cluster.url()

    def execute(self, sql: str, params: Any = None) -> list[Any]:
        """Run SQL on the test database behind the store's back; ``{s}`` is the schema."""
        return self.cluster.execute(sql.replace("{s}", f'"{self.schema}"'), params)


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; with CI=true a missing PostgreSQL is a failure, not a skip")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A PostgreSQL server for the whole session, with an empty test database."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _missing("psycopg is not installed (pip install -e '.[test]')")
    bindir = find_bindir()
    if bindir is None:
        _missing("PostgreSQL server binaries (pg_ctl, initdb) not found: "
                 "apt-get install postgresql")
    assert bindir is not None
    cluster = Cluster(bindir).start()
    try:
        cluster.execute(f"CREATE DATABASE {_DATABASE}", database="postgres")
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg(postgres_cluster: Cluster) -> Iterator[PgSchema]:
    """A schema of this test's own; dropped afterwards."""
    schema = f"t{os.getpid()}_{next(_schemas)}"
    yield PgSchema(postgres_cluster, schema)
    try:
        postgres_cluster.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    except Exception:  # a test that stopped the server leaves its schema to the cluster's end
        pass
