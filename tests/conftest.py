"""Shared fixtures: every test starts with no senders, default settings, empty context."""

from __future__ import annotations

import contextvars
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest

from audit_instrument import config, signals
from audit_instrument.context import _EMPTY, _current


@pytest.fixture(autouse=True)
def _clean_audit_state() -> Iterator[None]:
    """Reset senders, settings and the audit context around each test."""
    config.reset()
    token = _current.set(_EMPTY)
    try:
        yield
    finally:
        _current.reset(token)
        config.reset()
        for signal in signals.namespace.values():
            signal._clear_state()  # blinker's own reset, meant for tests


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.005
) -> None:
    """Wait until ``condition()`` is truthy, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def wait_child(pid: int, timeout: float = 30.0) -> int:
    """A forked child's exit code; kill it and fail if it has not exited in time.

    A bare ``os.waitpid(pid, 0)`` would hang the whole suite if the child
    deadlocked (a lock held across fork); this fails the one test instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError(f"forked child {pid} still running after {timeout}s")
        time.sleep(0.01)


@pytest.fixture
def run_in_fresh_context() -> Callable[..., object]:
    """Run a callable in an empty copy of the context (as a new thread would)."""

    def run(fn: Callable[..., object], *args: object) -> object:
        return contextvars.Context().run(fn, *args)

    return run
