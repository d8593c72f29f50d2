"""The viewer as Django URL patterns: ``authorize`` and ``actor`` receive the ``HttpRequest``.

>>> from django.urls import include, path
>>> from audit_instrument.viewer import django_urls
>>> urlpatterns = [
...     path("audit/", include(django_urls(store, authorize=authorize))),  # doctest: +SKIP
... ]

``request.user`` and the session are there as in any view. The one form
the viewer has (``POST verify``: re-run the chain check) is exempt from
Django's CSRF middleware; the viewer checks itself that it comes from the
same origin, and it changes no data.
"""

from __future__ import annotations

from typing import Any

from ..errors import AuditConfigError
from .core import Viewer, ViewRequest

try:
    from django.http import (  # type: ignore[import-untyped]
        HttpRequest,
        HttpResponse,
        StreamingHttpResponse,
    )
    from django.urls import re_path  # type: ignore[import-untyped]
    from django.views.decorators.csrf import csrf_exempt  # type: ignore[import-untyped]
except ImportError as error:  # pragma: no cover
    raise AuditConfigError("the Django viewer needs Django (pip install django)") from error

__all__ = ["urlpatterns"]


def urlpatterns(viewer: Viewer) -> list[Any]:
    """URL patterns serving ``viewer``, for ``include()`` under a prefix."""

    def serve(request: HttpRequest, subpath: str = "") -> HttpResponse | StreamingHttpResponse:
        full = request.path
        root = full[: len(full) - len(subpath)].rstrip("/")
        query: dict[str, str] = {}
        for name, values in request.GET.lists():
            if values:
                query.setdefault(name, values[0])
        meta = request.META
        view = ViewRequest(
            method=(request.method or "GET").upper(), path="/" + subpath, query=query,
            root=root, client=str(meta.get("REMOTE_ADDR", "")),
            user_agent=str(meta.get("HTTP_USER_AGENT", "")), host=request.get_host(),
            origin=meta.get("HTTP_ORIGIN"), fetch_site=meta.get("HTTP_SEC_FETCH_SITE"),
        )
        answer, actor = (viewer.ask(request) if viewer.needs_authorization(view.path)
                         else (None, None))
        result = viewer.handle(view, answer, actor)
        headers = dict(result.headers)
        if isinstance(result.body, bytes):
            response: HttpResponse | StreamingHttpResponse = HttpResponse(
                result.body, status=result.status)
        else:
            response = StreamingHttpResponse(result.body, status=result.status)
        for name, value in headers.items():
            response[name] = value
        return response

    return [re_path(r"^(?P<subpath>.*)\Z", csrf_exempt(serve))]
