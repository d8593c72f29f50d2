"""Real Django apps with session authentication: under WSGI and under uvicorn (ASGI).

300 concurrent requests from 30 users with their session cookies, to sync
and async views; and, under ASGI, a token middleware that sets
``request.user`` itself. 0 events lost, 0 misattributed, no database query
on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import support.django_site as site
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.auth.models import User
from django.contrib.sessions.backends.db import SessionStore
from django.core.asgi import get_asgi_application
from django.core.checks import run_checks
from django.core.wsgi import get_wsgi_application
from django.http import JsonResponse
from django.test import override_settings
from django.urls import path
from support.load import assert_attributed, hammer
from support.servers import serve_asgi, serve_wsgi

from audit_instrument import audit, configure
from audit_instrument.senders import MemorySender


@audit("doc.read", "R", target="doc_id", metadata=["rid"])
def read_doc(doc_id: str, rid: str) -> None:
    return None


def doc_view(request: Any, doc_id: str) -> JsonResponse:
    read_doc(doc_id, request.GET["rid"])
    return JsonResponse({"ok": True})


async def adoc_view(request: Any, doc_id: str) -> JsonResponse:
    await asyncio.sleep(0)
    read_doc(doc_id, request.GET["rid"])
    return JsonResponse({"ok": True})


urlpatterns = [path("docs/<doc_id>", doc_view), path("adocs/<doc_id>", adoc_view)]


def organization(request: Any) -> str:
    """GROUP: read from request.user, which is safe even in an async view."""
    return f"org_{request.user.pk % 3}"


class TokenMiddleware:
    """An API-token authentication middleware: sets ``request.user`` itself (no session)."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        token = request.headers.get("x-token")
        if token is not None:
            request.user = _USERS[int(token.removeprefix("token-"))]
        return self.get_response(request)


_USERS: dict[int, User] = {}
_SESSIONS: dict[int, str] = {}
_SESSION_AUTH = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "audit_instrument.integrations.django.AuditMiddleware",
]


@pytest.fixture(scope="module")
def users() -> dict[int, str]:
    """30 users in the database, each with a logged-in session; ``{user: session key}``."""
    site.migrate()
    if not _SESSIONS:
        for n in range(30):
            user, _ = User.objects.get_or_create(
                username=f"user{n}", defaults={"email": f"user{n}@example.com"})
            _USERS[n] = user
            session = SessionStore()
            session[SESSION_KEY] = str(user.pk)
            session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
            session[HASH_SESSION_KEY] = user.get_session_auth_hash()
            session.save()
            _SESSIONS[n] = session.session_key
    return _SESSIONS


@pytest.fixture
def site_settings() -> Iterator[None]:
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=_SESSION_AUTH,
                           AUDIT_INSTRUMENT={"GROUP": f"{__name__}.organization"}):
        yield


def _expected(users: dict[int, str]) -> tuple[Any, Any]:
    pks = {n: _USERS[n].pk for n in users}
    return (lambda n: str(pks[n])), (lambda n: f"org_{pks[n] % 3}")


@pytest.mark.usefixtures("site_settings")
def test_django_wsgi_with_session_authentication(users: dict[int, str]) -> None:
    memory = MemorySender()
    configure(memory)
    actor, group = _expected(users)
    with serve_wsgi(get_wsgi_application()) as url:
        sent = hammer(f"{url}/docs/doc_1", method="GET",
                      headers=lambda n: {"cookie": f"sessionid={users[n]}"})
    assert_attributed(memory.events, sent, actor, group=group)


@pytest.mark.parametrize("view", ["docs", "adocs"])
@pytest.mark.usefixtures("site_settings")
def test_django_asgi_with_session_authentication(users: dict[int, str], view: str) -> None:
    memory = MemorySender()
    configure(memory)
    actor, group = _expected(users)
    with serve_asgi(get_asgi_application()) as url:
        sent = hammer(f"{url}/{view}/doc_1", method="GET",
                      headers=lambda n: {"cookie": f"sessionid={users[n]}"})
    assert_attributed(memory.events, sent, actor, group=group)


def test_django_asgi_with_a_token_middleware_setting_request_user(users: dict[int, str]) -> None:
    memory = MemorySender()
    configure(memory)
    actor, group = _expected(users)
    middleware = [*_SESSION_AUTH[:2], f"{__name__}.TokenMiddleware", _SESSION_AUTH[2]]
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware,
                           AUDIT_INSTRUMENT={"GROUP": f"{__name__}.organization"}):
        with serve_asgi(get_asgi_application()) as url:
            sent = hammer(f"{url}/adocs/doc_1", method="GET",
                          headers=lambda n: {"x-token": f"token-{n}"})
    assert_attributed(memory.events, sent, actor, group=group)


def test_system_check_reports_a_missing_middleware() -> None:
    with override_settings(MIDDLEWARE=_SESSION_AUTH[:2]):
        errors = run_checks()
    assert [e.id for e in errors] == ["audit_instrument.E001"]
    assert "AuditMiddleware" in errors[0].hint
    with override_settings(MIDDLEWARE=_SESSION_AUTH):
        assert run_checks() == []
