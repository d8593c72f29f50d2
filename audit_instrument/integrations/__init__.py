"""Middleware that opens one audit scope per request.

- :mod:`audit_instrument.integrations.asgi` — Starlette, FastAPI, any ASGI app
- :mod:`audit_instrument.integrations.wsgi` — Flask, any WSGI app
- :mod:`audit_instrument.integrations.flask` — a Flask extension over the WSGI middleware
- :mod:`audit_instrument.integrations.django` — Django (sync and async), with a system check

Each opens an :class:`~audit_instrument.AuditScope` for the whole request,
streamed body included, with the client IP (``X-Forwarded-For`` only from
``trusted_proxies``) and user agent; the actor and group are resolved when
the first event of the request needs them, so authentication that runs
later in the request is seen, and :func:`~audit_instrument.set_actor` works
anywhere inside it. The framework modules are imported on demand: the
library itself needs none of the frameworks.
"""

from __future__ import annotations

from ._proxies import TrustedProxies
from ._request import user_party

__all__ = ["TrustedProxies", "user_party"]
