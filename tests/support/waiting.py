"""Wait for a condition with a deadline instead of sleeping for a guessed time."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

__all__ = ["wait_child", "wait_for"]


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
