"""Model capture on PostgreSQL: a bulk update's events written inside the caller's transaction.

Run:  python benchmarks/bench_orm_postgres.py [--rows 10000] [--rounds 5]

Starts a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``, fsync on) on
127.0.0.1 with a table of ``--rows`` rows of an audited SQLAlchemy model
(psycopg), and times one transaction, ``UPDATE … SET count = count + 1`` on
every row through a ``Session`` and its ``COMMIT``, in four variants:

- bare statement: no sender, so no capture;
- held: capture with a ``MemorySender``: the rows are read before and after
  in the transaction, one event per row is built and handed on at the
  commit (capture's own cost, as in ``bench_orm.py``);
- in_transaction: the same inside ``store.in_transaction(session)`` of a
  PostgreSQL store: the events are written in the transaction as pending
  rows, 1,000 to an ``INSERT`` (``written_together``);
- in_transaction, one INSERT per event: the same with ``written_together``
  turned off, as events emitted one at a time are written (the baseline of
  the batching).

Variants take turns in an order that rotates each round; round 0 is a
warm-up; medians over the counted rounds. After an in_transaction run the
store is left to chain its rows and hand the events on to a
``MemorySender`` (not timed), so its thread does not share the CPU with the
next run.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import psycopg
from sqlalchemy import Engine, create_engine, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from support.postgres import Cluster, find_bindir

from audit_instrument import audit_actor, configure
from audit_instrument.integrations import _emission
from audit_instrument.integrations.sqlalchemy import audit_model
from audit_instrument.senders import MemorySender
from audit_instrument.store import AuditStore


class Base(DeclarativeBase):
    pass


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]
    count: Mapped[int]


audit_model(Document, target_name="title")


def _bulk(session: Session) -> None:
    session.execute(update(Document).values(count=Document.count + 1))
    session.commit()


@contextlib.contextmanager
def _one_by_one() -> Iterator[None]:
    """``written_together`` off: every event its own ``INSERT``."""
    together = _emission.written_together
    _emission.written_together = contextlib.nullcontext  # type: ignore[assignment]
    try:
        yield
    finally:
        _emission.written_together = together


def _run(engine: Engine, store: AuditStore, variant: str, rows: int) -> float:
    memory = MemorySender()  # in_transaction: the store hands the events on to it
    if variant == "bare statement":
        configure()
    elif variant == "held":
        configure(memory)
    else:
        configure(store, memory)
    batching = _one_by_one() if variant.endswith("per event") else contextlib.nullcontext()
    with audit_actor(("user_1", "user@example.com"), group="organization_1"), batching, \
            Session(engine) as session:
        session.connection()  # connected before timing
        block = (store.in_transaction(session) if variant.startswith("in_transaction")
                 else contextlib.nullcontext())
        started = time.perf_counter()
        with block:
            _bulk(session)
        elapsed = time.perf_counter() - started
    if variant.startswith("in_transaction"):
        _wait(lambda: len(memory.events) >= rows, f"{variant}: {rows} events handed on")
    configure()
    if variant != "bare statement" and len(memory.events) != rows:
        sys.exit(f"{variant}: expected {rows} events, got {len(memory.events)}")
    return elapsed


def _wait(condition: Callable[[], bool], what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.05)


def bench(cluster: Cluster, rows: int, rounds: int) -> None:
    engine = create_engine(cluster.url().replace("postgresql://", "postgresql+psycopg://"))
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(Document.__table__.insert(), [  # type: ignore[attr-defined]
            {"id": i, "title": f"Document {i}", "body": "What time is the event?" * 4,
             "count": 0} for i in range(1, rows + 1)])
    store = AuditStore(cluster.url(schema="audit"))
    variants = ["bare statement", "held", "in_transaction",
                "in_transaction, one INSERT per event"]
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(rounds + 1):
        shift = round_ % len(variants)
        for name in variants[shift:] + variants[:shift]:
            elapsed = _run(engine, store, name, rows)
            if round_:
                times[name].append(elapsed)
    store.close()
    engine.dispose()
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    print(f"SQLAlchemy: update {rows:,} rows and commit, PostgreSQL (fsync on); "
          f"{rounds} rounds (+1 warm-up), medians")
    print(f"{'variant':38} {'ms':>8} {'x held':>8}")
    for name in variants:
        print(f"{name:38} {medians[name]:8.1f} {medians[name] / medians['held']:7.2f}x")
    batched, single = medians["in_transaction"], medians["in_transaction, one INSERT per event"]
    print(f"in_transaction, written together / one INSERT per event: {batched / single:.2f}x; "
          f"added to the held variant: {batched - medians['held']:.0f} ms together, "
          f"{single - medians['held']:.0f} ms one by one")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("audit_instrument").setLevel(logging.ERROR)  # "no sender": the bare run
    bindir = find_bindir()
    if bindir is None:
        sys.exit("bench_orm_postgres: PostgreSQL binaries not found (apt-get install postgresql)")
    cluster = Cluster(bindir, fsync=True).start()
    try:
        cluster.execute("CREATE DATABASE audit_tests", database="postgres")
        version = cluster.execute("SHOW server_version")[0][0]
        print(f"PostgreSQL {version} (fsync on), psycopg {psycopg.__version__}, Python "
              f"{sys.version.split()[0]}", flush=True)
        bench(cluster, args.rows, args.rounds)
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
