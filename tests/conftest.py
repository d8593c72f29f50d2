"""Shared fixtures: every test starts with no senders, default settings, empty context.

Helpers (event factory, servers, waiting) are in :mod:`support`.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.postgres import pg, postgres_cluster  # noqa: F401  (fixtures: a PostgreSQL server)
from support.workos import API_KEY, FAST, ServerProcess
from support.workos_server import WorkOSServer

from audit_instrument import _stats, config, signals
from audit_instrument.context import _ROOT, _current
from audit_instrument.senders.workos import WorkOS


@pytest.fixture(autouse=True)
def _clean_audit_state() -> Iterator[None]:
    """Reset senders, settings and the audit context around each test."""
    config.reset()
    _stats._reset()
    token = _current.set(_ROOT)
    try:
        yield
    finally:
        _current.reset(token)
        config.reset()
        for signal in signals.namespace.values():
            signal._clear_state()  # blinker's own reset, meant for tests


@pytest.fixture
def run_in_fresh_context() -> Callable[..., object]:
    """Run a callable in an empty copy of the context (as a new thread would)."""

    def run(fn: Callable[..., object], *args: object) -> object:
        return contextvars.Context().run(fn, *args)

    return run


@pytest.fixture
def server() -> Iterator[WorkOSServer]:
    """A WorkOS stand-in on 127.0.0.1 in a thread of this process."""
    with WorkOSServer(api_key=API_KEY) as running:
        yield running


@pytest.fixture
def make_workos(server: WorkOSServer) -> Iterator[Callable[..., WorkOS]]:
    """Build WorkOS senders aimed at ``server``; each is shut down after the test."""
    made: list[WorkOS] = []

    def make(**kwargs: Any) -> WorkOS:
        kwargs.setdefault("base_url", server.url)
        kwargs.setdefault("retry", FAST)
        sender = WorkOS(kwargs.pop("api_key", API_KEY), **kwargs)
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.shutdown(timeout=2)


@pytest.fixture
def server_process() -> Iterator[Callable[..., ServerProcess]]:
    """Start test servers in their own processes; all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        process = ServerProcess(*args)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
