"""The caller's view of one delivery: wait on it, await it, or attach callbacks.

A :class:`DeliveryHandle` is created per event in the caller's thread and
completed by the delivery engine's thread. Creating one costs a few hundred
nanoseconds: the threading primitives a waiter needs are made only when
somebody waits.

>>> handle = workos.create_event(event)            # doctest: +SKIP
>>> handle.result(timeout=5)                        # doctest: +SKIP
>>> await workos.create_event(event)                # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Generator
from typing import Any

from ..errors import DeliveryError
from ..event import AuditEvent

__all__ = ["DeliveryHandle"]

logger = logging.getLogger("audit_instrument")

_PENDING, _DELIVERED, _FAILED = 0, 1, 2
_STATE_NAMES = {_PENDING: "pending", _DELIVERED: "delivered", _FAILED: "failed"}
# One lock for every handle: completion and waiter registration are rare and
# short, and a per-handle lock would cost the caller an allocation per event.
_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # A delivery thread of the parent may have held the lock at fork time; in
    # the child that thread is gone and the lock would stay taken for ever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)


class DeliveryHandle:
    """The outcome of delivering :attr:`event`: pending, delivered or failed.

    ``result(timeout)`` blocks until the destination accepted the event (and
    returns it) or raises :class:`~audit_instrument.DeliveryError`;
    ``await handle`` does the same without blocking the event loop;
    ``add_done_callback(fn)`` calls ``fn(handle)`` once it is settled (at
    once if it already is), in the engine's thread.
    """

    __slots__ = ("__weakref__", "_callbacks", "_error", "_state", "_waiter", "event")

    def __init__(self, event: AuditEvent) -> None:
        self.event = event
        self._state = _PENDING
        self._error: DeliveryError | None = None
        self._waiter: threading.Event | None = None
        self._callbacks: list[Callable[[DeliveryHandle], object]] | None = None

    # -- reading ------------------------------------------------------------------
    def done(self) -> bool:
        """Whether the delivery is settled (delivered or failed)."""
        return self._state != _PENDING

    @property
    def delivered(self) -> bool:
        """Whether the destination accepted the event."""
        return self._state == _DELIVERED

    def exception(self, timeout: float | None = None) -> DeliveryError | None:
        """Wait like :meth:`result`, but return the error instead of raising it."""
        self._wait(timeout)
        return self._error

    def result(self, timeout: float | None = None) -> AuditEvent:
        """Block until settled; return the event if delivered, else raise its error.

        Raises :class:`TimeoutError` if ``timeout`` seconds pass first (the
        delivery goes on).
        """
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self.event

    def _wait(self, timeout: float | None) -> None:
        if self._state != _PENDING:
            return
        with _lock:
            if self._state == _PENDING and self._waiter is None:
                self._waiter = threading.Event()
            waiter = self._waiter
        if waiter is not None and not waiter.wait(timeout):
            raise TimeoutError(
                f"event {self.event.action} not delivered within {timeout}s (still trying)"
            )

    def add_done_callback(self, callback: Callable[[DeliveryHandle], object]) -> None:
        """Call ``callback(handle)`` when settled; errors in it are logged, not raised."""
        with _lock:
            if self._state == _PENDING:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(callback)
                return
        _run_callback(callback, self)

    def __await__(self) -> Generator[Any, None, AuditEvent]:
        if self._state == _PENDING:
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()

            def wake(_: DeliveryHandle) -> None:
                loop.call_soon_threadsafe(_wake, future)

            self.add_done_callback(wake)
            yield from future.__await__()
        if self._error is not None:
            raise self._error
        return self.event

    # -- settling (the engine's side) ---------------------------------------------------
    def settle(self, error: DeliveryError | None) -> bool:
        """Mark delivered (``error is None``) or failed; ``False`` if already settled.

        Called by whoever delivers the event (the engine), once.
        """
        with _lock:
            if self._state != _PENDING:
                return False
            self._error = error
            self._state = _DELIVERED if error is None else _FAILED
            waiter, callbacks = self._waiter, self._callbacks
            self._callbacks = None
        if waiter is not None:
            waiter.set()
        if callbacks:
            for callback in callbacks:
                _run_callback(callback, self)
        return True

    def __repr__(self) -> str:
        return f"<DeliveryHandle {self.event.action} {_STATE_NAMES[self._state]}>"


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _run_callback(callback: Callable[[DeliveryHandle], object], handle: DeliveryHandle) -> None:
    try:
        callback(handle)
    except Exception:
        logger.exception("audit_instrument: delivery callback %r failed", callback)
