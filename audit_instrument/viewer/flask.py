"""The viewer as a Flask blueprint: ``authorize`` and ``actor`` receive ``flask.request``.

>>> from audit_instrument.viewer import flask_blueprint
>>> app.register_blueprint(flask_blueprint(store, authorize=authorize),
...                        url_prefix="/audit")               # doctest: +SKIP

Flask-Login's ``current_user`` and the session are there as in any view.
"""

from __future__ import annotations

from typing import Any

from ..errors import AuditConfigError
from .core import Viewer, ViewRequest
from .wsgi import request_from_environ

try:
    import flask
except ImportError as error:  # pragma: no cover
    raise AuditConfigError("the Flask viewer needs Flask (pip install flask)") from error

__all__ = ["blueprint"]


def blueprint(viewer: Viewer, name: str = "audit_viewer") -> flask.Blueprint:
    """A blueprint serving ``viewer`` at its ``url_prefix``."""
    bp = flask.Blueprint(name, __name__)

    def serve(subpath: str = "") -> Any:
        # the Request itself, not the context-local proxy standing for it
        request = flask.request._get_current_object()  # type: ignore[attr-defined]
        base = request_from_environ(request.environ)
        path = "/" + subpath
        full = request.path
        root = full[: len(full) - len(subpath)].rstrip("/") if subpath else full.rstrip("/")
        view = ViewRequest(
            method=base.method, path=path, query=base.query, root=root, client=base.client,
            user_agent=base.user_agent, host=base.host, origin=base.origin,
            fetch_site=base.fetch_site,
        )
        if not full.endswith("/") and not subpath:  # the bare prefix: relative links need "/"
            return flask.redirect(root + "/", code=308)
        answer, actor = (viewer.ask(request) if viewer.needs_authorization(view.path)
                         else (None, None))
        result = viewer.handle(view, answer, actor)
        headers: Any = result.headers
        return flask.Response(result.body, status=result.status, headers=headers)

    bp.add_url_rule("/", "index", serve, methods=["GET", "POST"], strict_slashes=False)
    bp.add_url_rule("/<path:subpath>", "page", serve, methods=["GET", "POST"])
    return bp
