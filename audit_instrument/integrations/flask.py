"""Flask: one audit scope per request, the actor read where Flask keeps it.

>>> from flask import Flask
>>> from audit_instrument.integrations.flask import init_app
>>> app = Flask(__name__)
>>> init_app(app, group="organization_1")

The actor is read when the first event of a request is built, inside the
request: by default Flask-Login's ``current_user`` when Flask-Login is set
up on the app, else ``g.user``. So a ``before_request`` that authenticates
(and sets ``g.user``, or calls ``set_actor``) is seen. Pass
``actor=lambda: ...`` and ``group=lambda: ...`` (no arguments: use ``g``,
``request``, ``current_user``) to read something else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, current_app, g, has_app_context

from .wsgi import AuditMiddleware

__all__ = ["init_app"]


def _default_user() -> object:
    """Flask-Login's ``current_user`` if the app has a login manager, else ``g.user``."""
    if getattr(current_app, "login_manager", None) is not None:
        from flask_login import current_user  # type: ignore[import-untyped]

        return current_user._get_current_object()
    return g.get("user")


def init_app(
    app: Flask,
    *,
    actor: Callable[[], object] | None = None,
    group: str | Callable[[], object] | None = None,
    trusted_proxies: Iterable[str] | str = (),
) -> AuditMiddleware:
    """Wrap ``app.wsgi_app`` in :class:`~audit_instrument.integrations.wsgi.AuditMiddleware`.

    ``actor()`` and ``group()`` take no arguments (Flask's context locals are
    there); outside the app context (a body streamed without
    ``stream_with_context``) they are not asked. Returns the middleware.
    """
    read_user = actor or _default_user

    def user(environ: dict[str, Any]) -> object:
        return read_user() if has_app_context() else None

    def group_of(environ: dict[str, Any]) -> object:
        assert callable(group)
        return group() if has_app_context() else None

    middleware = AuditMiddleware(
        app.wsgi_app,
        actor=user,
        group=group_of if callable(group) else group,
        trusted_proxies=trusted_proxies,
    )
    app.wsgi_app = middleware  # type: ignore[method-assign]
    return middleware
