"""Audit events that commit or roll back with the caller's transaction (PostgreSQL):
psycopg, SQLAlchemy and Django connections; other senders hear only of committed events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from support.events import make_event
from support.postgres import PgSchema
from support.waiting import wait_for

from audit_instrument import (
    AuditConfigError,
    AuditEvent,
    DeliveryError,
    audit,
    audit_actor,
    configure,
    emit,
    signals,
)
from audit_instrument.store import AuditStore
from audit_instrument.testing import CapturedEvents, capture_events

KEY = "postgres-test-key-0123456789abcdef"


@pytest.fixture
def store(pg: PgSchema) -> Iterator[AuditStore]:
    """A store configured as the sender, so instrumented code emits into it."""
    opened = AuditStore(pg.url)
    configure(opened)
    yield opened
    configure()
    opened.close()


@pytest.fixture
def others() -> Iterator[CapturedEvents]:
    """Another sender: what it receives, and when."""
    with capture_events() as captured:
        yield captured


@pytest.fixture
def business(pg: PgSchema) -> PgSchema:
    """A business table in the test's schema beside the store's tables."""
    pg.execute("CREATE SCHEMA IF NOT EXISTS {s}")
    pg.execute("CREATE TABLE {s}.tweets (id int PRIMARY KEY, body text NOT NULL)")
    return pg


def _keys(events: list[AuditEvent]) -> set[str]:
    return {event.idempotency_key for event in events}


def _chained(store: AuditStore) -> set[str]:
    return {item.event.idempotency_key for item in store.iter_events()}


def _settled(store: AuditStore, pg: PgSchema, expected: set[str]) -> None:
    """Wait until exactly ``expected`` is chained, nothing is pending, and the store knows
    the outcome of every transaction it wrote in (so a rolled-back event would have been
    handed on by now if it ever were)."""
    transactions = store._transactions
    assert transactions is not None
    wait_for(lambda: _chained(store) == expected and not transactions._held
             and pg.execute("SELECT count(*) FROM {s}.pending") == [(0,)], timeout=15)


# -- psycopg ----------------------------------------------------------------------------


def test_psycopg_commit_stores_the_events_and_only_then_tells_the_others(
    store: AuditStore, business: PgSchema, others: CapturedEvents
) -> None:
    events = [make_event(i) for i in range(3)]
    with psycopg.connect(business.dsn) as conn:
        with store.in_transaction(conn):
            conn.execute(f'INSERT INTO "{business.schema}".tweets VALUES (5, %s)', ("hello",))
            for event in events:
                emit(event)
        # written in the open transaction: not visible outside it, nobody told yet
        assert business.execute("SELECT count(*) FROM {s}.pending") == [(0,)]
        assert conn.execute(
            f'SELECT count(*) FROM "{business.schema}".pending').fetchone() == (3,)
        assert others.events == [] and store.count() == 0
        conn.commit()
    wait_for(lambda: len(others.events) == 3)
    assert others.events == events  # in order, each once
    _settled(store, business, _keys(events))
    assert [s.seq for s in reversed(store.query().items)] == [1, 2, 3]
    result = store.verify()
    assert result.ok and result.rows == 3 and result.pending == 0


def test_psycopg_rollback_keeps_no_event_and_tells_no_one(
    store: AuditStore, business: PgSchema, others: CapturedEvents
) -> None:
    kept = make_event(0)
    with psycopg.connect(business.dsn) as conn:
        with store.in_transaction(conn):
            emit(make_event(1))
            emit(make_event(2))
        conn.rollback()
        with store.in_transaction(conn), conn.transaction():  # committed inside the block
            emit(kept)
        with pytest.raises(ZeroDivisionError), conn.transaction(), store.in_transaction(conn):
            emit(make_event(3))
            raise ZeroDivisionError  # the business call fails: all rolled back
    wait_for(lambda: others.events == [kept])
    _settled(store, business, {kept.idempotency_key})
    assert others.events == [kept] and store.verify().ok


def test_events_of_a_rolled_back_savepoint_are_dropped(
    store: AuditStore, business: PgSchema, others: CapturedEvents
) -> None:
    first, lost, last = make_event(0), make_event(1), make_event(2)
    with psycopg.connect(business.dsn) as conn, store.in_transaction(conn):
        with conn.transaction():
            emit(first)
            with pytest.raises(ValueError), conn.transaction():  # a savepoint
                emit(lost)
                raise ValueError
            emit(last)
    wait_for(lambda: len(others.events) == 2)
    _settled(store, business, _keys([first, last]))
    assert others.events == [first, last]


def test_instrumented_code_and_direct_sends_write_in_the_transaction(
    store: AuditStore, business: PgSchema, others: CapturedEvents
) -> None:
    @audit("tweet.update", "U", target=lambda tweet_id: (f"tweet_{tweet_id}", "tweet"))
    def update_tweet(conn: psycopg.Connection[Any], tweet_id: int, body: str) -> None:
        conn.execute(f'UPDATE "{business.schema}".tweets SET body = %s WHERE id = %s',
                     (body, tweet_id))

    business.execute("INSERT INTO {s}.tweets VALUES (5, 'old')")
    direct = make_event(6)  # a tweet.create
    with psycopg.connect(business.dsn) as conn:
        with audit_actor(id="user_1", name="user@email.com", group="organization_1"), \
                store.in_transaction(conn):
            update_tweet(conn, 5, "new")
            assert store.send(direct) is None  # in the transaction: no row number yet
        conn.commit()
    wait_for(lambda: store.count() == 2 and len(others.events) == 1)
    [update] = store.query(action="tweet.update").events
    assert update.target_id == "tweet_5" and update.actor_id == "user_1"
    assert others.events == [update]  # a direct send reaches only the store
    assert business.execute("SELECT body FROM {s}.tweets") == [("new",)]


def test_concurrent_transactions_that_audit_do_not_wait_for_each_other(
    store: AuditStore, business: PgSchema,
) -> None:
    """Each of 8 transactions audits, then waits for the other 7 to have audited too while
    it is still open: that can only finish if no write waits for another's commit."""
    all_audited = threading.Barrier(8, timeout=30)
    failures: list[BaseException] = []
    events = [make_event(i) for i in range(8)]

    def run(i: int) -> None:
        try:
            with psycopg.connect(business.dsn) as conn:
                with store.in_transaction(conn):
                    conn.execute(f'INSERT INTO "{business.schema}".tweets VALUES (%s, %s)',
                                 (i, "x"))
                    emit(events[i])
                all_audited.wait()  # the transaction stays open meanwhile
                conn.commit()
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert failures == []
    _settled(store, business, _keys(events))
    assert store.verify().rows == 8


def test_a_late_commit_is_chained_after_an_earlier_one(
    store: AuditStore, business: PgSchema
) -> None:
    early_written, late = make_event(0), make_event(1)
    with psycopg.connect(business.dsn) as slow, psycopg.connect(business.dsn) as fast:
        with store.in_transaction(slow):
            emit(early_written)  # its pending row comes first...
        with store.in_transaction(fast):
            emit(late)
        fast.commit()  # ...but this transaction commits first
        wait_for(lambda: store.count() == 1)
        slow.commit()
    _settled(store, business, _keys([early_written, late]))
    by_seq = [item.event for item in sorted(store.query().items, key=lambda s: s.seq)]
    assert by_seq == [late, early_written]
    assert store.verify().ok


def test_rows_are_chained_by_any_store_and_verify_counts_them_pending(pg: PgSchema) -> None:
    events = [make_event(i) for i in range(3)]
    writer = AuditStore(pg.url)
    configure(writer)
    with psycopg.connect(pg.dsn) as conn:
        with writer.in_transaction(conn):
            for event in events:
                emit(event)
        writer.close()  # the writer is gone before the transaction commits
        conn.commit()
    configure()
    with AuditStore(pg.url, readonly=True) as reader:  # a reader chains nothing
        result = reader.verify()
        assert result.ok and result.rows == 0 and result.pending == 3
        assert str(result) == "intact: 0 rows (3 pending)"
    other = AuditStore(pg.url)  # another instance, e.g. on another host, chains them
    wait_for(lambda: other.count() == 3, timeout=15)
    assert other.verify().pending == 0 and _chained(other) == _keys(events)
    other.close()


def test_keyed_store_chains_transactional_writes_with_its_key(pg: PgSchema) -> None:
    store = AuditStore(pg.url, key=KEY)
    configure(store)
    with psycopg.connect(pg.dsn) as conn:
        with store.in_transaction(conn):
            emit(make_event(0))
        conn.commit()
    store.send(make_event(1))
    wait_for(lambda: store.count() == 2)
    assert store.verify().ok and store.verify().keyed
    configure()
    store.close()


def test_refused_connections_and_stores(
    store: AuditStore, pg: PgSchema, tmp_path: Any
) -> None:
    with AuditStore(tmp_path / "audit.db") as local, pytest.raises(AuditConfigError,
                                                                   match="PostgreSQL"):
        local.in_transaction(object())
    with pytest.raises(AuditConfigError, match="takes a psycopg Connection"):
        with store.in_transaction(object()):
            pass
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        with pytest.raises(DeliveryError, match="autocommit"), store.in_transaction(conn):
            emit(make_event(0))  # would commit on its own: refused, and nothing written
    with psycopg.connect(pg.dsn) as a, psycopg.connect(pg.dsn) as b, \
            store.in_transaction(a), pytest.raises(AuditConfigError, match="nested"):
        with store.in_transaction(b):
            pass
    assert pg.execute("SELECT count(*) FROM {s}.pending") == [(0,)]


def test_a_write_that_fails_in_the_transaction_is_raised_at_the_end_of_the_block(
    store: AuditStore, pg: PgSchema, others: CapturedEvents
) -> None:
    failed: list[object] = []
    signals.event_failed.connect(lambda event, **kw: failed.append(event), weak=False)
    event = make_event(0)
    with psycopg.connect(pg.dsn) as conn:
        with pytest.raises(DeliveryError, match="could not be written"):
            with store.in_transaction(conn):
                with pytest.raises(psycopg.errors.DivisionByZero):
                    conn.execute("SELECT 1/0")  # the caller's transaction is now aborted
                emit(event)  # does not raise inside the business code...
        conn.rollback()
    assert failed == [event]  # ...but is reported, and raised when the block ends
    assert others.events == []


# -- SQLAlchemy ----------------------------------------------------------------------------


def _engine(pg: PgSchema) -> Any:
    sqlalchemy = pytest.importorskip("sqlalchemy")
    return sqlalchemy.create_engine(pg.dsn.replace("postgresql://", "postgresql+psycopg://"))


def test_sqlalchemy_connection_commit_and_rollback(
    store: AuditStore, business: PgSchema, others: CapturedEvents
) -> None:
    from sqlalchemy import text

    engine = _engine(business)
    kept, lost = make_event(0), make_event(1)
    with engine.connect() as conn:
        with store.in_transaction(conn):
            conn.execute(text(f'INSERT INTO "{business.schema}".tweets VALUES (1, :b)'),
                         {"b": "x"})
            emit(kept)
        conn.commit()
        with store.in_transaction(conn):
            emit(lost)
        conn.rollback()
    with engine.begin() as conn, store.in_transaction(conn):  # the engine.begin() pattern
        emit(also := make_event(2))
    wait_for(lambda: len(others.events) == 2)
    _settled(store, business, _keys([kept, also]))
    assert others.events == [kept, also]
    engine.dispose()


def test_sqlalchemy_session_commit_and_rollback(
    store: AuditStore, business: PgSchema, others: CapturedEvents
) -> None:
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    engine = _engine(business)
    kept, lost = make_event(0), make_event(1)
    with Session(engine) as session:
        with store.in_transaction(session):
            session.execute(text(f'INSERT INTO "{business.schema}".tweets VALUES (1, :b)'),
                            {"b": "x"})
            emit(kept)
        session.commit()
        with store.in_transaction(session):
            emit(lost)
        session.rollback()
    wait_for(lambda: len(others.events) == 1)
    _settled(store, business, _keys([kept]))
    assert others.events == [kept]
    assert business.execute("SELECT count(*) FROM {s}.tweets") == [(1,)]
    engine.dispose()


# -- Django ---------------------------------------------------------------------------------


@pytest.fixture
def django_pg(business: PgSchema) -> Iterator[Any]:
    """Django's ``connections["audit_pg"]``: the PostgreSQL backend on the test database."""
    import support.django_site  # noqa: F401  (configures Django)
    from django.conf import settings
    from django.db import connections

    settings.DATABASES["audit_pg"] = {
        "ENGINE": "django.db.backends.postgresql", "NAME": "audit_tests", "USER": "postgres",
        "HOST": "127.0.0.1", "PORT": str(business.cluster.port),
    }
    connections.configure_settings(settings.DATABASES)
    try:
        yield connections["audit_pg"]
    finally:
        connections["audit_pg"].close()
        del connections["audit_pg"]
        del settings.DATABASES["audit_pg"]


def test_django_atomic_commit_and_rollback(
    store: AuditStore, business: PgSchema, others: CapturedEvents, django_pg: Any
) -> None:
    from django.db import transaction

    kept, lost = make_event(0), make_event(1)
    with transaction.atomic(using="audit_pg"), store.in_transaction(django_pg):
        with django_pg.cursor() as cursor:
            cursor.execute(f'INSERT INTO "{business.schema}".tweets VALUES (1, %s)', ["x"])
        emit(kept)
    with pytest.raises(RuntimeError), transaction.atomic(using="audit_pg"), \
            store.in_transaction(django_pg):
        emit(lost)
        raise RuntimeError("the view failed")
    with pytest.raises(DeliveryError, match="atomic"), store.in_transaction(django_pg):
        emit(make_event(2))  # autocommit outside atomic(): refused
    wait_for(lambda: len(others.events) == 1)
    _settled(store, business, _keys([kept]))
    assert others.events == [kept]


def test_django_default_connection_proxy_is_accepted(store: AuditStore) -> None:
    import support.django_site  # noqa: F401  (configures Django)
    from django.db import connection

    # The suite's default database is SQLite: accepted as a Django connection, then
    # refused for what it is when an event is written.
    with pytest.raises(DeliveryError, match="sqlite"), store.in_transaction(connection):
        emit(make_event(0))
