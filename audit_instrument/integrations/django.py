"""Django middleware: the audit context for each request, sync or async.

Add it after ``AuthenticationMiddleware`` (it reads ``request.user``)::

    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "audit_instrument.integrations.django.AuditMiddleware",
    ]
    AUDIT_INSTRUMENT = {                         # all optional
        "ACTOR": "myapp.audit.actor",            # callable(request) -> user; async allowed
        "GROUP": "myapp.audit.organization",     # callable(request) -> str
        "TRUSTED_PROXIES": ["10.0.0.0/8"],       # believe X-Forwarded-For from these
    }

Anonymous users mean no actor. Under ASGI the default actor is read with
``await request.auser()``, so no database query runs on the event loop; an
``ACTOR`` resolver used there should be async (or not touch the database).
A ``StreamingHttpResponse`` keeps the context until its last chunk.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings as django_settings  # type: ignore[import-untyped]
from django.http import FileResponse, StreamingHttpResponse  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

from ..context import AuditContext
from ..errors import AuditConfigError
from ._common import RequestBinder, RequestBlock, aiterate_in, iterate_in, settle

__all__ = ["AuditMiddleware"]

Request = Any  # django.http.HttpRequest (Django ships no type hints)
Response = Any


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


def _request_user(request: Request) -> object:
    return getattr(request, "user", None)


def _arequest_user(request: Request) -> object:
    auser = getattr(request, "auser", None)  # set by AuthenticationMiddleware
    return auser() if auser is not None else getattr(request, "user", None)


class AuditMiddleware:
    """Bind actor, group, client IP and user agent for each Django request.

    Configured by the ``AUDIT_INSTRUMENT`` setting (see the module docs); a
    subclass may instead override :meth:`resolve_actor` /
    :meth:`aresolve_actor`.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Request], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        conf = getattr(django_settings, "AUDIT_INSTRUMENT", None) or {}
        if not isinstance(conf, dict):
            raise AuditConfigError("settings.AUDIT_INSTRUMENT must be a dict")
        unknown = set(conf) - {"ACTOR", "GROUP", "TRUSTED_PROXIES"}
        if unknown:
            raise AuditConfigError(
                f"settings.AUDIT_INSTRUMENT: unknown keys {sorted(unknown)} "
                "(known: ACTOR, GROUP, TRUSTED_PROXIES)"
            )
        self._binder: RequestBinder[Request] = RequestBinder(
            actor=_load("ACTOR", conf.get("ACTOR")),
            group=_load("GROUP", conf.get("GROUP")),
            trusted_proxies=conf.get("TRUSTED_PROXIES", ()),
        )

    def resolve_actor(self, request: Request) -> object:
        """The request's user (sync): ``ACTOR(request)`` or ``request.user``."""
        return self._binder.user(request, _request_user)

    async def aresolve_actor(self, request: Request) -> object:
        """The request's user (async): ``ACTOR(request)`` or ``await request.auser()``."""
        return await settle("actor", self._binder.user(request, _arequest_user))

    def _block(self, request: Request, user: object) -> RequestBlock:
        meta = request.META
        return RequestBlock(
            self._binder.context(
                request,
                user,
                meta.get("REMOTE_ADDR"),
                meta.get("HTTP_X_FORWARDED_FOR"),
                meta.get("HTTP_USER_AGENT"),
            )
        )

    def __call__(self, request: Request) -> Response | Awaitable[Response]:
        if self.is_async:
            return self.__acall__(request)
        with self._block(request, self.resolve_actor(request)) as bound:
            response = self.get_response(request)
        return _keep_streaming(response, bound)

    async def __acall__(self, request: Request) -> Response:
        with self._block(request, await self.aresolve_actor(request)) as bound:
            response = await self.get_response(request)
        return _keep_streaming(response, bound)


def _keep_streaming(response: Response, bound: AuditContext) -> Response:
    """Make a streamed body produce its chunks in the request's context.

    ``FileResponse`` is left alone: reading a file emits no events, and
    wrapping it would cost the server's ``wsgi.file_wrapper`` fast path.
    """
    if isinstance(response, StreamingHttpResponse) and not isinstance(response, FileResponse):
        content = response.streaming_content
        if response.is_async:
            response.streaming_content = aiterate_in(bound, content)
        else:
            response.streaming_content = iterate_in(bound, content)
    return response
