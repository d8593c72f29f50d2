"""What the middlewares share: reading a framework's user, and one audit scope per request.

Each middleware hands :class:`RequestAudit` what it reads from its request —
the peer address, ``X-Forwarded-For`` and ``User-Agent`` — and binds the
:class:`~audit_instrument.AuditScope` it returns for the whole request. The
actor and group are resolved late, when an event of the request is built, so
authentication that runs after the middleware is seen. Resolvers supplied by
the user never turn a request into a 500: their failures are counted and
logged once per cause (raised in strict mode).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

from .. import _stats as stats
from .._party import Party, resolve_party
from ..config import settings
from ..context import AuditScope
from ..errors import AuditConfigError
from ._proxies import TrustedProxies

__all__ = ["RequestAudit", "user_party"]

Req = TypeVar("Req")


def _attribute(user: object, name: str) -> object:
    try:
        return getattr(user, name, None)
    except NotImplementedError:  # Starlette's BaseUser leaves these abstract
        return None


def user_party(user: object) -> Party | None:
    """``(id, name)`` of a framework's user object; ``None`` for anonymous users.

    Understands what :func:`~audit_instrument.context.resolve_party` does
    (``id`` + ``email``/``name``/``username``, mappings, ``(id, name)``),
    Django users (``is_authenticated``, ``pk``), Starlette users
    (``identity``, ``display_name``) and Flask-Login's ``current_user``. A
    plain string is taken as both id and name (``REMOTE_USER``).
    """
    if user is None:
        return None
    if isinstance(user, str):
        return (user, user) if user else None
    if isinstance(user, (tuple, dict)):
        return resolve_party(user)
    if _attribute(user, "is_authenticated") is False:
        return None
    if _attribute(user, "id") is not None:
        return resolve_party(user)
    ident = _attribute(user, "pk") or _attribute(user, "identity") or _attribute(
        user, "display_name"
    )
    if ident is None or ident == "":
        return None
    name = _attribute(user, "email") or _attribute(user, "display_name") or ident
    return str(ident), str(name)


def _text(value: str | bytes | None) -> str | None:
    """A header value as text: bytes are Latin-1 (HTTP's), as ASGI servers leave them."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


class RequestAudit(Generic[Req]):
    """Opens the audit scope of each request of one middleware.

    ``actor`` and ``group`` are the user's resolvers, called with the
    framework's request object (ASGI scope, WSGI environ, Django request):
    ``actor`` returns a user (see :func:`user_party`), ``group`` a string
    (or ``group`` is a constant string; without it the group of the
    enclosing scope is kept). Plain functions are called late, when an event
    needs the value; ``async def`` resolvers cannot run while an event is
    built, so the middleware awaits them when the request starts (and again
    after the view's authentication where the framework allows, see Django).
    """

    __slots__ = (
        "_late_actor", "_late_group", "actor", "async_actor", "async_group", "default_actor",
        "group", "proxies",
    )

    def __init__(
        self,
        *,
        actor: Callable[[Req], object] | None,
        group: str | Callable[[Req], object] | None,
        trusted_proxies: Iterable[str] | str,
        default_actor: Callable[[Req], object],
    ) -> None:
        if actor is not None and not callable(actor):
            raise AuditConfigError(f"actor= takes a callable over the request, not {actor!r}")
        if group is not None and not (isinstance(group, str) or callable(group)):
            raise AuditConfigError(
                f"group= takes a string or a callable over the request, not {group!r}"
            )
        self.actor = actor or default_actor
        self.group = group
        self.default_actor = default_actor
        self.async_actor = inspect.iscoroutinefunction(self.actor)
        self.async_group = callable(group) and inspect.iscoroutinefunction(group)
        self.proxies = TrustedProxies(trusted_proxies)
        # Late resolvers, bound once: a scope per request, and nothing else made for it.
        self._late_actor = None if self.async_actor else self._actor_of
        self._late_group = (self._group_of if callable(group) and not self.async_group
                            else None)

    def scope(
        self,
        request: Req,
        *,
        peer: str | None,
        forwarded_for: str | bytes | None,
        user_agent: str | bytes | None,
    ) -> AuditScope:
        """The request's scope: client IP and user agent now, actor and group when needed."""
        scope = AuditScope(
            location=self.proxies.client_ip(peer, _text(forwarded_for)),
            user_agent=_text(user_agent),
            resolve_actor=self._late_actor,
            resolve_group=self._late_group,
            source=request,
        )
        if isinstance(self.group, str):
            scope.set(group=self.group)
        return scope

    def _actor_of(self, request: Req) -> Party | None:
        return user_party(self.actor(request))

    def _group_of(self, request: Req) -> object:
        assert callable(self.group)
        return self.group(request)

    async def settle_async(self, request: Req, scope: AuditScope) -> None:
        """Await the ``async def`` resolvers (if any) and put what they found in ``scope``."""
        if self.async_actor:
            user = await self._call(self.actor, request, "actor")
            party = self._party(user)
            if party is not None:
                scope.set(actor=party)
        if self.async_group and callable(self.group):
            group = await self._call(self.group, request, "group")
            if group is not None:
                scope.set(group=str(group))

    @staticmethod
    async def _call(resolver: Callable[[Req], object], request: Req, label: str) -> object:
        try:
            value = resolver(request)
            return await value if isinstance(value, Awaitable) else value
        except Exception as error:
            if settings.strict:
                raise
            stats.note_failure(f"{label} resolver {resolver!r}: {type(error).__name__}",
                               f"the middleware's {label} resolver failed: "
                               f"{type(error).__name__}: {error}", error=error)
            return None

    @staticmethod
    def _party(user: object) -> Party | None:
        try:
            return user_party(user)
        except Exception as error:
            if settings.strict:
                raise
            stats.note_failure(f"actor from {type(user).__name__}",
                               f"could not read an actor from a {type(user).__name__}: {error}",
                               error=error)
            return None
