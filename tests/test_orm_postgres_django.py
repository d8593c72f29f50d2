"""Django model capture on a real PostgreSQL server (psycopg backend), both ways of recording.

The suite's Django (``support.django_site``) runs on SQLite; here a second
database alias, :data:`ALIAS`, points at the throwaway PostgreSQL cluster,
with the test app's tables in a schema of their own. Each scenario runs with
events held until ``atomic()`` commits and inside
``store.in_transaction(connection)``, where they are written in the
transaction that made the change (see ``support.orm_postgres``).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import support.django_site  # noqa: F401  (configures Django)
from django.conf import settings
from django.contrib.auth.models import Group, Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connections, models, transaction
from support.orm_app.models import Tag, Tweet
from support.orm_postgres import MODES, Recording, app_schema, lock_waiters, recording
from support.postgres import Cluster, PgSchema
from support.waiting import wait_for

from audit_instrument import AuditEvent, audit_actor
from audit_instrument.testing import capture_events

ALIAS = "orm_pg"


@pytest.fixture(scope="module")
def database(postgres_cluster: Cluster) -> Iterator[str]:
    """``connections[ALIAS]``: the test app's tables on PostgreSQL; the alias is removed after."""
    with app_schema(postgres_cluster, "orm_django") as schema:
        settings.DATABASES[ALIAS] = {
            "ENGINE": "django.db.backends.postgresql", "NAME": "audit_tests",
            "USER": "postgres", "HOST": "127.0.0.1", "PORT": str(postgres_cluster.port),
            "OPTIONS": {"options": f"-c search_path={schema}"},
        }
        connections.configure_settings(settings.DATABASES)
        try:
            with connections[ALIAS].schema_editor() as editor:
                for model in (ContentType, Permission, Group, User, Tag, Tweet):
                    editor.create_model(model)
            yield ALIAS
        finally:
            connections[ALIAS].close()
            del connections[ALIAS]
            del settings.DATABASES[ALIAS]


@pytest.fixture(autouse=True)
def _empty_tables(database: str) -> None:
    with connections[database].cursor() as cursor:
        cursor.execute("TRUNCATE orm_app_tweet_tags, orm_app_tweet, orm_app_tag, auth_user "
                       "RESTART IDENTITY CASCADE")


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


@contextmanager
def step(rec: Recording) -> Iterator[None]:
    """One transaction of the test: ``atomic()`` on the alias (inside the store's block in the
    ``in_transaction`` mode; the block ends before the commit)."""
    with transaction.atomic(using=ALIAS), rec.block(connections[ALIAS]):
        yield


def _shapes(events: list[AuditEvent]) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [(e.action, e.action_type, e.target_id, dict(e.metadata)) for e in events]


tweets = Tweet.objects.db_manager(ALIAS)
tags = Tag.objects.db_manager(ALIAS)


# -- both ways --------------------------------------------------------------------------------
def test_save_and_delete_have_before_after_and_only_changed_fields(rec: Recording) -> None:
    bob = User.objects.db_manager(ALIAS).create(username="bob")
    with step(rec):
        tweet = tweets.create(body="What time is it?", author=bob, api_token="s3cret")
        assert rec.others.events == []  # not committed yet
    with step(rec):
        tweet.body = "What time is the event?"
        tweet.save()
        tweet.save()  # nothing changed: no event
    with step(rec):
        tweet.views = 3
        tweet.save(update_fields=["views"])
    with step(rec):
        tweet.delete()
    assert _shapes(rec.events(4)) == [
        ("tweet.create", "C", "tweet_1", {"body": "What time is it?", "views": 0,
                                          "author_id": bob.pk, "api_token": "[masked]"}),
        ("tweet.update", "U", "tweet_1", {"body_was": "What time is it?",
                                          "body": "What time is the event?"}),
        ("tweet.update", "U", "tweet_1", {"views_was": 0, "views": 3}),
        ("tweet.delete", "D", "tweet_1", {"body_was": "What time is the event?",
                                          "views_was": 3, "author_id_was": bob.pk,
                                          "api_token_was": "[masked]"}),
    ]
    assert {(e.actor_id, e.group) for e in rec.others.events} == {("user_1", "org_1")}


def test_rollback_and_savepoint_rollback_record_nothing_of_the_undone_work(
    rec: Recording,
) -> None:
    with pytest.raises(RuntimeError), step(rec):
        tweets.create(body="never")
        raise RuntimeError
    with step(rec):
        tweet = tweets.create(body="kept")
        with transaction.atomic(using=ALIAS):  # released
            tweet.views = 1
            tweet.save()
        with pytest.raises(RuntimeError), transaction.atomic(using=ALIAS):
            tweet.body = "undone"
            tweet.save()
            tweets.filter(pk=tweet.pk).update(views=99)
            tweets.create(body="undone too")
            raise RuntimeError
        assert rec.others.events == []
    assert _shapes(rec.events(2)) == [
        ("tweet.create", "C", "tweet_2", {"body": "kept", "views": 0, "api_token": "[masked]"}),
        ("tweet.update", "U", "tweet_2", {"views_was": 0, "views": 1}),
    ]
    assert list(tweets.values_list("body", "views")) == [("kept", 1)]


def test_queryset_update_of_50_rows_bulk_update_and_bulk_create(rec: Recording) -> None:
    with step(rec):
        made = tweets.bulk_create([Tweet(body=f"tweet {i}", views=i) for i in range(60)])
    with step(rec):
        assert tweets.filter(views__lt=50).update(views=models.F("views") + 100) == 50
    with step(rec):
        for tweet in made[:3]:
            tweet.body += "!"
        tweets.bulk_update(made[:3], ["body"])
    events = rec.events(113)
    created, updated, bulk_updated = events[:60], events[60:110], events[110:]
    assert {e.action for e in created} == {"tweet.create"}
    assert {e.target_id for e in updated} == {f"tweet_{i + 1}" for i in range(50)}
    eighth = next(e for e in updated if e.target_id == "tweet_8")
    assert dict(eighth.metadata) == {"views_was": 7, "views": 107}  # only what changed
    assert _shapes(bulk_updated) == [
        ("tweet.update", "U", f"tweet_{i + 1}", {"body_was": f"tweet {i}", "body": f"tweet {i}!"})
        for i in range(3)
    ]


def test_many_to_many_add_remove_and_clear_name_the_related_ids(rec: Recording) -> None:
    with step(rec):
        one, two, three = (tags.create(name=f"t{i}") for i in range(3))
        tweet = tweets.create(body="tagged")
    with step(rec):
        tweet.tags.add(one, two)
    with step(rec):
        tweet.tags.remove(one, three)  # three was not related: only one is removed
    with step(rec):
        three.tweets.add(tweet)  # from the other side
    with step(rec):
        tweet.tags.clear()
    assert [dict(e.metadata) for e in rec.events(5)[1:]] == [
        {"tags_added": f"{one.pk},{two.pk}"},
        {"tags_removed": f"{one.pk}"},
        {"tags_added": f"{three.pk}"},
        {"tags_removed": f"{two.pk},{three.pk}"},
    ]


# -- in_transaction -----------------------------------------------------------------------------
def _pending_seen_here(rec: Recording) -> int:
    with connections[ALIAS].cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM "{rec.pg.schema}".pending')
        return int(cursor.fetchone()[0])


def test_the_audit_rows_commit_and_roll_back_with_the_change(txn: Recording) -> None:
    connection = connections[ALIAS]
    with pytest.raises(RuntimeError), transaction.atomic(using=ALIAS), \
            txn.store.in_transaction(connection):
        tweets.create(body="rolled back")
        assert _pending_seen_here(txn) == 1  # in this transaction...
        assert txn.pending() == 0 and txn.others.events == []  # ...and nowhere else
        raise RuntimeError("the view failed")
    txn.nothing()  # no row, nothing pending, nobody told
    assert not tweets.exists()

    with transaction.atomic(using=ALIAS), txn.store.in_transaction(connection):
        tweets.create(body="committed")
    [created] = txn.events(1)  # chained, verify ok (Recording.events checks)
    assert created.metadata["body"] == "committed"


def test_outside_atomic_a_change_has_committed_and_its_event_goes_out_at_once(
    txn: Recording,
) -> None:
    """Django commits each statement outside ``atomic()``: the block could not write the
    event in a transaction (it would refuse), so it goes to the senders at once."""
    with txn.store.in_transaction(connections[ALIAS]):
        tweets.create(body="autocommitted")
        assert len(txn.others.events) == 1
    assert txn.events(1, transactional=False)[0].metadata["body"] == "autocommitted"


# -- FOR UPDATE -----------------------------------------------------------------------------------
def test_concurrent_queryset_updates_of_the_same_rows_see_each_others_values(
    postgres_cluster: Cluster,
) -> None:
    """The second update waits for the first one's row locks (its rows are read ``FOR
    UPDATE``), so its before values are the first one's after values."""
    tweets.bulk_create([Tweet(body=f"tweet {i}", views=i) for i in range(5)])
    first_updated = threading.Event()
    may_commit = threading.Event()
    failures: list[BaseException] = []

    def bump(first: bool) -> None:
        try:
            with audit_actor({"id": "first" if first else "second"}, group="org_1"), \
                    transaction.atomic(using=ALIAS):
                tweets.update(views=models.F("views") + 10)
                if first:
                    first_updated.set()
                    assert may_commit.wait(30)
        except BaseException as error:
            failures.append(error)
        finally:
            connections[ALIAS].close()

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
    assert sorted(by_actor["first"]) == [(i, i + 10) for i in range(5)]
    assert sorted(by_actor["second"]) == [(i + 10, i + 20) for i in range(5)]
