"""SQLAlchemy model capture against real SQLite files: sync Session and AsyncSession.

Every committed insert, update and delete of an audited model is one event
with before/after metadata; what a rollback (whole or to a savepoint) undid
is not recorded; bulk ORM statements give one event per affected row.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    Table,
    create_engine,
    delete,
    insert,
    inspect,
    select,
    update,
)
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    configure_mappers,
    mapped_column,
    relationship,
)
from support.docs import python_blocks

from audit_instrument import (
    AuditConfigError,
    AuditValidationError,
    audit_actor,
    audit_scope,
    configure,
    set_actor,
    signals,
    stats,
)
from audit_instrument.integrations import _changes
from audit_instrument.integrations.sqlalchemy import audit_model
from audit_instrument.testing import CapturedEvents, capture_events

ACTOR = {"id": "user_1", "email": "ada@example.com"}


class Base(DeclarativeBase):
    pass


tweet_tags = Table(
    "tweet_tags", Base.metadata,
    Column("tweet_id", ForeignKey("tweets.id"), primary_key=True),
    Column("tag_id", ForeignKey("tags.id"), primary_key=True),
)


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


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
    author_id: Mapped[int | None] = mapped_column(ForeignKey("authors.id"))
    author: Mapped[Author | None] = relationship()
    tags: Mapped[list[Tag]] = relationship(secondary=tweet_tags)


class BlogPost(Base):
    """Options: a category, chosen fields, a target name."""

    __tablename__ = "blog_posts"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str]
    body: Mapped[str]
    internal: Mapped[str] = mapped_column(default="")


class Wide(Base):
    """More (and longer) fields than one event's metadata can hold."""

    __tablename__ = "wide"
    id: Mapped[int] = mapped_column(primary_key=True)
    for _i in range(30):
        locals()[f"field_{_i:02d}"] = mapped_column(default="")
    __annotations__.update({f"field_{i:02d}": Mapped[str] for i in range(30)})
    del _i


audit_model(Tweet)
audit_model(BlogPost, category="post", exclude=["internal"], target_name="title")
audit_model(Wide, target_name=lambda row: f"wide #{row.id}")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def events() -> Iterator[CapturedEvents]:
    with capture_events() as captured, audit_actor(ACTOR, group="org_1"):
        yield captured


def _metadata(captured: CapturedEvents) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.action, e.target_id, dict(e.metadata)) for e in captured.events]


# -- the unit of work -----------------------------------------------------------------------------
def test_create_update_delete_have_before_after_and_only_changed_fields(
    engine: Engine, events: CapturedEvents
) -> None:
    with Session(engine) as session:
        ada = Author(name="ada")
        tweet = Tweet(body="What time is it?", author=ada, api_token="s3cret")
        session.add(tweet)
        session.flush()
        assert events.events == []  # flushed, not committed
        session.commit()
        tweet.body = "What time is the event?"
        session.commit()
        session.delete(tweet)
        session.commit()
    created, updated, deleted = events.events
    assert (created.action, created.action_type, created.target_id) == ("tweet.create", "C",
                                                                          "tweet_1")
    assert dict(created.metadata) == {"body": "What time is it?", "views": 0,
                                      "api_token": "[masked]", "author_id": 1}
    assert (updated.action, updated.action_type) == ("tweet.update", "U")
    assert dict(updated.metadata) == {"body_was": "What time is it?",
                                      "body": "What time is the event?"}
    assert (deleted.action, deleted.action_type) == ("tweet.delete", "D")
    assert dict(deleted.metadata) == {"body_was": "What time is the event?", "views_was": 0,
                                      "api_token_was": "[masked]", "author_id_was": 1}
    for event in events.events:
        assert (event.actor_id, event.actor_name, event.group) == ("user_1", "ada@example.com",
                                                                   "org_1")
        assert event.target_name == "tweet_1"


def test_a_foreign_key_changed_through_the_relationship_shows_both_ids(
    engine: Engine, events: CapturedEvents
) -> None:
    with Session(engine) as session:
        ada, bob = Author(name="ada"), Author(name="bob")
        tweet = Tweet(body="hi", author=ada)
        session.add_all([tweet, bob])
        session.commit()
        tweet.author = bob  # tweet is expired by the commit: the old id is loaded for us
        session.commit()
    assert dict(events.events[-1].metadata) == {"author_id_was": 1, "author_id": 2}


def test_autoflush_gives_one_event_per_row_per_transaction(
    engine: Engine, events: CapturedEvents
) -> None:
    with Session(engine) as session:
        tweet = Tweet(body="draft")
        session.add(tweet)
        session.flush()
        tweet.body = "final"
        session.flush()
        session.commit()
        tweet.views = 1
        session.execute(select(Tweet)).all()  # autoflushes the first change
        tweet.views = 2
        tweet.body = "edited"
        session.commit()
        tweet.body = "x"
        session.flush()
        tweet.body = "edited"  # back where it started
        session.commit()
    assert _metadata(events) == [
        ("tweet.create", "tweet_1", {"body": "final", "views": 0}),
        ("tweet.update", "tweet_1", {"views_was": 0, "views": 2,
                                     "body_was": "final", "body": "edited"}),
    ]


def test_rollback_and_savepoint_rollback_record_nothing_of_the_undone_work(
    engine: Engine, events: CapturedEvents
) -> None:
    with Session(engine) as session:
        session.add(Tweet(body="never"))
        session.flush()
        session.rollback()
        tweet = Tweet(body="kept")
        session.add(tweet)
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
    assert _metadata(events) == [("tweet.create", "tweet_1", {"body": "kept", "views": 1})]
    with Session(engine) as session:
        assert session.scalars(select(Tweet.body)).all() == ["kept"]


def test_a_failed_commit_records_nothing(engine: Engine, events: CapturedEvents) -> None:
    with Session(engine) as session:
        session.add(Tweet(id=1, body="one"))
        session.commit()
        session.add(Tweet(body="two"))
        session.add(Tweet(id=1, body="duplicate"))
        with pytest.raises(Exception, match="UNIQUE"):
            session.commit()
        session.rollback()
        session.add(Tweet(body="three"))
        session.commit()
    assert [e.metadata["body"] for e in events.events] == ["one", "three"]


def test_many_to_many_add_and_remove_name_the_related_ids(
    engine: Engine, events: CapturedEvents
) -> None:
    with Session(engine) as session:
        tags = [Tag(name=f"t{i}") for i in range(3)]
        tweet = Tweet(body="tagged", tags=tags[:2])
        session.add_all([tweet, tags[2]])
        session.commit()
        tweet.tags.remove(tags[0])
        tweet.tags.append(tags[2])
        session.commit()
    created, changed = events.events
    assert created.metadata["tags"] == "1,2"
    assert dict(changed.metadata) == {"tags_added": "3", "tags_removed": "1"}


def test_a_large_many_to_many_change_is_split_into_valid_events(
    engine: Engine, events: CapturedEvents
) -> None:
    with Session(engine) as session:
        tweet = Tweet(body="popular")
        session.add(tweet)
        session.commit()
        tweet.tags.extend(Tag(id=100_000 + i, name=f"t{i}") for i in range(300))
        session.commit()
    parts = events.events[1:]
    assert len(parts) == 5 and stats().invalid == {}
    ids = [int(i) for event in parts for i in str(event.metadata["tags_added"]).split(",")]
    assert ids == list(range(100_000, 100_300))
    assert [event.metadata["audit_part"] for event in parts] == [f"{i}/5" for i in range(1, 6)]
    assert all(len(str(event.metadata["tags_added"])) <= 500 for event in parts)


def test_many_long_fields_are_cut_and_split_never_invalid(
    engine: Engine, events: CapturedEvents
) -> None:
    with Session(engine) as session:
        wide = Wide(**{f"field_{i:02d}": "v" * 700 for i in range(30)})
        session.add(wide)
        session.commit()
        for i in range(30):
            setattr(wide, f"field_{i:02d}", f"new {i}")
        session.commit()
    assert stats().invalid == {}
    create, *update = events.events
    assert len(create.metadata) == 30 and create.target_name == "wide #1"
    assert create.metadata["field_00"] == "v" * 499 + "…"
    assert [len(part.metadata) for part in update] == [49, 13]
    assert [part.metadata["audit_part"] for part in update] == ["1/2", "2/2"]
    merged = {k: v for part in update for k, v in part.metadata.items() if k != "audit_part"}
    assert merged["field_29_was"] == "v" * 499 + "…" and merged["field_29"] == "new 29"
    assert len(merged) == 60


def test_options_category_fields_and_target_name(engine: Engine, events: CapturedEvents) -> None:
    with Session(engine) as session:
        post = BlogPost(title="Hello", body="first", internal="x")
        session.add(post)
        session.commit()
        post.internal = "y"  # excluded: no event
        session.commit()
        post.body = "second"
        session.commit()
    assert _metadata(events) == [
        ("post.create", "post_1", {"title": "Hello", "body": "first"}),
        ("post.update", "post_1", {"body_was": "first", "body": "second"}),
    ]
    assert {event.target_name for event in events.events} == {"Hello"}


def test_bad_declarations_fail_at_once() -> None:
    configure_mappers()  # names are checked once SQLAlchemy has configured the mapper
    with pytest.raises(AuditConfigError, match="not a field of Tweet"):
        audit_model(Tweet, fields=["body", "nope"])
    with pytest.raises(AuditConfigError, match="mapped class"):
        audit_model(dict)
    with pytest.raises(AuditConfigError, match="category"):
        audit_model(Tweet, category="a.b")
    audit_model(Tweet)  # the declaration in force again


# -- bulk statements ------------------------------------------------------------------------------
def test_a_bulk_statement_before_any_query_is_recorded(
    tmp_path: Path, events: CapturedEvents
) -> None:
    """The first ORM statement of a process may run before SQLAlchemy has configured the
    mappers (no object made, no query yet): audit_model takes effect for it all the same."""

    class Fresh(DeclarativeBase):
        pass

    class Note(Fresh):
        __tablename__ = "notes"
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str]

    audit_model(Note)
    engine = create_engine(f"sqlite:///{tmp_path / 'notes.db'}")
    Fresh.metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(Note.__table__.insert(), [{"text": "a"}])
    assert not inspect(Note).configured
    with Session(engine) as session:
        session.execute(update(Note).values(text="b"))
        session.commit()
    engine.dispose()
    assert dict(events.one(target_id="note_1").metadata) == {"text_was": "a", "text": "b"}


def test_a_bulk_update_of_50_rows_gives_50_events_with_before_and_after(
    engine: Engine, events: CapturedEvents
) -> None:
    with Session(engine) as session:
        session.add_all(Tweet(body=f"tweet {i}", views=i) for i in range(60))
        session.commit()
        events.events.clear()
        result = session.execute(
            update(Tweet).where(Tweet.views < 50).values(views=Tweet.views + 100))
        assert result.rowcount == 50  # type: ignore[attr-defined]
        assert events.events == []
        session.commit()
    assert len(events.events) == 50
    assert {e.action for e in events.events} == {"tweet.update"}
    by_target = {e.target_id: dict(e.metadata) for e in events.events}
    assert by_target["tweet_8"] == {"views_was": 7, "views": 107}


def test_bulk_delete_update_by_primary_key_and_rollback(
    engine: Engine, events: CapturedEvents
) -> None:
    with Session(engine) as session:
        session.add_all(Tweet(body=f"tweet {i}") for i in range(5))
        session.commit()
        events.events.clear()
        session.execute(delete(Tweet).where(Tweet.id > 3))
        session.rollback()
        assert events.events == []
        session.execute(update(Tweet), [{"id": 1, "body": "one"}, {"id": 2, "body": "two"}])
        session.execute(delete(Tweet).where(Tweet.id > 3))
        session.commit()
    assert _metadata(events) == [
        ("tweet.update", "tweet_1", {"body_was": "tweet 0", "body": "one"}),
        ("tweet.update", "tweet_2", {"body_was": "tweet 1", "body": "two"}),
        ("tweet.delete", "tweet_4", {"body_was": "tweet 3", "views_was": 0}),
        ("tweet.delete", "tweet_5", {"body_was": "tweet 4", "views_was": 0}),
    ]


def test_bulk_insert_records_each_row_and_keeps_the_callers_result(
    engine: Engine, events: CapturedEvents
) -> None:
    with Session(engine) as session:
        session.execute(insert(Tweet), [{"body": "a"}, {"body": "b"}])
        returned = session.scalars(insert(Tweet).returning(Tweet), [{"body": "c"}]).all()
        assert [tweet.body for tweet in returned] == ["c"]
        session.commit()
    assert _metadata(events) == [
        ("tweet.create", "tweet_1", {"body": "a", "views": 0}),
        ("tweet.create", "tweet_2", {"body": "b", "views": 0}),
        ("tweet.create", "tweet_3", {"body": "c", "views": 0}),
    ]


def test_without_senders_nothing_is_read_or_built(engine: Engine) -> None:
    statements: list[str] = []
    sa_event.listen(engine, "before_cursor_execute",
                 lambda conn, cursor, sql, *args: statements.append(sql))
    with Session(engine) as session:
        session.add_all(Tweet(body=f"tweet {i}") for i in range(3))
        session.commit()
        statements.clear()
        session.execute(update(Tweet).values(views=1))
        session.commit()
    assert [sql.split()[0] for sql in statements] == ["UPDATE"]
    assert stats().built == 0


# -- who is acting --------------------------------------------------------------------------------
def test_no_actor_is_reported_not_recorded_and_raised_in_strict_mode(engine: Engine) -> None:
    invalid: list[Any] = []
    signals.event_invalid.connect(lambda action, error: invalid.append((action, error)),
                                  weak=False)
    with capture_events() as captured, Session(engine) as session:
        session.add(Tweet(body="anonymous"))
        session.commit()
        assert captured.events == []
        assert [action for action, _ in invalid] == ["tweet.create"]
        assert stats().invalid == {"actor_id: " + str(invalid[0][1].rule): 1}
        configure(system_actor=("system", "System"))
        with audit_actor(None, group="org_1"):
            session.add(Tweet(body="by the system"))
            session.commit()
        assert captured.one().actor_id == "system"
        configure(strict=True, system_actor=None)
        session.add(Tweet(body="strict"))
        with pytest.raises(AuditValidationError, match="actor_id"):
            session.commit()


def test_the_actor_is_the_one_of_the_flush(engine: Engine) -> None:
    with capture_events() as captured, Session(engine) as session:
        with audit_scope(group="org_1"):
            set_actor({"id": "job_1", "name": "Nightly job"})
            session.add(Tweet(body="by the job"))
            session.flush()
        session.commit()  # outside the scope: the event was built at the flush
    assert captured.one().actor_id == "job_1"


async def test_async_session_records_commits_and_drops_rollbacks(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'async.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    with capture_events() as captured:
        async with audit_scope(group="org_1"), AsyncSession(engine) as session:
            set_actor({"id": "user_2", "name": "bob"})
            tweet = Tweet(body="async")
            session.add(tweet)
            await session.commit()
            tweet.body = "rolled back"
            await session.flush()
            await session.rollback()
            session.add_all(Tweet(body=f"more {i}") for i in range(3))
            await session.commit()
            await session.execute(update(Tweet).where(Tweet.body.like("more%")).values(views=9))
            async with session.begin_nested():
                await session.execute(delete(Tweet).where(Tweet.body == "more 0"))
            await session.commit()
    await engine.dispose()
    assert [(e.action, e.target_id) for e in captured.events] == [
        ("tweet.create", "tweet_1"),
        ("tweet.create", "tweet_2"), ("tweet.create", "tweet_3"), ("tweet.create", "tweet_4"),
        ("tweet.update", "tweet_2"), ("tweet.update", "tweet_3"), ("tweet.update", "tweet_4"),
        ("tweet.delete", "tweet_2"),
    ]
    assert {e.actor_id for e in captured.events} == {"user_2"}
    assert dict(captured.events[4].metadata) == {"views_was": 0, "views": 9}


# -- docs/orm.md and values ----------------------------------------------------------------------
def test_the_sqlalchemy_examples_of_the_docs_run_as_written() -> None:
    blocks = [code for heading, code in python_blocks("docs/orm.md")
              if "sqlalchemy" in code and "django" not in code
              and not heading.startswith("With the PostgreSQL store")]  # test_orm_postgres_*
    assert len(blocks) == 2
    module = types.ModuleType("docs_orm_example")  # SQLAlchemy resolves annotations there
    sys.modules[module.__name__] = module
    namespace: dict[str, Any] = module.__dict__
    try:
        for code in blocks:
            exec(compile(code, "<docs/orm.md>", "exec", dont_inherit=True), namespace)
    finally:
        del sys.modules[module.__name__]
    memory = namespace["memory"]
    assert [e.action for e in memory.events][-1] == "tweet.update"
    account_cls = namespace["Account"]
    namespace["Base"].metadata.create_all(namespace["engine"])
    memory.events.clear()
    with audit_actor(ACTOR, group="org_1"), Session(namespace["engine"]) as session:
        account = account_cls(email="ada@example.com", plan="free", password_hash="x")
        session.add(account)
        session.commit()
        account.password_hash, account.last_seen = "y", "today"
        session.commit()
    created, changed = memory.events
    assert created.target_name == "ada@example.com" and "last_seen" not in created.metadata
    assert dict(changed.metadata) == {"password_hash_was": "[masked]",
                                      "password_hash": "[masked]"}


def test_values_become_metadata_primitives() -> None:
    value = _changes.metadata_value
    assert value("settings", {"theme": "dark", "api_token": "t", "nested": [{"password": 1}]}) \
        == '{"theme":"dark","api_token":"[masked]","nested":[{"password":"[masked]"}]}'
    assert value("avatar", b"\x00" * 10) == "<10 bytes>"
    assert value("price", Decimal("1.50")) == "1.50"
    assert value("day", date(2024, 5, 1)) == "2024-05-01"
    assert value("big", 2**70) == str(2**70)
    assert value("text", "x" * 501) == "x" * 499 + "…"
    assert value("secret_answer", object()) == "[masked]"
