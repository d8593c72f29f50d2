"""The web viewer of the audit log: server-rendered HTML and a JSON API, standalone or mounted.

Standalone (standard library only)::

    python -m audit_instrument serve audit.db        # http://127.0.0.1:8765/

Mounted in an application, with a mandatory ``authorize(request)`` that is
given the framework's own request and returns the groups the caller may
read, :data:`ALL_GROUPS`, or an empty set (403)::

    from audit_instrument.viewer import ALL_GROUPS, asgi_app

    def authorize(request):
        user = request.user
        return ALL_GROUPS if user.is_staff else {user.organization_id}

    app.mount("/audit", asgi_app(store, authorize=authorize))        # FastAPI, Starlette

    app.register_blueprint(flask_blueprint(store, authorize=authorize),
                           url_prefix="/audit")                        # Flask

    path("audit/", include(django_urls(store, authorize=authorize)))  # Django

A caller never sees events of other groups — in the list, the event page,
the chart, the exports or the API. Every read is itself an audit event
(``audit_log.view``, ``audit_log.export``) by the reader. See docs/viewer.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._access import ALL_GROUPS, AllGroups
from .core import CSP, Viewer, ViewRequest, ViewResponse
from .wsgi import WSGIViewer

if TYPE_CHECKING:
    from ..store import AuditStore

__all__ = [
    "ALL_GROUPS",
    "CSP",
    "AllGroups",
    "ViewRequest",
    "ViewResponse",
    "Viewer",
    "WSGIViewer",
    "asgi_app",
    "django_urls",
    "flask_blueprint",
    "wsgi_app",
]


def wsgi_app(store: AuditStore, *, authorize: Any, **options: Any) -> WSGIViewer:
    """A WSGI application; ``authorize(environ)`` (see :class:`Viewer` for ``options``)."""
    return WSGIViewer(Viewer(store, authorize=authorize, **options))


def asgi_app(store: AuditStore, *, authorize: Any, **options: Any) -> Any:
    """An ASGI application for Starlette/FastAPI; ``authorize(starlette Request)``, may be async."""
    from .asgi import ASGIViewer

    return ASGIViewer(Viewer(store, authorize=authorize, **options))


def flask_blueprint(
    store: AuditStore, *, authorize: Any, name: str = "audit_viewer", **options: Any
) -> Any:
    """A Flask blueprint; ``authorize(flask.request)``. Register it with a ``url_prefix``."""
    from .flask import blueprint

    return blueprint(Viewer(store, authorize=authorize, **options), name)


def django_urls(store: AuditStore, *, authorize: Any, **options: Any) -> list[Any]:
    """URL patterns for Django's ``include()``; ``authorize(HttpRequest)``."""
    from .django import urlpatterns

    return urlpatterns(Viewer(store, authorize=authorize, **options))
