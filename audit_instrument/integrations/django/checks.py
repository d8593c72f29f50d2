"""System check: the app is installed but ``AuditMiddleware`` is not in ``MIDDLEWARE``.

Without the middleware no request opens an audit scope, so events of views
have no actor and are reported as invalid — at run time, one request at a
time. ``manage.py check`` (and ``runserver``) say so at start-up instead.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings  # type: ignore[import-untyped]
from django.core.checks import Error, register  # type: ignore[import-untyped]
from django.utils.module_loading import import_string  # type: ignore[import-untyped]

__all__ = ["check_middleware"]

_PATH = "audit_instrument.integrations.django.AuditMiddleware"


@register()  # type: ignore[untyped-decorator]
def check_middleware(app_configs: Any = None, **kwargs: Any) -> list[Any]:
    """``audit_instrument.E001`` when no entry of ``MIDDLEWARE`` is (a subclass of) ours."""
    from . import AuditMiddleware

    for entry in getattr(settings, "MIDDLEWARE", None) or ():
        if entry == _PATH:
            return []
        try:
            middleware = import_string(entry)
        except ImportError:
            continue
        if isinstance(middleware, type) and issubclass(middleware, AuditMiddleware):
            return []
    return [
        Error(
            "audit_instrument is installed but its AuditMiddleware is not in MIDDLEWARE, so "
            "no request opens an audit scope and events of views have no actor.",
            hint=f"Add {_PATH!r} to MIDDLEWARE (after AuthenticationMiddleware).",
            id="audit_instrument.E001",
        )
    ]
