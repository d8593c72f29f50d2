"""The viewer mounted in real applications — FastAPI (ASGI), Starlette, Flask, Django, plain
WSGI — each served by a real server on 127.0.0.1: ``authorize`` gets the framework's own
request, a tenant sees only their group, reads are recorded with the app's actor."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from support.servers import serve_asgi, serve_wsgi
from support.viewer import MARKER, ORG1, ORG2, groups_of, tenant_store

from audit_instrument import configure
from audit_instrument.senders import MemorySender
from audit_instrument.store import AuditStore
from audit_instrument.viewer import Viewer, asgi_app, django_urls, flask_blueprint, wsgi_app

N = 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    with tenant_store(tmp_path / "audit.db", N) as made:
        yield made


@pytest.fixture
def memory() -> MemorySender:
    sender = MemorySender()
    configure(sender)  # the viewer records reads with emit(): to the app's senders
    return sender


def _user(headers: Any) -> dict[str, str] | None:
    name = headers.get("x-user")
    return {"id": name, "email": f"{name}@example.com"} if name else None


def _wait_for_verify(app: Any) -> None:
    viewer = app if isinstance(app, Viewer) else None
    if viewer is not None:
        viewer.chain.wait(30)


def check_mounted(base: str, memory: MemorySender, seen: list[type]) -> None:
    """What every mounting must do, at ``base`` (e.g. http://127.0.0.1:1234/audit)."""
    as_alice = {"X-User": "alice"}
    with httpx.Client(timeout=30) as client:
        bare = client.get(base, headers=as_alice)
        assert bare.status_code in (301, 307, 308)
        assert bare.headers["location"].endswith("/audit/")
        page = client.get(base + "/", headers=as_alice)
        assert page.status_code == 200, page.text
        text = page.text
        assert "alice0@example.com" in text and MARKER not in text and "bob0@" not in text
        assert 'href="/audit/viewer.css"' in text and 'href="/audit/event?id=' in text
        assert client.get(base + "/viewer.css").headers["content-type"].startswith("text/css")
        for user in ("", "mallory"):
            assert client.get(base + "/", headers={"X-User": user}).status_code == 403
        assert client.get(base + "/event", params={"id": f"{ORG2}-1"},
                          headers=as_alice).status_code == 404
        assert client.get(base + "/event", params={"id": f"{ORG1}-2"},
                          headers=as_alice).status_code == 200
        rows = list(csv.reader(io.StringIO(
            client.get(base + "/export.csv", headers=as_alice).text)))
        assert len(rows) == 1 + N + 2 and {row[1] for row in rows[1:]} == {ORG1}
        api = client.get(base + "/api/events", params={"group": ORG2}, headers=as_alice)
        assert api.json() == {"events": [], "next_cursor": None}
        chart = client.get(base + "/chart.svg", headers={"X-User": "bob"}).text
        assert MARKER.lower() in chart
        assert MARKER.lower() not in client.get(base + "/chart.svg", headers=as_alice).text
        admin = client.get(base + "/api/events", params={"limit": "1000"},
                           headers={"X-User": "admin"}).json()
        assert {r["group"] for r in admin["events"]} == {ORG1, ORG2}
    reads = [e for e in memory.events if e.action.startswith("audit_log.")]
    assert {(e.actor_id, e.group) for e in reads if e.actor_id == "alice"} == {("alice", ORG1)}
    assert {e.action for e in reads} == {"audit_log.view", "audit_log.export"}
    assert seen and all(kind is seen[0] for kind in seen)


def _authorize(seen: list[type], headers: Callable[[Any], Any]) -> Callable[[Any], object]:
    def authorize(request: Any) -> object:
        seen.append(type(request))
        return groups_of(headers(request).get("x-user"))
    return authorize


def test_fastapi_mounts_the_asgi_app(store: AuditStore, memory: MemorySender) -> None:
    from fastapi import FastAPI
    from starlette.requests import Request

    from audit_instrument.integrations.asgi import AuditMiddleware

    seen: list[type] = []

    async def authorize(request: Request) -> object:  # async is fine under ASGI
        return _authorize(seen, lambda r: r.headers)(request)

    app = FastAPI()
    app.add_middleware(AuditMiddleware, actor=lambda scope: _user(
        {k.decode(): v.decode() for k, v in scope["headers"]}))
    viewer = asgi_app(store, authorize=authorize)
    app.mount("/audit", viewer)
    with serve_asgi(app) as url:
        check_mounted(url + "/audit", memory, seen)
    viewer.viewer.chain.wait(30)
    assert seen[0] is Request


def test_starlette_mounts_the_asgi_app_with_an_actor_function(store: AuditStore) -> None:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Mount

    seen: list[type] = []
    recorded: list[Any] = []
    viewer = asgi_app(store, authorize=_authorize(seen, lambda r: r.headers),
                      actor=lambda request: _user(request.headers), record=recorded.append)
    app = Starlette(routes=[Mount("/audit", viewer)])
    memory = MemorySender()
    with serve_asgi(app) as url:
        check_mounted(url + "/audit", _Into(memory, recorded), seen)
    viewer.viewer.chain.wait(30)
    assert seen[0] is Request


class _Into(MemorySender):
    """A MemorySender view of events recorded elsewhere (a list)."""

    def __init__(self, memory: MemorySender, recorded: list[Any]) -> None:
        self._recorded = recorded

    @property
    def events(self) -> list[Any]:  # type: ignore[override]
        return self._recorded


def test_flask_registers_the_blueprint(store: AuditStore, memory: MemorySender) -> None:
    import flask

    from audit_instrument.integrations.flask import init_app

    seen: list[type] = []
    app = flask.Flask(__name__)
    init_app(app, actor=lambda: _user(flask.request.headers))
    viewer = Viewer(store, authorize=_authorize(seen, lambda r: r.headers))
    from audit_instrument.viewer.flask import blueprint

    app.register_blueprint(blueprint(viewer), url_prefix="/audit")

    @app.get("/")
    def home() -> str:
        return "the application's own page"

    with serve_wsgi(app) as url:
        check_mounted(url + "/audit", memory, seen)
        assert httpx.get(url + "/").text == "the application's own page"
    viewer.chain.wait(30)
    assert issubclass(seen[0], flask.Request)
    assert callable(flask_blueprint)


def test_plain_wsgi_under_a_dispatcher(store: AuditStore, memory: MemorySender) -> None:
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    from audit_instrument.integrations.wsgi import AuditMiddleware

    seen: list[type] = []

    def headers(environ: dict[str, Any]) -> dict[str, str]:
        return {"x-user": environ.get("HTTP_X_USER", "")}

    viewer = wsgi_app(store, authorize=_authorize(seen, headers))

    def other(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not here"]

    app = AuditMiddleware(DispatcherMiddleware(other, {"/audit": viewer}),
                          actor=lambda environ: _user(headers(environ)))
    with serve_wsgi(app) as url:
        check_mounted(url + "/audit", memory, seen)
    viewer.viewer.chain.wait(30)
    assert seen[0] is dict


# -- Django: the urlconf is this module --------------------------------------------------------

urlpatterns: list[Any] = []


class HeaderUser:
    """Sets ``request.user`` from the X-User header, as a token middleware would."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        name = request.headers.get("x-user")
        request.user = SimpleNamespace(id=name, email=f"{name}@example.com",
                                       is_authenticated=bool(name), pk=name)
        return self.get_response(request)


def test_django_includes_the_urls(store: AuditStore, memory: MemorySender) -> None:
    import support.django_site  # noqa: F401 - configures Django
    from django.core.wsgi import get_wsgi_application
    from django.http import HttpRequest
    from django.test import override_settings
    from django.urls import include, path

    seen: list[type] = []
    urls = django_urls(store, authorize=_authorize(seen, lambda r: r.headers))
    urlpatterns[:] = [path("audit/", include(urls))]
    middleware = [
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        f"{__name__}.HeaderUser",
        "audit_instrument.integrations.django.AuditMiddleware",
    ]
    with override_settings(ROOT_URLCONF=__name__, MIDDLEWARE=middleware):
        with serve_wsgi(get_wsgi_application()) as url:
            check_mounted(url + "/audit", memory, seen)
            verify = httpx.post(url + "/audit/verify", headers={
                "X-User": "admin", "Origin": url, "Sec-Fetch-Site": "same-origin"})
            assert verify.status_code == 303  # the CSRF middleware lets the viewer's form in
    assert issubclass(seen[0], HttpRequest)
    view = urls[0].callback
    assert getattr(view, "csrf_exempt", False)
