"""The viewer as a WSGI application: for Flask (mounted), any WSGI server, the standalone server.

>>> from audit_instrument.viewer import ALL_GROUPS, wsgi_app
>>> app = wsgi_app(store, authorize=lambda environ: ALL_GROUPS)   # doctest: +SKIP

``authorize`` (and ``actor``) receive the WSGI ``environ`` — the request of
a plain WSGI application. In Flask, :func:`~audit_instrument.viewer.flask_blueprint`
gives them Flask's ``request`` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from .core import Viewer, ViewRequest, ViewResponse

__all__ = ["WSGIViewer", "request_from_environ", "start"]

StartResponse = Callable[..., Any]


def request_from_environ(environ: dict[str, Any]) -> ViewRequest:
    """The :class:`ViewRequest` of a WSGI ``environ``."""
    query: dict[str, str] = {}
    for name, value in parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True,
                                 encoding="utf-8", errors="replace"):
        query.setdefault(name, value)
    return ViewRequest(
        method=environ.get("REQUEST_METHOD", "GET").upper(),
        path=environ.get("PATH_INFO", "") or "",
        query=query,
        root=environ.get("SCRIPT_NAME", "").rstrip("/"),
        client=environ.get("REMOTE_ADDR", ""),
        user_agent=environ.get("HTTP_USER_AGENT", ""),
        host=environ.get("HTTP_HOST", ""),
        origin=environ.get("HTTP_ORIGIN"),
        fetch_site=environ.get("HTTP_SEC_FETCH_SITE"),
    )


def redirect_to_root(request: ViewRequest) -> ViewResponse | None:
    """A redirect to ``root/`` for a request at the bare root (relative links need the slash)."""
    if request.path:
        return None
    return ViewResponse(308, [("Location", request.root + "/"), ("Content-Length", "0")], b"")


def start(response: ViewResponse, start_response: StartResponse) -> Iterable[bytes]:
    """Send ``response`` the WSGI way."""
    status = f"{response.status} {HTTPStatus(response.status).phrase}"
    start_response(status, response.headers)
    body = response.body
    return [body] if isinstance(body, bytes) else _closing(body)


def _closing(body: Iterator[bytes]) -> Iterator[bytes]:
    try:
        yield from body
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


class WSGIViewer:
    """A WSGI application serving ``viewer``; ``authorize(environ)``."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = request_from_environ(environ)
        response = redirect_to_root(request)
        if response is None:
            answer, actor = (self.viewer.ask(environ)
                             if self.viewer.needs_authorization(request.path) else (None, None))
            response = self.viewer.handle(request, answer, actor)
        return start(response, start_response)
