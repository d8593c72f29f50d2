"""What the tests share: one event factory, real servers, waiting helpers.

- :mod:`support.events` — ``make_event(i, **fields)`` and the WorkOS wire examples
- :mod:`support.waiting` — wait on a condition or a forked child, with a deadline
- :mod:`support.servers` — uvicorn and werkzeug servers on 127.0.0.1
- :mod:`support.workos` — the fake WorkOS server as a process, the API key, fast retries
- :mod:`support.workos_server` — the fake WorkOS server itself (also a script)
- :mod:`support.store` — fill an audit store, tamper with it behind its back
- :mod:`support.postgres` — a throwaway PostgreSQL cluster, a schema per test
- :mod:`support.viewer` — a two-tenant store with hostile values, who may read what
- :mod:`support.browser` — headless Chromium (Debian's) driven by Playwright

Fixtures live in ``tests/conftest.py``.
"""
