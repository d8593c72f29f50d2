"""SQLAlchemy model capture on a real PostgreSQL server (psycopg), both ways of recording.

Each scenario runs twice (``support.orm_postgres.MODES``): with events held
by the session's transaction and emitted at its commit, and inside
``store.in_transaction(session)``, where each change's events are written in
the transaction that made it, commit or roll back with it, and reach the
other senders once it has committed. Both must record the same events.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Column, ForeignKey, Table, create_engine, delete, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship
from support.docs import python_blocks
from support.events import make_event
from support.orm_postgres import MODES, Recording, app_schema, lock_waiters, recording
from support.postgres import Cluster, PgSchema
from support.waiting import wait_for

from audit_instrument import (
    AuditEvent,
    DeliveryError,
    audit,
    audit_actor,
    configure,
    emit,
    signals,
)
from audit_instrument.integrations.sqlalchemy import audit_model
from audit_instrument.store.postgres_transaction import written_together
from audit_instrument.testing import capture_events


class Base(DeclarativeBase):
    pass


tweet_tags = Table(
    "tweet_tags", Base.metadata,
    Column("tweet_id", ForeignKey("tweets.id", ondelete="CASCADE"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id"), primary_key=True),
)


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Tweet(Base):
    __tablename__ = "tweets"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str]
    views: Mapped[int] = mapped_column(default=0)
    api_token: Mapped[str | None]
    tags: Mapped[list[Tag]] = relationship(secondary=tweet_tags)


audit_model(Tweet)


@pytest.fixture(scope="module")
def engine(postgres_cluster: Cluster) -> Iterator[Engine]:
    """The application's tables, in a schema of their own on the test server."""
    with app_schema(postgres_cluster, "orm_sqlalchemy") as schema:
        made = create_engine(postgres_cluster.url().replace("postgresql://", "postgresql+psycopg://"),
                             connect_args={"options": f"-csearch_path={schema}"})
        Base.metadata.create_all(made)
        yield made
        made.dispose()


@pytest.fixture(autouse=True)
def _empty_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("TRUNCATE tweet_tags, tweets, tags RESTART IDENTITY"))


@pytest.fixture(params=MODES)
def rec(request: pytest.FixtureRequest, pg: PgSchema) -> Iterator[Recording]:
    """The test's changes recorded one way, then the other."""
    with recording(request.param, pg) as made:
        yield made


@pytest.fixture
def txn(pg: PgSchema) -> Iterator[Recording]:
    """The test's changes recorded inside ``store.in_transaction``."""
    with recording("in_transaction", pg) as made:
        yield made


def _shapes(events: list[AuditEvent]) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [(e.action, e.action_type, e.target_id, dict(e.metadata)) for e in events]


def _bodies(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.scalars(select(Tweet.body).order_by(Tweet.id)))


def _seed(engine: Engine, count: int) -> None:
    """Rows made behind the ORM's back (a Core insert on the table): nothing recorded."""
    with engine.begin() as conn:
        conn.execute(Tweet.__table__.insert(),
                     [{"body": f"tweet {i}", "views": i} for i in range(count)])


# -- both ways --------------------------------------------------------------------------------
def test_create_update_delete_have_before_after_and_only_changed_fields(
    engine: Engine, rec: Recording
) -> None:
    with Session(engine) as session, rec.block(session):
        tweet = Tweet(body="What time is it?", api_token="s3cret")
        session.add(tweet)
        session.flush()
        assert rec.others.events == []  # flushed, not committed
        session.commit()
        tweet.body = "What time is the event?"
        session.commit()
        tweet.views = 3
        session.commit()
        session.delete(tweet)
        session.commit()
    assert _shapes(rec.events(4)) == [
        ("tweet.create", "C", "tweet_1", {"body": "What time is it?", "views": 0,
                                          "api_token": "[masked]"}),
        ("tweet.update", "U", "tweet_1", {"body_was": "What time is it?",
                                          "body": "What time is the event?"}),
        ("tweet.update", "U", "tweet_1", {"views_was": 0, "views": 3}),
        ("tweet.delete", "D", "tweet_1", {"body_was": "What time is the event?",
                                          "views_was": 3, "api_token_was": "[masked]"}),
    ]
    assert {(e.actor_id, e.group) for e in rec.others.events} == {("user_1", "org_1")}


def test_rollback_and_savepoint_rollback_record_nothing_of_the_undone_work(
    engine: Engine, rec: Recording
) -> None:
    with Session(engine) as session, rec.block(session):
        session.add(Tweet(body="never"))
        session.flush()
        session.rollback()
        tweet = Tweet(body="kept")
        session.add(tweet)
        session.commit()
        with session.begin_nested():  # released: kept
            tweet.views = 1
        savepoint = session.begin_nested()
        tweet.body = "undone"
        session.add(Tweet(body="undone too"))
        session.flush()
        savepoint.rollback()
        with pytest.raises(RuntimeError), session.begin_nested():
            tweet.views = 5
            session.flush()
            raise RuntimeError
        session.commit()
    assert _shapes(rec.events(2)) == [
        ("tweet.create", "C", "tweet_2", {"body": "kept", "views": 0}),
        ("tweet.update", "U", "tweet_2", {"views_was": 0, "views": 1}),
    ]
    assert _bodies(engine) == ["kept"]


def test_a_bulk_update_of_50_rows_gives_50_events(engine: Engine, rec: Recording) -> None:
    _seed(engine, 60)
    with Session(engine) as session, rec.block(session):
        result: Any = session.execute(
            update(Tweet).where(Tweet.views < 50).values(views=Tweet.views + 100))
        assert result.rowcount == 50
        session.execute(delete(Tweet).where(Tweet.views.between(55, 59)))
        session.commit()
    events = rec.events(55)
    updates, deletes = events[:50], events[50:]
    assert {e.action for e in updates} == {"tweet.update"}
    assert {e.target_id for e in updates} == {f"tweet_{i + 1}" for i in range(50)}
    seventh = next(e for e in updates if e.target_id == "tweet_8")
    assert dict(seventh.metadata) == {"views_was": 7, "views": 107}  # only what changed
    assert _shapes(deletes)[0] == ("tweet.delete", "D", "tweet_56",
                                   {"body_was": "tweet 55", "views_was": 55})


def test_many_to_many_add_remove_and_clear_name_the_related_ids(
    engine: Engine, rec: Recording
) -> None:
    with Session(engine) as session, rec.block(session):
        tags = [Tag(name=f"t{i}") for i in range(3)]
        session.add_all(tags)
        session.flush()
        one, two, three = (str(tag.id) for tag in tags)
        tweet = Tweet(body="tagged", tags=tags[:2])
        session.add(tweet)
        session.commit()
        tweet.tags.remove(tags[0])
        tweet.tags.append(tags[2])
        session.commit()
        tweet.tags.clear()
        session.commit()
    created, changed, cleared = rec.events(3)
    assert created.metadata["tags"] == f"{one},{two}"
    assert dict(changed.metadata) == {"tags_added": three, "tags_removed": one}
    assert dict(cleared.metadata) == {"tags_removed": f"{two},{three}"}


def test_values_survive_the_write_exactly(engine: Engine, rec: Recording) -> None:
    """Quotes, backslashes, control characters and text beyond ASCII, in a bulk statement's
    events (written in the transaction together, as one JSON array)."""
    _seed(engine, 3)
    odd = 'say "hi" \\ back\\slash\n\ttab \x01 café ✓ 😀 \u2028'
    with Session(engine) as session, rec.block(session):
        session.execute(update(Tweet).values(body=odd))
        session.commit()
    assert {e.metadata["body"] for e in rec.events(3)} == {odd}


# -- in_transaction -----------------------------------------------------------------------------
def _pending_seen_by(session: Session, rec: Recording) -> int:
    return int(session.execute(
        text(f'SELECT count(*) FROM "{rec.pg.schema}".pending')).scalar_one())


def test_the_audit_rows_commit_and_roll_back_with_the_change(
    engine: Engine, txn: Recording
) -> None:
    with Session(engine) as session:
        with txn.store.in_transaction(session):
            session.add(Tweet(body="rolled back"))
            session.flush()
            assert _pending_seen_by(session, txn) == 1  # in this transaction...
            assert txn.pending() == 0 and txn.others.events == []  # ...and nowhere else
        session.rollback()
        txn.nothing()  # no row, nothing pending, nobody told
        assert _bodies(engine) == []

        with txn.store.in_transaction(session):
            session.add(Tweet(body="committed"))
            session.flush()
        assert txn.others.events == []
        session.commit()  # after the block: the rows are written already, in this transaction
    [created] = txn.events(1)  # chained, verify ok (Recording.events checks)
    assert created.metadata["body"] == "committed" and _bodies(engine) == ["committed"]


def test_events_held_before_the_block_are_written_in_the_transaction_once(
    engine: Engine, txn: Recording
) -> None:
    with Session(engine) as session:
        session.add(Tweet(body="before the block"))
        session.flush()  # held by the session's transaction
        with txn.store.in_transaction(session):
            session.add(Tweet(body="inside the block"))
            session.commit()  # both written before the COMMIT, not after it
    events = txn.events(2)
    assert [e.metadata["body"] for e in events] == ["before the block", "inside the block"]


def test_a_change_left_unflushed_when_the_block_ends_goes_out_after_the_commit(
    engine: Engine, txn: Recording
) -> None:
    with Session(engine) as session:
        with txn.store.in_transaction(session):
            session.add(Tweet(body="flushed after the block"))
        session.commit()  # flushed here, outside the block: held, handed on after the commit
    [event] = txn.events(1, transactional=False)
    assert event.metadata["body"] == "flushed after the block"


def test_another_connection_commits_on_its_own_inside_a_block(
    engine: Engine, txn: Recording
) -> None:
    """A change made through another connection is not the block's: its events go out when
    its own transaction commits, whatever becomes of the block's."""
    with Session(engine) as session, Session(engine) as other:
        with txn.store.in_transaction(session):
            session.add(Tweet(body="the block's, rolled back"))
            other.add(Tweet(body="another connection's"))
            session.flush()
            other.commit()
            session.rollback()
    [event] = txn.events(1, transactional=False)
    assert event.metadata["body"] == "another connection's"


def test_instrumented_calls_and_model_changes_share_the_transaction(
    engine: Engine, txn: Recording
) -> None:
    @audit("tweet.publish", "U", target=lambda tweet: (f"tweet_{tweet.id}", "tweet"))
    def publish(tweet: Tweet) -> None:
        tweet.body += " (published)"

    with Session(engine) as session:
        with txn.store.in_transaction(session):
            tweet = Tweet(body="draft")
            session.add(tweet)
            session.flush()
            publish(tweet)
            session.flush()
        session.commit()
    assert [e.action for e in txn.events(3)] == ["tweet.create", "tweet.publish",
                                                  "tweet.update"]


def test_autoflush_inside_a_block_writes_each_flush_as_it_happens(
    engine: Engine, txn: Recording
) -> None:
    """Held events are folded at the commit into one per row; in the transaction each flush's
    events are written as it happens."""
    with Session(engine) as session, txn.store.in_transaction(session):
        tweet = Tweet(body="draft")
        session.add(tweet)
        session.flush()
        tweet.body = "final"
        session.commit()
    assert _shapes(txn.events(2)) == [
        ("tweet.create", "C", "tweet_1", {"body": "draft", "views": 0}),
        ("tweet.update", "U", "tweet_1", {"body_was": "draft", "body": "final"}),
    ]


def test_events_written_together_that_cannot_be_written_are_each_reported(
    pg: PgSchema, txn: Recording
) -> None:
    """A bulk statement's events go in one write: if it fails (the caller's transaction has
    failed already), each event is reported failed and the block raises, naming them all."""
    failed: list[object] = []
    signals.event_failed.connect(lambda event, **kwargs: failed.append(event), weak=False)
    events = [make_event(i) for i in range(3)]
    with psycopg.connect(pg.dsn) as conn:
        with pytest.raises(DeliveryError, match="3 event"), txn.store.in_transaction(conn):
            with pytest.raises(psycopg.errors.DivisionByZero):
                conn.execute("SELECT 1/0")
            with written_together():
                for event in events:
                    emit(event)
        conn.rollback()
    assert failed == events
    txn.nothing()


# -- FOR UPDATE -----------------------------------------------------------------------------------
def test_concurrent_bulk_updates_of_the_same_rows_see_each_others_values(
    engine: Engine, postgres_cluster: Cluster
) -> None:
    """The second update waits for the first one's row locks (the pre-select is ``FOR
    UPDATE``), so its before values are the first one's after values."""
    _seed(engine, 5)
    first_updated = threading.Event()
    may_commit = threading.Event()
    failures: list[BaseException] = []

    def bump(first: bool) -> None:
        try:
            with audit_actor({"id": "first" if first else "second"}, group="org_1"), \
                    Session(engine) as session:
                session.execute(update(Tweet).values(views=Tweet.views + 10))
                if first:
                    first_updated.set()
                    assert may_commit.wait(30)
                session.commit()
        except BaseException as error:
            failures.append(error)

    with capture_events() as captured:
        one = threading.Thread(target=bump, args=(True,))
        one.start()
        assert first_updated.wait(30)
        two = threading.Thread(target=bump, args=(False,))
        two.start()
        wait_for(lambda: lock_waiters(postgres_cluster) > 0, timeout=30)  # blocked on the rows
        may_commit.set()
        one.join(30)
        two.join(30)
    assert failures == []
    by_actor: dict[str, list[tuple[object, object]]] = {}
    for event in captured.events:
        by_actor.setdefault(event.actor_id, []).append(
            (event.metadata["views_was"], event.metadata["views"]))
    print([(e.actor_id, dict(e.metadata)) for e in captured.events])
    assert sorted(by_actor["first"]) == [(i, i + 10) for i in range(5)]
    assert sorted(by_actor["second"]) == [(i + 10, i + 20) for i in range(5)]


def test_a_session_bound_to_the_blocks_connection_writes_in_its_transaction(
    engine: Engine, txn: Recording
) -> None:
    with engine.begin() as conn:  # a Session joins the connection's transaction
        with txn.store.in_transaction(conn), Session(bind=conn) as session:
            session.add(Tweet(body="through the connection"))
            session.commit()  # the outer transaction is the connection's: not committed yet
        assert txn.others.events == [] and txn.pending() == 0
    assert txn.events(1)[0].metadata["body"] == "through the connection"


# -- docs/orm.md ----------------------------------------------------------------------------------
def test_the_transactional_example_of_docs_orm_runs(
    pg: PgSchema, monkeypatch: pytest.MonkeyPatch
) -> None:
    [code] = [code for heading, code in python_blocks("docs/orm.md", section="Transactions")]
    monkeypatch.setenv("AUDIT_DB", pg.url)
    monkeypatch.setenv("DATABASE_URL", f"{pg.dsn}?options=-csearch_path%3D{pg.schema}")
    module = types.ModuleType("docs_orm_postgres_example")  # SQLAlchemy resolves names there
    sys.modules[module.__name__] = module
    namespace: dict[str, Any] = module.__dict__
    try:
        exec(compile(code, "<docs/orm.md>", "exec", dont_inherit=True), namespace)
    finally:
        del sys.modules[module.__name__]
    store = namespace["store"]
    try:
        wait_for(lambda: store.count() == 1 and store.verify().pending == 0)
        [stored] = store.query().events
        assert stored.action == "invoice.create" and dict(stored.metadata) == {
            "amount": 120, "status": "open"}
        with namespace["engine"].connect() as conn:
            assert conn.execute(text("SELECT status FROM invoices")).all() == [("open",)]
    finally:
        configure()
        store.close()
        namespace["engine"].dispose()
