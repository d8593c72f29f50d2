"""ASGI middleware: the audit context for each request (Starlette, FastAPI, any ASGI app).

>>> from starlette.applications import Starlette
>>> from starlette.middleware import Middleware
>>> from starlette.middleware.authentication import AuthenticationMiddleware
>>> from audit_instrument.integrations.asgi import AuditMiddleware
>>> app = Starlette(middleware=[
...     # Middleware(AuthenticationMiddleware, backend=...),  # sets scope["user"] first
...     Middleware(AuditMiddleware, group=lambda scope: "organization_1",
...                trusted_proxies=["10.0.0.0/8"]),
... ])

The context is bound for the whole call of the app, so it covers every
``await``, tasks the app starts, a ``StreamingResponse`` to its last chunk,
sync endpoints run in the threadpool (anyio copies the context) and
background tasks run after the response. ``lifespan`` scopes pass through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ..context import _current
from ._common import RequestBinder, settle

__all__ = ["AuditMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_BOUND_SCOPES = frozenset({"http", "websocket"})
_PLAIN = frozenset({dict, tuple, str, type(None)})  # what a resolver returns that is no awaitable


def _scope_user(scope: Scope) -> object:
    """Default actor: ``request.state.user`` (``scope["state"]``), else ``scope["user"]``."""
    state = scope.get("state")
    if state:
        user = state.get("user")
        if user is not None:
            return user
    return scope.get("user")


class AuditMiddleware:
    """Bind actor, group, client IP and user agent for each HTTP/WebSocket connection.

    ``actor(scope)`` (sync or async) returns the user — see
    :func:`~audit_instrument.integrations._common.user_party` for what is
    understood; anonymous users mean no actor. Default: ``request.state.user``
    set by an outer middleware, else ``scope["user"]`` from Starlette's
    ``AuthenticationMiddleware`` — so add this middleware *inside* whatever
    authenticates. ``group`` is a string or ``group(scope)``.
    ``trusted_proxies`` lists the proxies (addresses, networks or ``"*"``)
    whose ``X-Forwarded-For`` is believed; otherwise the peer is the location.
    (Behind uvicorn's own ``--proxy-headers``, the peer is already rewritten.)
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        actor: Callable[[Scope], object] | None = None,
        group: str | Callable[[Scope], str | None] | None = None,
        trusted_proxies: Iterable[str] | str = (),
    ) -> None:
        self.app = app
        self._binder: RequestBinder[Scope] = RequestBinder(
            actor=actor, group=group, trusted_proxies=trusted_proxies
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _BOUND_SCOPES:
            await self.app(scope, receive, send)
            return
        binder = self._binder
        user_agent = forwarded = None
        for name, value in scope.get("headers", ()):
            if name == b"user-agent":
                user_agent = value
            elif name == b"x-forwarded-for":  # repeated lines are one list
                forwarded = value if forwarded is None else forwarded + b"," + value
        client = scope.get("client")
        user = binder.user(scope, _scope_user)
        if type(user) not in _PLAIN and hasattr(user, "__await__"):  # an async resolver
            user = await settle("actor", user)
        token = _current.set(
            binder.context(scope, user, client[0] if client else None, forwarded, user_agent)
        )
        try:
            await self.app(scope, receive, send)
        finally:
            _current.reset(token)
