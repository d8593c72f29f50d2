"""Middleware that binds the audit context once per request.

- :mod:`audit_instrument.integrations.asgi` — Starlette, FastAPI, any ASGI app
- :mod:`audit_instrument.integrations.wsgi` — Flask, any WSGI app
- :mod:`audit_instrument.integrations.django` — Django (sync and async)

Each binds actor, group, location (client IP; ``X-Forwarded-For`` only from
``trusted_proxies``) and user agent with :func:`~audit_instrument.audit_actor`
for the whole request, streamed body included, and restores the previous
context afterwards, also when the app raises. The framework modules are
imported on demand: the library itself needs none of the frameworks.
"""

from __future__ import annotations

from ._common import TrustedProxies, user_party

__all__ = ["TrustedProxies", "user_party"]
