"""ASGI middleware: one audit scope per request (Starlette, FastAPI, any ASGI app).

>>> from fastapi import FastAPI
>>> from audit_instrument.integrations.asgi import AuditMiddleware
>>> app = FastAPI()
>>> app.add_middleware(AuditMiddleware, group="organization_1")

The scope covers the whole call of the app: every ``await``, tasks the app
starts, a ``StreamingResponse`` to its last chunk, sync endpoints and
dependencies run in the threadpool (anyio copies the context, and the copy
shares the scope) and background tasks run after the response.
``lifespan`` scopes pass through.

The actor is read when the first event of the request is built: by default
``request.state.user`` (what a FastAPI dependency or your own middleware
sets), else ``scope["user"]`` (Starlette's ``AuthenticationMiddleware``, in
any order with this one). ``set_actor(user)`` anywhere in the request works
too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._request import RequestAudit

__all__ = ["AuditMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_OPENED = frozenset({"http", "websocket"})


def _scope_user(scope: Scope) -> object:
    """Default actor: ``request.state.user`` (``scope["state"]``), else ``scope["user"]``."""
    state = scope.get("state")
    user = state.get("user") if state else None
    return user if user is not None else scope.get("user")


class AuditMiddleware:
    """Open an audit scope for each HTTP/WebSocket connection.

    ``actor(scope)`` returns the request's user — see
    :func:`~audit_instrument.integrations.user_party` for what is understood;
    anonymous users mean no actor (yet). ``group`` is a string or
    ``group(scope)``. Plain functions are called when an event needs the
    value; ``async def`` resolvers are awaited when the request starts.
    ``trusted_proxies`` lists the proxies (addresses, networks or ``"*"``)
    whose ``X-Forwarded-For`` is believed; otherwise the peer is the
    location. (Behind uvicorn's own ``--proxy-headers``, the peer is already
    rewritten; see docs/frameworks.md.)
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        actor: Callable[[Scope], object] | None = None,
        group: str | Callable[[Scope], object] | None = None,
        trusted_proxies: Iterable[str] | str = (),
    ) -> None:
        self.app = app
        self._requests: RequestAudit[Scope] = RequestAudit(
            actor=actor, group=group, trusted_proxies=trusted_proxies, default_actor=_scope_user
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _OPENED:
            await self.app(scope, receive, send)
            return
        user_agent = forwarded = None
        for name, value in scope.get("headers", ()):
            if name == b"user-agent":
                user_agent = value
            elif name == b"x-forwarded-for":  # repeated lines are one list
                forwarded = value if forwarded is None else forwarded + b"," + value
        client = scope.get("client")
        requests = self._requests
        audit_scope = requests.scope(scope, peer=client[0] if client else None,
                                     forwarded_for=forwarded, user_agent=user_agent)
        if requests.async_actor or requests.async_group:
            await requests.settle_async(scope, audit_scope)
        with audit_scope:
            await self.app(scope, receive, send)
