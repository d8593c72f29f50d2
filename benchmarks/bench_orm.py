"""Model capture: a bulk update with capture beside the unit of work, and a Django save()
with capture beside the same save with django-auditlog 3.x.

Run:  python benchmarks/bench_orm.py [--rows 10000] [--saves 400] [--rounds 5]

1. SQLAlchemy, a SQLite file (WAL), ``--rows`` rows of an audited model, each
   variant on a fresh copy of the same file, variants interleaved over rounds:

   - bare statement: ``UPDATE … SET count = count + 1``, no sender (no capture);
   - bulk + capture: the same statement with a sender: the rows are read
     before and after in the same transaction, one event per row is built
     at the statement and handed to the sender at commit;
   - unit of work: load every row, change it, flush and commit, no sender;
   - unit of work + capture: the same with a sender.

   The sender is a ``MemorySender`` (so the figures are capture's cost, not
   a destination's). The target: bulk + capture <= 0.75x the unit of work
   (without capture, the stricter of the two; the ratio to the unit of work
   with capture is printed too).

2. Django, a SQLite file (WAL, ``synchronous=NORMAL``, like the store):
   three models of the same shape (a title, a body, a counter, a
   timestamp), one saved plainly, one registered with django-auditlog
   (which writes a ``LogEntry`` row per change into the same database), one
   with ``audit_model`` and an ``AuditStore`` sender (a row per change in
   the local store, WAL, ``synchronous=NORMAL``). Each ``save()`` changes
   the counter; an actor is set for both libraries. The variants take turns
   of 50 saves; the median save of each variant per round is compared, and
   what a library adds is its median minus the plain one. The target: what
   ``audit_model`` adds <= 0.5x what django-auditlog adds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from audit_instrument import audit_actor, configure
from audit_instrument.integrations.sqlalchemy import audit_model
from audit_instrument.senders import MemorySender


# -- 1. SQLAlchemy --------------------------------------------------------------------------------
class Base(DeclarativeBase):
    pass


class Document(Base):
    __tablename__ = "documents"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]
    count: Mapped[int]


audit_model(Document, target_name="title")


def _template(directory: Path, rows: int) -> Path:
    path = directory / "template.db"
    engine = create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.exec_driver_sql("PRAGMA journal_mode = WAL")
        connection.execute(Document.__table__.insert(), [  # type: ignore[attr-defined]
            {"id": i, "title": f"Document {i}", "body": "What time is the event?" * 4,
             "count": 0} for i in range(1, rows + 1)])
    engine.dispose()
    return path


def _bulk(session: Session) -> None:
    session.execute(update(Document).values(count=Document.count + 1))
    session.commit()


def _unit_of_work(session: Session) -> None:
    for document in session.scalars(select(Document)).all():
        document.count += 1
    session.commit()


def _timed_change(template: Path, work: Callable[[Session], None], capture: bool,
                  rows: int) -> float:
    path = template.with_name("run.db")
    shutil.copyfile(template, path)
    engine = create_engine(f"sqlite:///{path}")
    memory = MemorySender()
    configure(memory) if capture else configure()
    with audit_actor(("user_1", "user@example.com"), group="organization_1"), \
            Session(engine) as session:
        session.execute(select(Document.id).limit(1)).all()  # connect before timing
        started = time.perf_counter()
        work(session)
        elapsed = time.perf_counter() - started
    configure()
    engine.dispose()
    if capture and len(memory.events) != rows:
        sys.exit(f"expected {rows} events, got {len(memory.events)}")
    return elapsed


def bench_sqlalchemy(rows: int, rounds: int) -> None:
    variants: list[tuple[str, Callable[[Session], None], bool]] = [
        ("bare statement", _bulk, False),
        ("bulk + capture", _bulk, True),
        ("unit of work", _unit_of_work, False),
        ("unit of work + capture", _unit_of_work, True),
    ]
    times: dict[str, list[float]] = {name: [] for name, _, _ in variants}
    with tempfile.TemporaryDirectory(prefix="bench-orm-") as directory:
        template = _template(Path(directory), rows)
        for round_ in range(rounds + 1):
            order = variants[round_ % 4:] + variants[:round_ % 4]
            for name, work, capture in order:
                elapsed = _timed_change(template, work, capture, rows)
                if round_:  # round 0 warms up
                    times[name].append(elapsed)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"SQLAlchemy: update {rows:,} rows, SQLite file (WAL); {rounds} rounds (+1 warm-up), "
          f"medians")
    print(f"{'variant':<26}{'ms':>9}{'x unit of work':>16}{'x uow + capture':>17}")
    for name in times:
        print(f"{name:<26}{median[name] * 1000:>9.1f}"
              f"{median[name] / median['unit of work']:>15.2f}x"
              f"{median[name] / median['unit of work + capture']:>16.2f}x")
    ratio = median["bulk + capture"] / median["unit of work"]
    print(f"bulk + capture / unit of work: {ratio:.2f}x (target <= 0.75x)")


# -- 2. Django ------------------------------------------------------------------------------------
def _django(directory: Path) -> dict[str, Any]:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "auditlog"],
        DATABASES={"default": {
            "ENGINE": "django.db.backends.sqlite3", "NAME": str(directory / "app.db"),
            "OPTIONS": {"init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"},
        }},
        USE_TZ=True,
        SECRET_KEY="bench",
    )
    django.setup()
    from django.core.management import call_command
    from django.db import connection, models

    call_command("migrate", verbosity=0)

    def model(name: str) -> Any:
        meta = type("Meta", (), {"app_label": "bench"})
        return type(name, (models.Model,), {
            "__module__": __name__, "Meta": meta,
            "title": models.CharField(max_length=200),
            "body": models.TextField(),
            "count": models.IntegerField(default=0),
            "created": models.DateTimeField(auto_now_add=True),
            "__str__": lambda self: self.title,
        })

    made = {"plain": model("Plain"), "django-auditlog": model("Logged"),
            "audit_model": model("Audited")}
    with connection.schema_editor() as editor:
        for cls in made.values():
            editor.create_model(cls)
    return made


def bench_django(saves: int, rounds: int) -> None:
    from audit_instrument import AuditStore
    from audit_instrument.integrations.django import audit_model as audit_django_model

    with tempfile.TemporaryDirectory(prefix="bench-orm-django-") as name:
        directory = Path(name)
        made = _django(directory)
        from auditlog.context import set_actor as auditlog_actor
        from auditlog.registry import auditlog
        from django.contrib.auth.models import User

        auditlog.register(made["django-auditlog"])
        audit_django_model(made["audit_model"])
        store = AuditStore(directory / "audit.db")
        configure(store)
        user = User.objects.create(username="ada", email="ada@example.com")
        per_round: dict[str, list[float]] = {key: [] for key in made}
        turn = 50
        with audit_actor(user, group="organization_1"), auditlog_actor(user):
            objects = {key: cls.objects.create(title="Hello", body="What time is the event?")
                       for key, cls in made.items()}
            for round_ in range(rounds + 1):
                samples: dict[str, list[float]] = {key: [] for key in made}
                keys = list(made)
                for step in range(saves // turn):
                    for key in keys[step % 3:] + keys[:step % 3]:
                        obj = objects[key]
                        for _ in range(turn):
                            obj.count += 1
                            started = time.perf_counter()
                            obj.save()
                            samples[key].append(time.perf_counter() - started)
                if round_:
                    for key, values in samples.items():
                        per_round[key].append(statistics.median(values))
        configure()
        stored = store.count()
        store.close()
        from auditlog.models import LogEntry

        logged = LogEntry.objects.count()
    plain = statistics.median(per_round["plain"])
    added = {key: statistics.median([v - p for v, p in zip(values, per_round["plain"])])
             for key, values in per_round.items()}
    print(f"\nDjango: one save() of a 4-field model, SQLite file (WAL, NORMAL); {saves} saves "
          f"per variant and round in turns of {turn}; {rounds} rounds (+1 warm-up)")
    print(f"{'variant':<18}{'median save, us':>17}{'added, us':>11}")
    for key, values in per_round.items():
        print(f"{key:<18}{statistics.median(values) * 1e6:>17.0f}"
              f"{added[key] * 1e6 if key != 'plain' else 0:>11.0f}")
    print(f"rows written: django-auditlog {logged:,} LogEntry, audit_model {stored:,} store rows")
    ratio = added["audit_model"] / added["django-auditlog"]
    print(f"added by audit_model / added by django-auditlog: {ratio:.2f}x (target <= 0.5x); "
          f"plain save {plain * 1e6:.0f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--saves", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import logging
    import sqlite3

    # the variants without a sender would each log that events are being discarded
    logging.getLogger("audit_instrument").setLevel(logging.ERROR)
    print(f"SQLite {sqlite3.sqlite_version}, Python {sys.version.split()[0]}")
    bench_sqlalchemy(args.rows, args.rounds)
    bench_django(args.saves, args.rounds)


if __name__ == "__main__":
    main()
