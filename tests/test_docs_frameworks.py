"""Every code block of docs/frameworks.md (and the README's framework section) runs as written.

Apps are served for real (uvicorn, werkzeug) or driven through Django's own
request handling, and each must record its event with the right actor.
"""

from __future__ import annotations

import asyncio
import sys
import types
from typing import Any

import httpx
import pytest
import support.django_site as site
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.http import JsonResponse
from django.test import Client, RequestFactory, override_settings
from django.urls import path
from support.docs import python_blocks
from support.servers import serve_asgi, serve_wsgi

from audit_instrument import audit, audit_actor, configure
from audit_instrument.senders import MemorySender
from audit_instrument.testing import capture_events

SOURCES = [("docs/frameworks.md", None), ("README.md", "Web frameworks")]


def _run(code: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    exec(compile(code, "<docs example>", "exec"), namespace)
    return namespace


def _check_tweet_update(memory: MemorySender) -> None:
    [event] = memory.events
    assert (event.action, event.actor_id, event.group, event.target_id) == (
        "tweet.update", "user_1", "org_1", "5")


def _fastapi_app(code: str) -> None:
    namespace = _run(code)
    with serve_asgi(namespace["app"]) as url:
        answer = httpx.post(f"{url}/tweets/5", headers={"x-token": "t"})
    assert answer.status_code == 200, answer.text
    _check_tweet_update(namespace["memory"])


def _flask_app(code: str) -> None:
    namespace = _run(code)
    with serve_wsgi(namespace["app"]) as url:
        answer = httpx.post(f"{url}/tweets/5")
    assert answer.status_code == 200, answer.text
    _check_tweet_update(namespace["memory"])


@audit("tweet.update", "U", target="tweet_id")
def _update_view(request: Any, tweet_id: int) -> JsonResponse:
    return JsonResponse({"ok": True})


urlpatterns = [path("tweets/<int:tweet_id>", _update_view)]


def _django_settings(code: str) -> None:
    namespace = _run(code)
    installed = [app for app in namespace["INSTALLED_APPS"] if app is not Ellipsis]
    middleware = [m for m in namespace["MIDDLEWARE"] if m is not Ellipsis]
    assert installed == ["audit_instrument.integrations.django"]
    myapp = types.ModuleType("myapp.audit")
    myapp.organization = lambda request: "org_1"  # type: ignore[attr-defined]
    sys.modules.setdefault("myapp", types.ModuleType("myapp"))
    sys.modules["myapp.audit"] = myapp
    site.migrate()
    user, _ = User.objects.get_or_create(username="docs_user")
    memory = MemorySender()
    configure(memory)
    try:
        with override_settings(
            ROOT_URLCONF=__name__, AUDIT_INSTRUMENT=namespace["AUDIT_INSTRUMENT"],
            MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware", *middleware],
        ):
            assert [e.id for e in run_checks() if e.id.startswith("audit")] == []
            client = Client()
            client.force_login(user)
            assert client.post("/tweets/5").status_code == 200
    finally:
        del sys.modules["myapp.audit"]
    [event] = memory.events
    assert (event.actor_id, event.group, event.target_id) == (str(user.pk), "org_1", "5")


def _job(code: str) -> None:
    namespace = _run(code)
    with capture_events() as events:
        namespace["nightly_export"]()
    [event] = events.events
    assert (event.action, event.actor_id, event.actor_name, event.group) == (
        "tweet.export", "job_export", "Nightly export", "organization_1")


def _fastapi_health(code: str) -> None:
    namespace = _run(code)

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=namespace["app"])
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            return await http.get("/health/audit")

    healthy = asyncio.run(get())
    assert healthy.status_code == 200 and set(healthy.json()) >= {"built", "invalid", "senders"}
    configure(MemorySender())
    audit("doc.read", "R")(lambda: None)()  # no actor anywhere: an invalid event
    assert asyncio.run(get()).status_code == 503


def _django_health(code: str) -> None:
    namespace = _run(code)
    request = RequestFactory().get("/health/audit")
    assert namespace["audit_health"](request).status_code == 200
    configure(MemorySender())
    with audit_actor(None, group="org_1"):
        audit("doc.read", "R")(lambda: None)()
    assert namespace["audit_health"](request).status_code == 503


RUNNERS = {
    "FastAPI and Starlette": _fastapi_app,
    "FastAPI": _fastapi_app,
    "Flask": _flask_app,
    "Django": _django_settings,
    "Jobs, tasks and scripts": _job,
}


def _cases() -> list[Any]:
    cases = []
    for source, section in SOURCES:
        for number, (heading, code) in enumerate(python_blocks(source, section=section)):
            cases.append(pytest.param(heading, code, id=f"{source}#{number}-{heading}"))
    return cases


@pytest.mark.parametrize(("heading", "code"), _cases())
def test_code_block_runs_as_written(heading: str, code: str) -> None:
    if heading.startswith("Health checks"):
        runner = _django_health if "django" in code else _fastapi_health
    else:
        runner = RUNNERS[heading]
    runner(code)
