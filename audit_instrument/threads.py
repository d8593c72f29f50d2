"""Carry the audit context into threads and executors.

Threads start with an empty :mod:`contextvars` context, so an event built
in a worker would have no actor. :func:`~audit_instrument.context.bind_context`
wraps one callable; these helpers do it for you at each hand-over:

>>> from audit_instrument import audit_actor, current_context
>>> from audit_instrument.threads import ContextThreadPoolExecutor
>>> with ContextThreadPoolExecutor(max_workers=2) as pool, audit_actor(id="user_1"):
...     pool.submit(lambda: current_context().actor_id).result()
'user_1'

``asyncio.to_thread`` and Starlette/FastAPI's threadpool already copy the
context; ``loop.run_in_executor`` does not — use :func:`run_in_executor`.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, ParamSpec, TypeVar

from .context import bind_context

__all__ = ["ContextThread", "ContextThreadPoolExecutor", "run_in_executor"]

P = ParamSpec("P")
R = TypeVar("R")


class ContextThreadPoolExecutor(ThreadPoolExecutor):
    """A ``ThreadPoolExecutor`` whose tasks run in a copy of the submitter's context.

    The context is captured at each ``submit`` (and so each ``map``), not
    when the pool was created: a pool shared by all requests gives each task
    the actor of the request that submitted it.
    """

    def submit(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> Future[R]:
        return super().submit(bind_context(fn), *args, **kwargs)


class ContextThread(threading.Thread):
    """A ``threading.Thread`` that runs in a copy of the context of ``start()``'s caller.

    >>> thread = ContextThread(target=print, args=("hello",))
    >>> thread.start(); thread.join()
    hello
    """

    _audit_context: contextvars.Context | None = None

    def start(self) -> None:
        self._audit_context = contextvars.copy_context()
        super().start()

    def run(self) -> None:
        if self._audit_context is None:  # run() called directly: already in the caller's context
            super().run()
        else:
            self._audit_context.run(super().run)


async def run_in_executor(
    executor: Executor | None, fn: Callable[..., R], /, *args: Any, **kwargs: Any
) -> R:
    """``loop.run_in_executor`` that carries the context (and accepts keywords).

    >>> async def handler():
    ...     return await run_in_executor(None, save_tweet, tweet, notify=True)
    """
    loop = asyncio.get_running_loop()
    call = bind_context(functools.partial(fn, *args, **kwargs))
    return await loop.run_in_executor(executor, call)
