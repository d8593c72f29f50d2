"""WSGI middleware: the audit context for each request (Flask, Django, any WSGI app).

>>> from flask import Flask
>>> from audit_instrument.integrations.wsgi import AuditMiddleware
>>> app = Flask(__name__)
>>> app.wsgi_app = AuditMiddleware(
...     app.wsgi_app,
...     actor=lambda environ: environ.get("REMOTE_USER"),
...     group="organization_1",
...     trusted_proxies=["10.0.0.0/8"],
... )

The context is bound while the app runs *and* while the server iterates the
response body, so events from a streamed response carry the request's actor;
it is restored after each chunk, after ``close()`` and when the app raises.
A body of the server's ``wsgi.file_wrapper`` type is handed back as it is,
so the server can still send the file with ``sendfile()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any

from ..context import AuditContext
from ._common import RequestBinder, call_in, steps_in

__all__ = ["AuditMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]
_ExcInfo = tuple[type[BaseException], BaseException, TracebackType]


def _remote_user(environ: Environ) -> object:
    """Default actor: ``REMOTE_USER``, set by the server or an auth middleware."""
    return environ.get("REMOTE_USER")


class _Body:
    """The app's response body, iterated and closed inside the request's context."""

    __slots__ = ("_body", "_bound")

    def __init__(self, body: Iterable[bytes], bound: AuditContext) -> None:
        self._body = body
        self._bound = bound

    def __iter__(self) -> Iterator[bytes]:
        bound = self._bound
        yield from steps_in(bound, call_in(bound, iter, self._body))

    def close(self) -> None:
        """PEP 3333: the server calls this once, whether or not it iterated."""
        close = getattr(self._body, "close", None)
        if close is not None:
            call_in(self._bound, close)


class AuditMiddleware:
    """Bind actor, group, client IP and user agent for each WSGI request.

    ``actor(environ)`` returns the request's user — an object with ``id`` and
    ``email``/``name``/``username``, a mapping, ``(id, name)``, a string
    used as both, or ``None`` (anonymous: no actor). Default: the
    ``REMOTE_USER`` variable. ``group`` is a string or ``group(environ)``.
    ``trusted_proxies`` lists the proxies (addresses, networks or ``"*"``)
    whose ``X-Forwarded-For`` is believed; otherwise ``REMOTE_ADDR`` is the
    location.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        actor: Callable[[Environ], object] | None = None,
        group: str | Callable[[Environ], str | None] | None = None,
        trusted_proxies: Iterable[str] | str = (),
    ) -> None:
        self.app = app
        self._binder: RequestBinder[Environ] = RequestBinder(
            actor=actor, group=group, trusted_proxies=trusted_proxies
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        binder = self._binder
        bound = binder.context(
            environ,
            binder.user(environ, _remote_user),
            environ.get("REMOTE_ADDR"),
            environ.get("HTTP_X_FORWARDED_FOR"),
            environ.get("HTTP_USER_AGENT"),
        )
        body = call_in(bound, self.app, environ, start_response)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
            # A file (Flask's send_file, ...): reading it runs no app code, and
            # unwrapped the server can send it with sendfile() (PEP 3333).
            return body
        return _Body(body, bound)
