"""Django model capture against a real SQLite file: signals, querysets, many-to-many, requests.

The models are in tests/support/orm_app (audited, with an AuditedQuerySet
manager). Outside ``atomic()`` Django commits each statement, so events go
out at once; inside, on commit, and not for what a rollback undid.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import support.django_site as site
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.db import connection, models, transaction
from django.http import HttpResponse
from django.test import Client, override_settings
from django.urls import path
from support.docs import python_blocks
from support.orm_app.models import Tag, Tweet, Wide

from audit_instrument import AuditConfigError, audit_actor, configure, stats
from audit_instrument.integrations.django import audit_model
from audit_instrument.integrations.django import models as capture
from audit_instrument.testing import CapturedEvents, capture_events

ACTOR = {"id": "user_1", "email": "ada@example.com"}


@pytest.fixture(autouse=True)
def _tables() -> None:
    site.migrate()
    Tweet.objects.all().delete()  # no sender is connected yet: nothing is recorded
    Tag.objects.all().delete()
    Wide.objects.all().delete()


@pytest.fixture
def events() -> Iterator[CapturedEvents]:
    with capture_events() as captured, audit_actor(ACTOR, group="org_1"):
        yield captured


def _shapes(captured: CapturedEvents) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.action, e.target_id, dict(e.metadata)) for e in captured.events]


def test_save_and_delete_have_before_after_and_only_changed_fields(events: CapturedEvents) -> None:
    bob = User.objects.create(username="bob-save")
    tweet = Tweet.objects.create(body="What time is it?", author=bob, api_token="s3cret")
    tweet.body = "What time is the event?"
    tweet.save()
    tweet.save()  # nothing changed: no event
    tweet.views = 3
    tweet.save(update_fields=["views"])
    pk = tweet.pk
    tweet.delete()
    t = f"tweet_{pk}"
    assert _shapes(events) == [
        ("tweet.create", t, {"body": "What time is it?", "views": 0, "author_id": bob.pk,
                             "api_token": "[masked]"}),
        ("tweet.update", t, {"body_was": "What time is it?", "body": "What time is the event?"}),
        ("tweet.update", t, {"views_was": 0, "views": 3}),
        ("tweet.delete", t, {"body_was": "What time is the event?", "views_was": 3,
                             "author_id_was": bob.pk, "api_token_was": "[masked]"}),
    ]
    assert [e.action_type for e in events.events] == ["C", "U", "U", "D"]
    assert {(e.actor_id, e.group) for e in events.events} == {("user_1", "org_1")}
    assert events.events[0].target_name == "What time is it?"  # str(instance)


def test_a_foreign_key_change_shows_both_ids(events: CapturedEvents) -> None:
    ada, bob = User.objects.create(username="ada-fk"), User.objects.create(username="bob-fk")
    tweet = Tweet.objects.create(body="hi", author=ada)
    tweet.author = bob
    tweet.save()
    assert dict(events.events[-1].metadata) == {"author_id_was": ada.pk, "author_id": bob.pk}


def test_rollback_and_savepoint_rollback_record_nothing_of_the_undone_work(
    events: CapturedEvents,
) -> None:
    with pytest.raises(RuntimeError), transaction.atomic():
        Tweet.objects.create(body="never")
        raise RuntimeError
    with transaction.atomic():
        tweet = Tweet.objects.create(body="kept")
        with transaction.atomic():  # released
            tweet.views = 1
            tweet.save()
        with pytest.raises(RuntimeError), transaction.atomic():
            tweet.body = "undone"
            tweet.save()
            Tweet.objects.filter(pk=tweet.pk).update(views=99)
            raise RuntimeError
        assert events.events == []  # not committed yet
    assert [e.action for e in events.events] == ["tweet.create", "tweet.update"]
    assert dict(events.events[1].metadata) == {"views_was": 0, "views": 1}
    assert list(Tweet.objects.values_list("body", "views")) == [("kept", 1)]


def test_queryset_update_of_50_rows_gives_50_events(events: CapturedEvents) -> None:
    Tweet.objects.bulk_create([Tweet(body=f"tweet {i}", views=i) for i in range(60)])
    created = len(events.events)
    events.events.clear()
    assert Tweet.objects.filter(views__lt=50).update(views=models.F("views") + 100) == 50
    assert len(events.events) == 50 and created == 60
    first = Tweet.objects.get(body="tweet 7")
    assert dict(events.one(target_id=f"tweet_{first.pk}").metadata) == {"views_was": 7,
                                                                         "views": 107}


def test_bulk_create_bulk_update_and_queryset_delete_once_per_row(
    events: CapturedEvents,
) -> None:
    made = Tweet.objects.bulk_create([Tweet(body=f"b{i}") for i in range(3)])
    for tweet in made:
        tweet.body += "!"
    assert Tweet.objects.bulk_update(made, ["body"], batch_size=2) == 3
    Tweet.objects.filter(body__startswith="b").delete()
    shapes = _shapes(events)
    assert [shape[0] for shape in shapes] == ["tweet.create"] * 3 + ["tweet.update"] * 3 + [
        "tweet.delete"] * 3
    assert shapes[3][2] == {"body_was": "b0", "body": "b0!"}
    assert sorted(shape[1] for shape in shapes[6:]) == sorted(f"tweet_{t.pk}" for t in made)


def test_many_to_many_add_remove_clear_from_both_sides(events: CapturedEvents) -> None:
    tweet = Tweet.objects.create(body="tagged")
    tags = [Tag.objects.create(name=f"t{i}") for i in range(3)]
    stranger = Tag.objects.create(name="unrelated")
    ids = [tag.pk for tag in tags]
    events.events.clear()
    tweet.tags.add(*tags)
    tweet.tags.add(tags[0])  # already there: nothing added
    tweet.tags.remove(tags[0], stranger)  # the stranger was never related
    tweet.tags.clear()
    tags[1].tweets.add(tweet)  # from the other side: still the tweet's change
    tags[1].tweets.clear()
    t = f"tweet_{tweet.pk}"
    assert _shapes(events) == [
        ("tweet.update", t, {"tags_added": ",".join(map(str, ids))}),
        ("tweet.update", t, {"tags_removed": str(ids[0])}),
        ("tweet.update", t, {"tags_removed": f"{ids[1]},{ids[2]}"}),
        ("tweet.update", t, {"tags_added": str(ids[1])}),
        ("tweet.update", t, {"tags_removed": str(ids[1])}),
    ]


def test_a_large_many_to_many_add_is_split_into_valid_events(events: CapturedEvents) -> None:
    tweet = Tweet.objects.create(body="popular")
    tags = Tag.objects.bulk_create([Tag(name=f"t{i}") for i in range(300)])
    events.events.clear()
    tweet.tags.add(*tags)
    assert stats().invalid == {}
    added = [int(i) for e in events.events for i in str(e.metadata["tags_added"]).split(",")]
    assert added == sorted(tag.pk for tag in tags)
    assert len(events.events) > 1
    assert all(len(str(e.metadata["tags_added"])) <= 500 for e in events.events)


def test_many_long_fields_are_cut_and_split(events: CapturedEvents) -> None:
    wide = Wide.objects.create(**{f"field_{i:02d}": "v" * 600 for i in range(30)})
    for i in range(30):
        setattr(wide, f"field_{i:02d}", f"new {i}")
    wide.save()
    assert stats().invalid == {}
    create, *update = events.events
    assert (create.action, create.target_name) == ("wide_row.create", f"wide #{wide.pk}")
    assert create.metadata["field_00"] == "v" * 499 + "…"
    assert [part.metadata["audit_part"] for part in update] == ["1/2", "2/2"]


def test_no_actor_is_reported_not_recorded() -> None:
    with capture_events() as captured:
        Tweet.objects.create(body="anonymous")
        assert captured.events == []
        assert sum(stats().invalid.values()) == 1
        configure(system_actor=("system", "System"))
        with audit_actor(None, group="org_1"):
            Tweet.objects.create(body="by the system")
        assert captured.one().actor_id == "system"


def test_declarations_are_checked_and_plain_managers_warned_about() -> None:
    with pytest.raises(AuditConfigError, match="not a field of Tweet"):
        audit_model(Tweet, fields=["body", "nope"])
    with pytest.raises(AuditConfigError, match="concrete Django model"):
        audit_model(dict)
    assert [e.id for e in run_checks() if e.id.startswith("audit_instrument.W")] == []

    class Plain(models.Model):
        body = models.TextField()

        class Meta:
            app_label = "orm_app"

    audit_model(Plain)
    try:
        warnings = [e for e in run_checks() if e.id == "audit_instrument.W001"]
        assert [w.obj for w in warnings] == [Plain]
        assert "AuditedQuerySet" in warnings[0].hint
    finally:
        del capture._PLANS[Plain]


# -- a request: the actor from the middleware and a logged-in user ---------------------------------
def edit_tweet(request: Any, pk: int) -> HttpResponse:
    with transaction.atomic():
        tweet = Tweet.objects.get(pk=pk)
        tweet.body = request.POST["body"]
        tweet.save()
        Tweet.objects.filter(pk=pk).update(views=models.F("views") + 1)
    return HttpResponse("ok")


urlpatterns = [path("tweets/<int:pk>", edit_tweet)]


def test_the_actor_comes_from_the_request_middleware() -> None:
    user = User.objects.create_user(username="carol-orm", email="carol@example.com")
    tweet = Tweet.objects.create(body="draft")  # outside any request: not recorded
    middleware = [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "audit_instrument.integrations.django.AuditMiddleware",
    ]
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware,
                           AUDIT_INSTRUMENT={"GROUP": lambda request: "org_7"}), \
            capture_events() as captured:
        client = Client(HTTP_USER_AGENT="pytest-browser")
        client.force_login(user)
        assert client.post(f"/tweets/{tweet.pk}", {"body": "published"}).status_code == 200
    body, views = captured.events
    assert dict(body.metadata) == {"body_was": "draft", "body": "published"}
    assert dict(views.metadata) == {"views_was": 0, "views": 1}
    for event in captured.events:
        assert (event.actor_id, event.actor_name, event.group, event.user_agent) == (
            str(user.pk), "carol@example.com", "org_7", "pytest-browser")


def test_the_django_example_of_the_docs_runs_as_written() -> None:
    [code] = [code for _, code in python_blocks("docs/orm.md") if "django" in code]
    # run as a module of the test app, so that its models belong to that app
    namespace: dict[str, Any] = {"__name__": "support.orm_app.docs_example"}
    exec(compile(code, "<docs/orm.md>", "exec", dont_inherit=True), namespace)
    article_cls, label_cls = namespace["Article"], namespace["Label"]
    with connection.schema_editor() as editor:
        for cls in (label_cls, article_cls):
            editor.create_model(cls)
    with capture_events() as captured, audit_actor(ACTOR, group="org_1"):
        article = article_cls.objects.create(title="Hello", body="first")
        label = label_cls.objects.create(name="news")
        article.labels.add(label)
        article_cls.objects.filter(pk=article.pk).update(body="second")
    assert [(e.action, e.target_name) for e in captured.events] == [
        ("article.create", "Hello"), ("article.update", "Hello"), ("article.update", "Hello")]
    assert dict(captured.events[1].metadata) == {"labels_added": str(label.pk)}
    assert dict(captured.events[2].metadata) == {"body_was": "first", "body": "second"}
