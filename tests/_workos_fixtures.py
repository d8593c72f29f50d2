"""Fixtures for the WorkOS, delivery and outbox tests: ``pytest_plugins = ["_workos_fixtures"]``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _workos_helpers import API_KEY, FAST, ServerProcess
from workos_server import WorkOSServer

from audit_instrument.senders.workos import WorkOS


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
