"""``audit()``: declare an audit event where the action happens.

One object is both a decorator (sync and async functions, methods,
classmethods, staticmethods; built on :mod:`wrapt`, so signatures, names and
``inspect.iscoroutinefunction`` survive) and a context manager (``with`` and
``async with``) that yields an :class:`AuditBuilder`.

With no receiver connected the decorator only calls the function: no
snapshot, no event (and one warning on the ``audit_instrument`` logger).
Failures to build an event are counted, logged once per cause and reported on
``signals.event_invalid``; they never break the call unless
``configure(strict=True)``.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import FunctionType, TracebackType
from typing import Any, Literal, TypeVar

import wrapt

from . import _stats as stats
from . import signals
from ._resolve import Binder, ResolverFn, make_resolver
from .config import settings
from .context import current_scope, resolve_party
from .errors import AuditValidationError
from .event import (
    ActionType,
    AuditEvent,
    MetadataValue,
    _build_event,
    validate_action,
    validate_action_type,
)
from .snapshot import Snapshot, capture, check_fields, diff, to_metadata_value

__all__ = ["AuditBuilder", "audit"]

logger = logging.getLogger("audit_instrument")
F = TypeVar("F", bound=Callable[..., Any])
OnError = Literal["skip", "emit"]
_receivers = signals.event_emitted
_NO_SNAPSHOT: Snapshot = {}


def warn_discarded() -> None:
    """Warn once that no sender is configured (for the integrations that build events too)."""
    if not settings.warned_no_receivers:
        settings.warned_no_receivers = True
        logger.warning(
            "audit_instrument: no sender is configured, so audit events are being "
            "discarded; call audit_instrument.configure(...) with a sender"
        )


def report_invalid(action: str, error: Exception, *, may_raise: bool = True) -> None:
    """An event of ``action`` could not be built: raise if strict (and ``may_raise``: not
    while the call's own exception propagates), else count, log once per cause, signal."""
    if settings.strict and may_raise:
        raise error
    cause = (f"{error.field}: {error.rule}" if isinstance(error, AuditValidationError)
             else type(error).__name__)
    stats.count_invalid(cause)
    stats.note_failure(f"invalid {action}: {cause}", f"event {action!r} not recorded: {error}",
                       error=error)
    signals.dispatch(signals.event_invalid, action, error=error)


def _metadata_from(label: str, value: object) -> dict[str, MetadataValue]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AuditValidationError(label, "must resolve to a mapping", value)
    out: dict[str, MetadataValue] = {}
    for key, item in value.items():
        if not isinstance(key, str):
            raise AuditValidationError(label, "keys must be strings", key)
        converted = to_metadata_value(f"metadata.{key}", item)
        if converted is not None:
            out[str(key)] = converted
    return out


def _target_party(target: object) -> tuple[str, str]:
    """A target as ``(id, name)``: a bare id (``str`` or ``int``) names itself."""
    if isinstance(target, (str, int)) and not isinstance(target, bool):
        target = (target, target)  # a bare id names itself
    party = resolve_party(target, "target")
    if party is None:
        raise AuditValidationError("target_id", "required: the target resolved to no id")
    return party


def make_event(
    action: str,
    action_type: ActionType,
    target: object,
    actor: object,
    group: object,
    location: str | None,
    metadata: dict[str, Any] | None,
    occurred_at: datetime | None,
) -> AuditEvent:
    """The event of one instrumented call or block; what is not given comes from the scope."""
    scope_actor_id, scope_actor_name, scope_group, scope_location, user_agent = (
        current_scope().values()
    )
    party = resolve_party(actor, "actor") if actor is not None else None
    if party is not None:
        actor_id, actor_name = party
    elif scope_actor_id is not None:
        actor_id, actor_name = scope_actor_id, scope_actor_name or scope_actor_id
    elif settings.system_actor is not None:
        actor_id, actor_name = settings.system_actor
    else:
        raise AuditValidationError(
            "actor_id",
            "required: no actor is known here; bind one with audit_actor(...) or set_actor(...) "
            "(the web middleware does it per request), pass actor=, or configure(system_actor=...)",
        )
    if target is None:
        target_id, target_name = actor_id, actor_name
    elif type(target) is tuple and len(target) == 2 and type(target[0]) is str and target[0]:
        target_id, target_name = target  # the usual (id, name)
        if type(target_name) is not str or not target_name:
            target_name = target_id
    else:
        target_id, target_name = _target_party(target)
    if group is None:
        group = scope_group
    if group is None:
        raise AuditValidationError(
            "group", "required: bind one with audit_actor(..., group=), set_actor(..., group=) "
            "or the middleware's group="
        )
    return _build_event(
        group,  # type: ignore[arg-type]
        action,
        action_type,
        actor_name,
        actor_id,
        target_name,
        target_id,
        (scope_location or "") if location is None else location,
        occurred_at,
        metadata,
        user_agent or "",
    )


class AuditBuilder:
    """The event being built inside ``with audit(...) as event:``.

    Set ``metadata`` entries, the ``target`` (object, mapping, ``(id, name)``
    or a bare id), ``actor``, ``group`` or ``location``; call :meth:`skip` to
    record nothing. What is left ``None`` comes from the audit scope.
    """

    __slots__ = ("actor", "group", "location", "metadata", "occurred_at", "skipped", "target")

    def __init__(self, target: object = None) -> None:
        self.metadata: dict[str, Any] = {}
        self.target: object = target
        self.actor: object = None
        self.group: str | None = None
        self.location: str | None = None
        self.occurred_at: datetime | None = None
        self.skipped = False

    def skip(self) -> None:
        """Record no event for this block."""
        self.skipped = True


class _Open:
    """One open ``with audit(...)`` block: its builder and "before" snapshot."""

    __slots__ = ("before", "builder", "declaration", "token")

    def __init__(self, declaration: audit, builder: AuditBuilder, before: Snapshot) -> None:
        self.declaration = declaration
        self.builder = builder
        self.before = before
        self.token: contextvars.Token[_Open | None] | None = None


# The innermost open ``with audit(...)`` block of this thread or task: each use of a
# declaration has its own state, so one ``audit(...)`` object can serve many requests.
_open_block: contextvars.ContextVar[_Open | None] = contextvars.ContextVar(
    "audit_instrument_open_block", default=None
)


class audit:  # noqa: N801 - used like a function: @audit(...), with audit(...)
    """Declare an audit event on a function, a method or a block.

    ``target``, ``actor``, ``group`` and ``metadata`` are each a parameter
    name of the decorated function (``"result"`` is its return value) or a
    callable taking some of its parameters by name (plus ``result``);
    ``target``/``actor`` resolve to an object with ``id`` and
    ``email``/``name``/``username``, a mapping, ``(id, name)`` — or, for the
    target, a bare ``str``/``int`` id; ``metadata`` to a mapping (or pass a
    list of parameter names). ``snapshot`` is called before and after the
    call; the ``fields`` of what it returns that changed become
    ``<field>_was`` / ``<field>`` metadata. Without ``target`` the actor is
    the target.

    If the call raises, the exception propagates unchanged and no event is
    recorded, unless ``on_error="emit"``: then the attempt is recorded with
    ``outcome="failure"`` and ``error=<exception type>`` metadata.

    >>> tweets = {5: {"body": "What time is the event", "author": "user@email.com"}}
    >>> @audit("tweet.update", "U",
    ...        target=lambda tweet_id: (f"tweet_{tweet_id}", tweets[tweet_id]["author"]),
    ...        snapshot=lambda tweet_id: tweets[tweet_id], fields=["body"])
    ... def update_tweet(tweet_id: int, body: str) -> None:
    ...     tweets[tweet_id]["body"] = body

    As a block, ``target`` and ``snapshot`` are values / zero-argument
    callables; each ``with`` has its own state, so one declaration may be
    shared by concurrent requests::

        with audit("user.login", "C", target=user) as event:
            event.metadata["method"] = "password"
    """

    __slots__ = (
        "action", "action_type", "actor", "fields", "group", "include_unchanged", "metadata",
        "on_error", "snapshot", "target",
    )

    def __init__(
        self,
        action: str,
        action_type: ActionType | str,
        *,
        target: object = None,
        actor: object = None,
        group: object = None,
        metadata: object = None,
        snapshot: Callable[..., Any] | None = None,
        fields: Sequence[str] | None = None,
        include_unchanged: bool = False,
        on_error: OnError = "skip",
    ) -> None:
        self.action = validate_action(action)
        self.action_type = validate_action_type(action_type)
        if on_error not in ("skip", "emit"):
            raise AuditValidationError("on_error", "must be 'skip' or 'emit'", on_error)
        if snapshot is not None and not callable(snapshot):
            raise AuditValidationError("snapshot", "must be a callable", snapshot)
        if fields is not None and snapshot is None:
            raise AuditValidationError("fields", "needs snapshot= to read them from")
        self.target = target
        self.actor = actor
        self.group = group
        self.metadata = metadata
        self.snapshot = snapshot
        self.fields = check_fields(fields)
        self.include_unchanged = include_unchanged
        self.on_error: OnError = on_error

    def __repr__(self) -> str:
        return f"audit({self.action!r}, {self.action_type.value!r})"

    # -- decorator -------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate ``fn``; the declaration is checked against its signature now."""
        plan = _Plan(self, fn)
        wrapper = plan.async_call if plan.is_async else plan.sync_call
        if type(fn) is FunctionType:
            return _PlainFunctionWrapper(fn, wrapper)  # type: ignore[return-value]
        return wrapt.FunctionWrapper(fn, wrapper)  # type: ignore[return-value]

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> AuditBuilder:
        if callable(self.target):
            raise AuditValidationError(
                "target",
                "in a with block, give the target itself: an object, mapping, (id, name) or id",
                self.target,
            )
        builder = AuditBuilder(self.target)
        builder.actor = self.actor
        before = _NO_SNAPSHOT
        if self.snapshot is not None and _receivers.receivers:
            try:
                before = capture(self.snapshot(), self.fields)
            except Exception as error:
                report_invalid(self.action, error)
                builder.skip()
        block = _Open(self, builder, before)
        block.token = _open_block.set(block)
        return builder

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        block = _open_block.get()
        if block is None or block.declaration is not self or block.token is None:
            return
        _open_block.reset(block.token)
        builder = block.builder
        if builder.skipped:
            return
        if not _receivers.receivers:
            warn_discarded()
            return
        if exc is not None and (self.on_error != "emit" or not isinstance(exc, Exception)):
            return
        try:
            metadata = _metadata_from("metadata", builder.metadata)
            if self.snapshot is not None:
                after = capture(self.snapshot(), self.fields)
                metadata.update(diff(block.before, after, include_unchanged=self.include_unchanged))
            if exc is not None:
                metadata["outcome"] = "failure"
                metadata["error"] = type(exc).__qualname__
            event = make_event(
                self.action, self.action_type, builder.target, builder.actor,
                builder.group or self.group, builder.location, metadata, builder.occurred_at,
            )
        except Exception as error:
            # never let this replace the exception the block raised
            report_invalid(self.action, error, may_raise=exc is None)
            return
        signals.emit_built(event)

    async def __aenter__(self) -> AuditBuilder:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class _PlainFunctionWrapper(wrapt.FunctionWrapper):  # type: ignore[type-arg]
    """wrapt's ``FunctionWrapper`` for a plain function, called without looking for ``__self__``.

    Called directly, wrapt's wrapper looks up ``__self__`` on the function in
    case it is a bound method; a plain function has none, so every call
    raised and swallowed an ``AttributeError`` (about a fifth of an event's
    instructions in ``bench_asgi --instructions``). Used as a method, wrapt
    binds it as usual: ``__get__`` returns wrapt's own bound wrapper.
    """

    __slots__ = ()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        wrapper: Any = self._self_wrapper
        return wrapper(self.__wrapped__, None, args, kwargs)


class _Plan:
    """What one decorated function needs per call, worked out at decoration time."""

    __slots__ = (
        "action", "action_type", "actor", "binder", "emit_on_error", "fields", "group",
        "include_unchanged", "is_async", "metadata", "snapshot", "target",
    )

    def __init__(self, decl: audit, fn: Any) -> None:
        takes_instance: bool | None = None
        inner = fn
        if isinstance(fn, classmethod):
            inner, takes_instance = fn.__func__, True
        elif isinstance(fn, staticmethod):
            inner, takes_instance = fn.__func__, False
        elif inspect.ismethod(fn):  # already bound: wrapt passes its __self__, not a parameter
            takes_instance = False
        if not callable(inner):
            raise TypeError(f"@audit decorates functions and methods, not {type(fn).__name__}")
        self.is_async = inspect.iscoroutinefunction(inner)
        self.binder = Binder(inner, takes_instance)
        self.target = self._resolver("target", decl.target)
        self.actor = self._resolver("actor", decl.actor)
        self.group = self._resolver("group", decl.group)
        metadata_spec = decl.metadata
        if isinstance(metadata_spec, (list, tuple)):
            getters = [(name, self._resolver("metadata", name)) for name in metadata_spec]

            def named_metadata(bound: dict[str, Any], result: Any) -> dict[str, Any]:
                return {name: get(bound, result) for name, get in getters}  # type: ignore[misc]

            self.metadata: ResolverFn | None = named_metadata
        else:
            self.metadata = self._resolver("metadata", metadata_spec)
        self.snapshot = (
            make_resolver("snapshot", decl.snapshot, self.binder, result_allowed=False)
            if decl.snapshot is not None else None
        )
        self.action, self.action_type, self.fields = decl.action, decl.action_type, decl.fields
        self.include_unchanged = decl.include_unchanged
        self.emit_on_error = decl.on_error == "emit"

    def _resolver(self, label: str, spec: object) -> ResolverFn | None:
        if spec is None:
            return None
        return make_resolver(label, spec, self.binder, result_allowed=True)

    def begin(
        self, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[dict[str, Any], Snapshot] | None:
        """Bind the arguments and take the "before" snapshot; None if that failed."""
        try:
            bound = self.binder.bind(instance, args, kwargs)
            before = (_NO_SNAPSHOT if self.snapshot is None
                      else capture(self.snapshot(bound, None), self.fields))
        except Exception as error:
            report_invalid(self.action, error)  # raises in strict mode, before the call
            return None
        return bound, before

    def finish(
        self, bound: dict[str, Any], before: Snapshot, result: Any, exc: BaseException | None
    ) -> None:
        """Build the event from the call and emit it; report what goes wrong."""
        try:
            metadata = (_metadata_from("metadata", self.metadata(bound, result))
                        if self.metadata is not None else None)
            if self.snapshot is not None or exc is not None:
                metadata = metadata or {}
                if self.snapshot is not None:
                    after = capture(self.snapshot(bound, None), self.fields)
                    metadata.update(diff(before, after, include_unchanged=self.include_unchanged))
                if exc is not None:
                    metadata["outcome"] = "failure"
                    metadata["error"] = type(exc).__qualname__
            event = make_event(
                self.action,
                self.action_type,
                self.target(bound, result) if self.target is not None else None,
                self.actor(bound, result) if self.actor is not None else None,
                self.group(bound, result) if self.group is not None else None,
                None,
                metadata,
                None,
            )
        except Exception as error:
            # never let this replace the exception the call raised
            report_invalid(self.action, error, may_raise=exc is None)
            return
        signals.emit_built(event)

    def sync_call(
        self, wrapped: Callable[..., Any], instance: object, args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if not _receivers.receivers:
            warn_discarded()
            return wrapped(*args, **kwargs)
        started = self.begin(instance, args, kwargs)
        if started is None:
            return wrapped(*args, **kwargs)
        bound, before = started
        try:
            result = wrapped(*args, **kwargs)
        except Exception as exc:
            if self.emit_on_error:
                self.finish(bound, before, None, exc)
            raise
        self.finish(bound, before, result, None)
        return result

    async def async_call(
        self, wrapped: Callable[..., Any], instance: object, args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        if not _receivers.receivers:
            warn_discarded()
            return await wrapped(*args, **kwargs)
        started = self.begin(instance, args, kwargs)
        if started is None:
            return await wrapped(*args, **kwargs)
        bound, before = started
        try:
            result = await wrapped(*args, **kwargs)
        except Exception as exc:
            if self.emit_on_error:
                self.finish(bound, before, None, exc)
            raise
        self.finish(bound, before, result, None)
        return result

