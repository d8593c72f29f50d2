"""Real Flask apps under a threaded werkzeug server: 300 concurrent requests from 30 users.

Authentication happens in ``before_request`` (``g.user`` or ``set_actor``) or
through Flask-Login, after the middleware opened the request's scope.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, abort, g, request
from flask_login import (  # type: ignore[import-untyped]
    LoginManager,
    UserMixin,
    current_user,
    login_required,
)
from support.load import assert_attributed, hammer
from support.servers import serve_wsgi

from audit_instrument import audit, configure, set_actor
from audit_instrument.integrations.flask import init_app
from audit_instrument.senders import MemorySender

USERS = {f"token-{n}": {"id": f"user_{n}", "email": f"user{n}@example.com", "org": f"org_{n % 3}"}
         for n in range(30)}


def _token(user: int) -> dict[str, str]:
    return {"x-token": f"token-{user}"}


def _actor(user: int) -> str:
    return f"user_{user}"


def _org(user: int) -> str:
    return f"org_{user % 3}"


@audit("doc.read", "R", target="doc_id", metadata=["rid"])
def read_doc(doc_id: str, rid: str) -> None:
    return None


def test_flask_before_request_sets_g_user() -> None:
    memory = MemorySender()
    configure(memory)
    app = Flask(__name__)
    init_app(app, group=lambda: g.user["org"])

    @app.before_request
    def authenticate() -> None:
        user = USERS.get(request.headers.get("x-token", ""))
        if user is None:
            abort(401)
        g.user = user

    @app.post("/docs/<doc_id>")
    def read(doc_id: str) -> dict[str, bool]:
        read_doc(doc_id, request.args["rid"])
        return {"ok": True}

    with serve_wsgi(app) as url:
        sent = hammer(f"{url}/docs/doc_1", headers=_token)
    assert_attributed(memory.events, sent, _actor, group=_org)


def test_flask_before_request_calls_set_actor() -> None:
    memory = MemorySender()
    configure(memory)
    app = Flask(__name__)
    init_app(app)

    @app.before_request
    def authenticate() -> None:
        user = USERS[request.headers["x-token"]]
        set_actor(user, group=user["org"])

    @app.post("/docs/<doc_id>")
    def read(doc_id: str) -> dict[str, bool]:
        read_doc(doc_id, request.args["rid"])
        return {"ok": True}

    with serve_wsgi(app) as url:
        sent = hammer(f"{url}/docs/doc_1", headers=_token)
    assert_attributed(memory.events, sent, _actor, group=_org)


class _User(UserMixin):  # type: ignore[misc]
    def __init__(self, data: dict[str, str]) -> None:
        self.id = data["id"]
        self.email = data["email"]
        self.org = data["org"]


def test_flask_login_current_user() -> None:
    memory = MemorySender()
    configure(memory)
    app = Flask(__name__)
    app.secret_key = "tests"
    login = LoginManager(app)

    @login.request_loader
    def load(req: Any) -> _User | None:
        data = USERS.get(req.headers.get("x-token", ""))
        return _User(data) if data else None

    init_app(app, group=lambda: current_user.org)

    @app.post("/docs/<doc_id>")
    @login_required  # type: ignore[misc]
    def read(doc_id: str) -> dict[str, bool]:
        read_doc(doc_id, request.args["rid"])
        return {"ok": True}

    with serve_wsgi(app) as url:
        sent = hammer(f"{url}/docs/doc_1", headers=_token)
    assert_attributed(memory.events, sent, _actor, group=_org)
    assert {e.actor_name for e in memory.events} == {u["email"] for u in USERS.values()}
