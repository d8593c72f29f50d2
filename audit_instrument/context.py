"""Who and where: the actor, group, location and user agent of the current request or job.

They live in an :class:`AuditScope`, one per request or job, bound to a
:class:`contextvars.ContextVar` with a token and reset in ``finally``. This
module is the only one that touches that variable.

* **Middleware** opens a scope per request whose actor and group are
  resolved *late*: when the first event of the request is built, so
  authentication that runs later in the request (a FastAPI dependency,
  Flask's ``before_request``, a later middleware) is seen. A resolved value
  is kept for the rest of the request; one that is not known yet is asked
  for again by the next event.
* :func:`set_actor` fills the current scope from anywhere inside it. The
  scope is a shared holder: a worker thread running with a *copy* of the
  context (FastAPI's sync dependencies, ``asyncio.to_thread``) still points
  at the request's scope, so what it sets is seen by the request.
* :func:`audit_actor` / :func:`audit_context` bind values for a ``with``
  block (a nested scope: what they leave out comes from the outer one);
  :func:`audit_scope` opens an empty scope for jobs, tasks and scripts, so
  that :func:`set_actor` has somewhere to write.

Threads and executors start with an empty context: hand work over with
:func:`bind_context` (or :mod:`audit_instrument.threads`).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

from . import _stats as stats
from ._party import Party, resolve_party
from .errors import AuditError, AuditValidationError

__all__ = [
    "AuditContext",
    "AuditScope",
    "audit_actor",
    "audit_context",
    "audit_scope",
    "bind_context",
    "current_context",
    "current_scope",
    "resolve_party",
    "set_actor",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


class _Unset:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


def _strict() -> bool:
    from .config import settings  # config imports this module

    return settings.strict


@dataclass(frozen=True, slots=True)
class AuditContext:
    """The who-and-where an event built here would carry (all ``None`` outside any scope)."""

    actor_id: str | None = None
    actor_name: str | None = None
    group: str | None = None
    location: str | None = None
    user_agent: str | None = None


# -- the scope ------------------------------------------------------------------------------------
Resolver = Callable[[Any], Any]
"""A late resolver: called with the scope's ``source`` when an event needs the value;
it returns ``None`` while the value is not known yet."""


class AuditScope:
    """The who-and-where of one request or job: a mutable holder shared by copies of the context.

    Values given here are the scope's own; ``resolve_actor(source)``
    (returning ``(id, name)`` or ``None``) and ``resolve_group(source)`` (a
    string or ``None``) are called when an event needs the value and it is
    still unknown, until they return one. ``source`` is what they read —
    for a middleware, the request. What the scope neither has nor resolves comes from the
    scope that was current when it was made.

    Integrations bind a scope with ``with scope:``, :meth:`run`,
    :meth:`iterate` or :meth:`aiterate`; a scope is bound by one request at
    a time.
    """

    __slots__ = (
        "_actor", "_group", "_location", "_parent", "_resolve_actor", "_resolve_group",
        "_source", "_token", "_user_agent",
    )

    def __init__(
        self,
        *,
        actor: Party | None = _UNSET,
        group: str | None = _UNSET,
        location: str | None = _UNSET,
        user_agent: str | None = _UNSET,
        resolve_actor: Resolver | None = None,
        resolve_group: Resolver | None = None,
        source: object = None,
    ) -> None:
        parent: AuditScope | None = _current.get()
        if parent is _ROOT:  # nothing outside to inherit: what is not given is None
            parent = None
            actor = None if actor is _UNSET else actor
            group = None if group is _UNSET else group
            location = None if location is _UNSET else location
            user_agent = None if user_agent is _UNSET else user_agent
        self._parent = parent
        self._actor = actor
        self._group = group
        self._location = location
        self._user_agent = user_agent
        self._resolve_actor = resolve_actor if actor is _UNSET or actor is None else None
        self._resolve_group = resolve_group if group is _UNSET or group is None else None
        self._source = source
        self._token: contextvars.Token[AuditScope] | None = None

    # -- reading ----------------------------------------------------------------------------
    def values(self) -> tuple[str | None, str | None, str | None, str | None, str | None]:
        """``(actor_id, actor_name, group, location, user_agent)`` for an event built now."""
        if self._resolve_actor is not None:
            self._resolve("actor")
        if self._resolve_group is not None:
            self._resolve("group")
        actor, group, location, agent = self._actor, self._group, self._location, self._user_agent
        parent = self._parent
        if parent is not None and _UNSET in (actor, group, location, agent):
            outer_id, outer_name, outer_group, outer_location, outer_agent = parent.values()
            if actor is _UNSET:
                actor = None if outer_id is None else (outer_id, outer_name or outer_id)
            group = outer_group if group is _UNSET else group
            location = outer_location if location is _UNSET else location
            agent = outer_agent if agent is _UNSET else agent
        if actor is _UNSET or actor is None:
            actor_id = actor_name = None
        else:
            actor_id, actor_name = actor
        return (actor_id, actor_name, None if group is _UNSET else group,
                None if location is _UNSET else location, None if agent is _UNSET else agent)

    def context(self) -> AuditContext:
        """The values as an :class:`AuditContext`."""
        return AuditContext(*self.values())

    def _resolve(self, field: str) -> None:
        resolver = self._resolve_actor if field == "actor" else self._resolve_group
        if resolver is None:
            return
        try:
            value = resolver(self._source)
            if inspect.iscoroutine(value):
                value.close()  # never awaited: don't warn about it
                raise AuditError(
                    f"the {field} resolver returned a coroutine while an event was being "
                    "built: make it an async def (integrations await those when the request "
                    "starts) or call set_actor() once the user is known"
                )
            if field == "group" and value is not None and not isinstance(value, str):
                value = str(value)
        except Exception as error:
            if _strict():
                raise
            where = f"{getattr(resolver, '__module__', '')}.{getattr(resolver, '__qualname__', '')}"
            stats.note_failure(f"{field} resolver {where}: {type(error).__name__}",
                               f"the {field} resolver failed: {type(error).__name__}: {error}",
                               error=error)
            return
        if value is None:
            return  # not known yet: ask again for the next event
        if field == "actor":
            self._actor, self._resolve_actor = value, None
        else:
            self._group, self._resolve_group = value, None

    # -- writing ----------------------------------------------------------------------------
    def set(
        self,
        *,
        actor: Party | None = _UNSET,
        group: str | None = _UNSET,
        location: str | None = _UNSET,
        user_agent: str | None = _UNSET,
    ) -> None:
        """Replace the given values for the rest of this scope (a late resolver is dropped)."""
        if actor is not _UNSET:
            self._actor, self._resolve_actor = actor, None
        if group is not _UNSET:
            self._group, self._resolve_group = group, None
        if location is not _UNSET:
            self._location = location
        if user_agent is not _UNSET:
            self._user_agent = user_agent

    # -- binding ----------------------------------------------------------------------------
    def __enter__(self) -> AuditScope:
        if self._token is not None:
            raise AuditError("this AuditScope is already bound: make one per request or job")
        self._token = _current.set(self)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _current.reset(token)

    async def __aenter__(self) -> AuditScope:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def run(self, fn: Callable[..., R], *args: Any) -> R:
        """Call ``fn(*args)`` with this scope bound, then restore the caller's."""
        token = _current.set(self)
        try:
            return fn(*args)
        finally:
            _current.reset(token)

    def iterate(self, iterable: Iterable[T]) -> Iterator[T]:
        """Yield from ``iterable``, each item produced (and the iterator closed) in this scope.

        For response bodies iterated after the middleware returned (WSGI,
        Django streaming); the caller's scope is restored between items.
        """
        iterator = self.run(iter, iterable)
        try:
            while True:
                token = _current.set(self)
                try:
                    item = next(iterator)
                except StopIteration:
                    return
                finally:
                    _current.reset(token)
                yield item
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                self.run(close)

    async def aiterate(self, iterable: Any) -> AsyncIterator[Any]:
        """The ``async for`` twin of :meth:`iterate`."""
        iterator = aiter(iterable)
        try:
            while True:
                token = _current.set(self)
                try:
                    item = await anext(iterator)
                except StopAsyncIteration:
                    return
                finally:
                    _current.reset(token)
                yield item
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                token = _current.set(self)
                try:
                    await aclose()
                finally:
                    _current.reset(token)

    def __repr__(self) -> str:
        return f"<AuditScope {self.context()!r}>"


class _Root(AuditScope):
    """The scope outside any request or job: empty, and nothing can be set in it."""

    __slots__ = ()

    def __init__(self) -> None:
        self._parent = self._resolve_actor = self._resolve_group = self._token = None
        self._source = None
        self._actor = self._group = self._location = self._user_agent = None

    def values(self) -> tuple[str | None, str | None, str | None, str | None, str | None]:
        return None, None, None, None, None

    def set(self, **values: Any) -> None:
        raise AuditError("no audit scope is open here")


_ROOT = _Root()
_current: contextvars.ContextVar[AuditScope] = contextvars.ContextVar(
    "audit_instrument_scope", default=_ROOT
)


current_scope = _current.get
"""``current_scope()``: the scope events built here take their actor, group and location from."""


def current_context() -> AuditContext:
    """The :class:`AuditContext` an event built here would carry (all ``None`` outside scopes)."""
    return AuditContext(*_current.get().values())


# -- blocks: audit_actor, audit_context, audit_scope -------------------------------------------
def _optional_str(field: str, value: object) -> str | None:
    if value is _UNSET or value is None or isinstance(value, str):
        return value
    raise AuditValidationError(field, "must be a string or None", value)


class _Block:
    """What ``audit_actor()``, ``audit_context()`` and ``audit_scope()`` return.

    Each ``with`` (or call, as a decorator) opens a fresh :class:`AuditScope`
    nested in the current one, so one block object may be used by many
    requests at once.
    """

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, Any]) -> None:
        self._values = values

    def __enter__(self) -> AuditContext:
        scope = AuditScope(**self._values)
        scope.__enter__()
        return scope.context()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _current.get().__exit__(exc_type, exc, tb)

    async def __aenter__(self) -> AuditContext:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: Callable[P, R]) -> Callable[P, R]:
        """As a decorator: every call of ``fn`` runs in a scope of its own."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                with self:
                    return await fn(*args, **kwargs)

            return run_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> R:
            with self:
                return fn(*args, **kwargs)

        return run


def _block_values(group: object, location: object, user_agent: object) -> dict[str, Any]:
    return {
        "group": _optional_str("group", group),
        "location": _optional_str("location", location),
        "user_agent": _optional_str("user_agent", user_agent),
    }


def audit_actor(
    user: object = None,
    /,
    *,
    id: object = None,
    name: str | None = None,
    group: str | None = _UNSET,
    location: str | None = _UNSET,
    user_agent: str | None = _UNSET,
) -> _Block:
    """Bind the actor (and optionally group, location, user agent) for a block.

    ``user`` is an object with ``id`` and ``email``/``name``/``username``, a
    mapping with an ``"id"`` key, an ``(id, name)`` tuple, or ``None`` (an
    anonymous request: no actor); or pass ``id=`` and ``name=``. Anything
    else raises :class:`~audit_instrument.AuditValidationError` here.
    Arguments left out keep the outer scope's values. Also a decorator.

    >>> from audit_instrument import audit_actor, current_context
    >>> with audit_actor({"id": "user_1", "email": "user@email.com"}, group="organization_1"):
    ...     current_context().actor_name
    'user@email.com'
    """
    values = _block_values(group, location, user_agent)
    values["actor"] = resolve_party((id, name or id) if id is not None else user)
    return _Block(values)


def audit_context(
    *,
    group: str | None = _UNSET,
    location: str | None = _UNSET,
    user_agent: str | None = _UNSET,
) -> _Block:
    """Bind group, location and/or user agent for a block, keeping the actor.

    >>> with audit_context(group="organization_1"):
    ...     current_context().group
    'organization_1'
    """
    return _Block(_block_values(group, location, user_agent))


def audit_scope(
    actor: object = _UNSET,
    /,
    *,
    group: str | None = _UNSET,
    location: str | None = _UNSET,
    user_agent: str | None = _UNSET,
) -> _Block:
    """Open a scope for a job, task or script: a ``with`` block or a decorator.

    Inside it :func:`set_actor` works as in a request; what is given here
    is the scope's starting value.

    >>> @audit_scope(group="organization_1")
    ... def nightly_export() -> None:
    ...     set_actor({"id": "job_export", "name": "Nightly export"})
    ...     ...                                  # events here carry that actor
    """
    values = _block_values(group, location, user_agent)
    if actor is not _UNSET:
        values["actor"] = resolve_party(actor)
    return _Block(values)


def set_actor(
    user: object,
    /,
    *,
    group: str | None = _UNSET,
    location: str | None = _UNSET,
    user_agent: str | None = _UNSET,
) -> None:
    """Set who is acting for the rest of the current scope, from anywhere inside it.

    Works in a request (after the middleware opened its scope), including a
    worker thread running with a copy of the request's context, and in a job
    wrapped in :func:`audit_scope`. Arguments left out keep their values.
    ``user`` takes the shapes :func:`audit_actor` takes; a bad one raises
    :class:`~audit_instrument.AuditValidationError`. Outside any scope
    nothing is bound: the mistake is counted and logged once (raised as
    :class:`~audit_instrument.AuditError` in strict mode).

    >>> @app.middleware("http")                       # doctest: +SKIP
    ... async def authenticate(request, call_next):
    ...     set_actor(await load_user(request), group="organization_1")
    ...     return await call_next(request)
    """
    party = resolve_party(user)
    values = _block_values(group, location, user_agent)
    scope = _current.get()
    if scope is _ROOT:
        error = AuditError(
            "set_actor() was called outside any audit scope, so it binds nothing: add the "
            "audit middleware to the app, or wrap the job in audit_scope()"
        )
        if _strict():
            raise error
        stats.note_failure("set_actor outside a scope", str(error), level=logging.WARNING)
        return
    scope.set(actor=party, **values)


def bind_context(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``fn`` to run in a copy of the *current* context (scope included).

    Threads and executors start with an empty context; use this when handing
    work over, so events there carry the request's actor::

        executor.submit(bind_context(save_tweet), tweet)
        threading.Thread(target=bind_context(save_tweet), args=(tweet,)).start()

    The copy shares the request's scope: a :func:`set_actor` in ``fn`` is
    seen by the request. Each call runs in its own copy, so the wrapper may
    run in several threads at once.
    """
    captured = contextvars.copy_context()

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return captured.copy().run(fn, *args, **kwargs)

    return run
