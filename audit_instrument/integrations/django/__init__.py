"""Django: one audit scope per request, sync or async, and a system check.

Add the app (for the system check) and the middleware::

    INSTALLED_APPS = [..., "audit_instrument.integrations.django"]
    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "audit_instrument.integrations.django.AuditMiddleware",
    ]
    AUDIT_INSTRUMENT = {                         # all optional
        "ACTOR": "myapp.audit.actor",            # callable(request) -> user
        "GROUP": "myapp.audit.organization",     # callable(request) -> str
        "TRUSTED_PROXIES": ["10.0.0.0/8"],       # believe X-Forwarded-For from these
    }

The actor is ``request.user`` by default, read when an event needs it — so a
token-authentication middleware that sets ``request.user`` anywhere in
``MIDDLEWARE`` is seen. Under ASGI no database query may run on the event
loop: the middleware loads the user in its async ``process_view`` (after every
middleware has run): ``request.user`` if a middleware set it, else
``await request.auser()``. ``async def`` resolvers are awaited there too.
Anonymous users mean no actor. A ``StreamingHttpResponse`` keeps the scope
until its last chunk. ``set_actor(user)`` works anywhere in the request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.http import FileResponse, StreamingHttpResponse  # type: ignore[import-untyped]
from django.utils.functional import LazyObject, empty  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from ...context import AuditScope
from ...errors import AuditConfigError
from .._request import RequestAudit
from .models import AuditedManager, AuditedQuerySet, AuditedQuerySetMixin, audit_model

__all__ = ["AuditMiddleware", "AuditedManager", "AuditedQuerySet", "AuditedQuerySetMixin",
           "audit_model"]

Request = Any  # django.http.HttpRequest (Django ships no type hints)
Response = Any
_KNOWN = ("ACTOR", "GROUP", "TRUSTED_PROXIES")
_SCOPE = "_audit_instrument_scope"


def _load(key: str, value: object) -> Any:
    """A resolver from the settings: a callable, or a dotted path to one."""
    if isinstance(value, str):
        try:
            value = import_string(value)
        except ImportError as error:
            raise AuditConfigError(f"settings.AUDIT_INSTRUMENT[{key!r}]: {error}") from None
    if value is not None and not callable(value):
        raise AuditConfigError(
            f"settings.AUDIT_INSTRUMENT[{key!r}] must be a callable(request) "
            f"or a dotted path to one, not {value!r}"
        )
    return value


def _unloaded(user: object) -> bool:
    """Whether ``user`` is AuthenticationMiddleware's lazy user, not read from the database yet."""
    return isinstance(user, LazyObject) and user._wrapped is empty


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _request_user(request: Request) -> object:
    """Default actor, read when an event is built: ``request.user``.

    On an event loop the lazy user of ``AuthenticationMiddleware`` would query
    the database there (``SynchronousOnlyOperation``): it is left to
    ``process_view``, which loads it with ``await request.auser()``.
    """
    user = request.__dict__.get("user")
    if user is None or (_unloaded(user) and _on_event_loop()):
        return None
    return user


class AuditMiddleware:
    """Open an audit scope for each Django request.

    Configured by the ``AUDIT_INSTRUMENT`` setting (see the module docs);
    the configuration is checked when Django loads its middleware, at start-up.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Request], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
            self.process_view = self._aprocess_view
        conf = getattr(django_settings, "AUDIT_INSTRUMENT", None) or {}
        if not isinstance(conf, dict):
            raise AuditConfigError("settings.AUDIT_INSTRUMENT must be a dict")
        unknown = set(conf) - set(_KNOWN)
        if unknown:
            raise AuditConfigError(
                f"settings.AUDIT_INSTRUMENT: unknown keys {sorted(unknown)} "
                f"(known: {', '.join(_KNOWN)})"
            )
        self._requests: RequestAudit[Request] = RequestAudit(
            actor=_load("ACTOR", conf.get("ACTOR")),
            group=_load("GROUP", conf.get("GROUP")),
            trusted_proxies=conf.get("TRUSTED_PROXIES", ()),
            default_actor=_request_user,
        )

    def _scope(self, request: Request) -> AuditScope:
        meta = request.META
        scope = self._requests.scope(
            request,
            peer=meta.get("REMOTE_ADDR"),
            forwarded_for=meta.get("HTTP_X_FORWARDED_FOR"),
            user_agent=meta.get("HTTP_USER_AGENT"),
        )
        setattr(request, _SCOPE, scope)
        return scope

    def __call__(self, request: Request) -> Response | Awaitable[Response]:
        if self.is_async:
            return self.__acall__(request)
        scope = self._scope(request)
        response = scope.run(self.get_response, request)
        return _keep_streaming(response, scope)

    async def __acall__(self, request: Request) -> Response:
        scope = self._scope(request)
        with scope:
            response = await self.get_response(request)
        return _keep_streaming(response, scope)

    async def _aprocess_view(
        self, request: Request, view: object, args: object, kwargs: object
    ) -> None:
        """Under ASGI, once every middleware ran: load the user without blocking the loop."""
        scope: AuditScope | None = getattr(request, _SCOPE, None)
        if scope is None:
            return
        requests = self._requests
        if requests.async_actor or requests.async_group:
            await requests.settle_async(request, scope)
        if _unloaded(request.__dict__.get("user")):
            auser = getattr(request, "auser", None)
            if auser is not None:
                # Loaded here, off the event loop's toes; request.user then holds it,
                # so views and resolvers may read it on the loop.
                user = await auser()
                request.user = user
                if requests.actor is _request_user:
                    party = requests._party(user)
                    if party is not None:
                        scope.set(actor=party)


def _keep_streaming(response: Response, scope: AuditScope) -> Response:
    """Make a streamed body produce its chunks in the request's scope.

    ``FileResponse`` is left alone: reading a file emits no events, and
    wrapping it would cost the server's ``wsgi.file_wrapper`` fast path.
    """
    if isinstance(response, StreamingHttpResponse) and not isinstance(response, FileResponse):
        content = response.streaming_content
        if response.is_async:
            response.streaming_content = scope.aiterate(content)
        else:
            response.streaming_content = scope.iterate(content)
    return response
