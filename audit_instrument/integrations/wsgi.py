"""WSGI middleware: one audit scope per request (Flask, Django, any WSGI app).

>>> from flask import Flask, g
>>> from audit_instrument.integrations.wsgi import AuditMiddleware
>>> app = Flask(__name__)
>>> app.wsgi_app = AuditMiddleware(
...     app.wsgi_app,
...     actor=lambda environ: g.get("user"),     # read when an event is built
...     group="organization_1",
...     trusted_proxies=["10.0.0.0/8"],
... )

The scope is bound while the app runs *and* while the server iterates the
response body, so events from a streamed response carry the request's actor;
the server's context is restored after each chunk, after ``close()`` and when
the app raises. A body of the server's ``wsgi.file_wrapper`` type is handed
back as it is, so the server can still send the file with ``sendfile()``.
For Flask, :mod:`audit_instrument.integrations.flask` wires this up.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from ..context import AuditScope
from ._request import RequestAudit

__all__ = ["AuditMiddleware"]

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


_DONE: Any = object()


def _remote_user(environ: Environ) -> object:
    """Default actor: ``REMOTE_USER``, set by the server or an auth middleware."""
    return environ.get("REMOTE_USER")


class _Body:
    """The app's response body, iterated and closed inside the request's scope."""

    __slots__ = ("_body", "_scope")

    def __init__(self, body: Iterable[bytes], scope: AuditScope) -> None:
        self._body = body
        self._scope = scope

    def __iter__(self) -> Iterator[bytes]:
        # Each chunk is produced in the request's scope; closing is the server's
        # call to close() below, so the body is not closed here.
        scope = self._scope
        iterator = scope.run(iter, self._body)
        while True:
            chunk = scope.run(next, iterator, _DONE)
            if chunk is _DONE:
                return
            yield chunk

    def close(self) -> None:
        """PEP 3333: the server calls this once, whether or not it iterated."""
        close = getattr(self._body, "close", None)
        if close is not None:
            self._scope.run(close)



class AuditMiddleware:
    """Open an audit scope for each WSGI request.

    ``actor(environ)`` returns the request's user — an object with ``id`` and
    ``email``/``name``/``username``, a mapping, ``(id, name)``, a string
    used as both, or ``None`` (anonymous: no actor yet). It is called when
    an event needs the actor, so what ``before_request`` or an inner
    middleware set is seen. Default: the ``REMOTE_USER`` variable. ``group``
    is a string or ``group(environ)``. ``trusted_proxies`` lists the proxies
    (addresses, networks or ``"*"``) whose ``X-Forwarded-For`` is believed;
    otherwise ``REMOTE_ADDR`` is the location.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        actor: Callable[[Environ], object] | None = None,
        group: str | Callable[[Environ], object] | None = None,
        trusted_proxies: Iterable[str] | str = (),
    ) -> None:
        self.app = app
        self._requests: RequestAudit[Environ] = RequestAudit(
            actor=actor, group=group, trusted_proxies=trusted_proxies, default_actor=_remote_user
        )

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        scope = self._requests.scope(
            environ,
            peer=environ.get("REMOTE_ADDR"),
            forwarded_for=environ.get("HTTP_X_FORWARDED_FOR"),
            user_agent=environ.get("HTTP_USER_AGENT"),
        )
        body = scope.run(self.app, environ, start_response)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
            # A file (Flask's send_file, ...): reading it runs no app code, and
            # unwrapped the server can send it with sendfile() (PEP 3333).
            return body
        return _Body(body, scope)
