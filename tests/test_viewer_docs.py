"""docs/viewer.md: every Python example runs as written; the mounted apps answer for real."""

from __future__ import annotations

import contextlib
import io
from types import SimpleNamespace
from typing import Any

import httpx
from support.docs import python_blocks
from support.servers import serve_asgi, serve_wsgi

from audit_instrument import AuditEvent, audit_actor

DOC = "docs/viewer.md"


def _run(code: str) -> tuple[dict[str, Any], str]:
    namespace: dict[str, Any] = {"__name__": "docs_example"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<docs/viewer.md>", "exec"), namespace)
    return namespace, out.getvalue()


def _blocks() -> list[str]:
    return [code for _, code in python_blocks(DOC)]


def _event(group: str) -> AuditEvent:
    return AuditEvent(group=group, action="doc.read", action_type="R", actor_id="u1",
                      actor_name="u1", target_id=f"doc_{group}", target_name="doc")


def test_the_prune_example_prints_what_the_page_says() -> None:
    code = next(block for block in _blocks() if "store.prune(" in block)
    namespace, out = _run(code)
    assert out.splitlines() == ["90 1 90", "intact: 30 rows (rows 1-90 pruned)",
                                "intact: 90 rows", "30"]
    assert namespace["result"].kept_older == 0


class _User(SimpleNamespace):
    pass


def test_the_fastapi_example_mounts_a_viewer_that_keeps_tenants_apart() -> None:
    code = next(block for block in _blocks() if "asgi_app(" in block)
    namespace, _ = _run(code)
    store = namespace["store"]
    for group in ("org_a", "org_b"):
        store.send(_event(group))
    app = namespace["app"]

    async def login(scope: Any, receive: Any, send: Any) -> None:  # sets scope["user"]
        headers = dict(scope.get("headers") or [])
        org = headers.get(b"x-org")
        if org is not None and scope["type"] == "http":
            scope["user"] = _User(organization_id=org.decode(), is_staff=False)
        with audit_actor(id="reader", name="reader"):
            await app(scope, receive, send)

    with serve_asgi(login) as url:
        body = httpx.get(f"{url}/audit/api/events", headers={"X-Org": "org_a"}).json()
        assert [e["group"] for e in body["events"]] == ["org_a"]
        assert httpx.get(f"{url}/audit/").status_code == 403
    store.close()


def test_the_flask_example_mounts_a_viewer() -> None:
    import flask_login  # type: ignore[import-untyped]

    code = next(block for block in _blocks() if "flask_blueprint(" in block)
    namespace, _ = _run(code)
    app, store = namespace["app"], namespace["store"]
    for group in ("org_a", "org_b"):
        store.send(_event(group))
    app.secret_key = "docs-test"
    manager = flask_login.LoginManager(app)
    manager.request_loader(lambda request: _LoginUser(request.headers.get("X-Org")))

    @app.before_request
    def reader() -> None:
        from audit_instrument import set_actor

        set_actor(("reader", "reader"))

    from audit_instrument.integrations.flask import init_app

    init_app(app)
    with serve_wsgi(app) as url:
        body = httpx.get(f"{url}/audit/api/events", headers={"X-Org": "org_b"}).json()
        assert [e["group"] for e in body["events"]] == ["org_b"]
        assert httpx.get(f"{url}/audit/").status_code == 403
    store.close()


class _LoginUser:
    is_active = True
    is_anonymous = False
    is_admin = False

    def __init__(self, org: str | None) -> None:
        self.organization_id = org
        self.is_authenticated = org is not None

    def get_id(self) -> str:
        return str(self.organization_id)


def test_every_python_block_is_covered() -> None:
    assert len(_blocks()) == 3
