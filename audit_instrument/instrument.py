"""``audit()``: declare an audit event where the action happens.

One object is both a decorator (sync and async functions, methods,
classmethods, staticmethods; built on :mod:`wrapt`, so signatures, names and
``inspect.iscoroutinefunction`` survive) and a context manager (``with`` and
``async with``) that yields an :class:`AuditBuilder`.

With no receiver connected the decorator only calls the function: no
snapshot, no event (and one warning on the ``audit_instrument`` logger).
Failures to build an event are logged and reported on
``signals.event_invalid``; they never break the call unless
``configure(strict=True)``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from types import FunctionType, TracebackType
from typing import Any, Literal, TypeVar

import wrapt

from . import signals
from ._resolve import RESULT, Binder, ResolverFn, make_resolver, single_parameter
from .config import MASKED, settings
from .context import _current, resolve_party
from .errors import AuditError, AuditValidationError
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


def _warn_discarded() -> None:
    if not settings.warned_no_receivers:
        settings.warned_no_receivers = True
        logger.warning(
            "audit_instrument: no sender is configured, so audit events are being "
            "discarded; call audit_instrument.configure(...) with a sender"
        )


def _report(action: str, error: Exception) -> None:
    """Log a failure to build an event, tell ``event_invalid``; raise if strict."""
    if settings.strict:
        raise error
    logger.error("audit_instrument: event %r not recorded: %s", action, error)
    signals.dispatch(signals.event_invalid, action, error=error)


def _mask(metadata: dict[str, Any]) -> dict[str, Any]:
    for key, value in metadata.items():
        if settings.is_masked(key):
            metadata[key] = MASKED
        elif isinstance(value, Mapping):
            metadata[key] = {k: MASKED if settings.is_masked(k) else v for k, v in value.items()}
    return metadata


def _metadata_from(label: str, value: object) -> dict[str, MetadataValue]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AuditValidationError(label, "must resolve to a mapping", value)
    out: dict[str, MetadataValue] = {}
    for key, item in value.items():
        converted = to_metadata_value(f"metadata.{key}", item)
        if converted is not None:
            out[str(key)] = converted
    return out


def _make_event(
    action: str,
    action_type: ActionType,
    target: object,
    actor: object,
    group: object,
    location: str | None,
    metadata: dict[str, Any] | None,
    occurred_at: datetime | None,
) -> AuditEvent:
    """The event of one instrumented call or block; what is not given comes from context."""
    ctx = _current.get()
    party = resolve_party(actor, "actor") if actor is not None else None
    if party is not None:
        actor_id, actor_name = party
    elif ctx.actor_id is not None:
        actor_id = ctx.actor_id
        actor_name = ctx.actor_name or actor_id
    elif settings.system_actor is not None:
        actor_id, actor_name = settings.system_actor
    else:
        raise AuditValidationError(
            "actor_id",
            "required: bind one with audit_actor(...), pass actor=, "
            "or configure(system_actor=...)",
        )
    if target is None:
        target_id, target_name = actor_id, actor_name
    elif type(target) is tuple and len(target) == 2 and type(target[0]) is str and target[0]:
        target_id, target_name = target  # the common (id, name) form, checked inline
        if type(target_name) is not str or not target_name:
            target_name = target_id
    else:
        aimed = resolve_party(target, "target")
        if aimed is None:
            raise AuditValidationError("target_id", "required: the target resolved to no id")
        target_id, target_name = aimed
    if group is None:
        group = ctx.group
    if group is None:
        raise AuditValidationError(
            "group", "required: bind one with audit_actor(..., group=) or audit_context(group=)"
        )
    if location is None:
        location = ctx.location or ""
    if metadata and settings.mask:
        _mask(metadata)
    return _build_event(
        group,  # type: ignore[arg-type]
        action,
        action_type,
        actor_name,
        actor_id,
        target_name,
        target_id,
        location,
        occurred_at,
        metadata,
        ctx.user_agent or "",
    )


class AuditBuilder:
    """The event being built inside ``with audit(...) as event:``.

    Set ``metadata`` entries, the ``target`` (object, mapping or ``(id,
    name)``), ``actor``, ``group`` or ``location``; call :meth:`skip` to
    record nothing. What is left ``None`` comes from the audit context.
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


class audit:  # noqa: N801 - used like a function: @audit(...), with audit(...)
    """Declare an audit event on a function, a method or a block.

    ``target``, ``actor``, ``group`` and ``metadata`` are each a parameter
    name of the decorated function (``"result"`` is its return value) or a
    callable taking some of its parameters by name (plus ``result``);
    ``target``/``actor`` resolve to an object with ``id`` and
    ``email``/``name``/``username``, a mapping, or ``(id, name)``;
    ``metadata`` to a mapping (or pass a list of parameter names).
    ``snapshot`` is called before and after the call; the ``fields`` of what
    it returns that changed become ``<field>_was`` / ``<field>`` metadata.
    Without ``target`` the actor is the target.

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
    callables::

        with audit("user.login", "C", target=user) as event:
            event.metadata["method"] = "password"
    """

    __slots__ = (
        "_before",
        "_builder",
        "action",
        "action_type",
        "actor",
        "fields",
        "group",
        "include_unchanged",
        "metadata",
        "on_error",
        "snapshot",
        "target",
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
        self._builder: AuditBuilder | None = None
        self._before: Snapshot = _NO_SNAPSHOT

    def __repr__(self) -> str:
        return f"audit({self.action!r}, {self.action_type.value!r})"

    # -- decorator -------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Decorate ``fn``; the declaration is checked against its signature now."""
        plan = _Plan(self, fn)
        wrapper = plan.async_wrapper if plan.is_async else plan.sync_wrapper
        if type(fn) is FunctionType:
            return _function_wrapper(fn, wrapper, plan.direct_call)  # type: ignore[return-value, arg-type]
        return wrapt.FunctionWrapper(fn, wrapper)  # type: ignore[return-value]

    # -- context manager ---------------------------------------------------

    def __enter__(self) -> AuditBuilder:
        if self._builder is not None:
            raise AuditError(f"{self!r} is already open: use one audit(...) per with block")
        if isinstance(self.target, str) or callable(self.target):
            raise AuditValidationError(
                "target",
                "in a with block, give the target itself: an object, mapping or (id, name)",
                self.target,
            )
        self._builder = AuditBuilder(self.target)
        self._builder.actor = self.actor
        self._before = _NO_SNAPSHOT
        if self.snapshot is not None and _receivers.receivers:
            try:
                self._before = capture(self.snapshot(), self.fields)
            except Exception as error:
                _report(self.action, error)
                self._builder.skip()
        return self._builder

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        builder, self._builder = self._builder, None
        if builder is None or builder.skipped:
            return
        if not _receivers.receivers:
            _warn_discarded()
            return
        if exc is not None and (self.on_error != "emit" or not isinstance(exc, Exception)):
            return
        try:
            metadata = _metadata_from("metadata", builder.metadata)
            if self.snapshot is not None:
                metadata.update(
                    diff(
                        self._before,
                        capture(self.snapshot(), self.fields),
                        include_unchanged=self.include_unchanged,
                    )
                )
            if exc is not None:
                metadata["outcome"] = "failure"
                metadata["error"] = type(exc).__qualname__
            event = _make_event(
                self.action,
                self.action_type,
                builder.target,
                builder.actor,
                builder.group or self.group,
                builder.location,
                metadata,
                builder.occurred_at,
            )
        except Exception as error:
            if exc is not None:  # don't mask the block's own exception
                logger.error("audit_instrument: event %r not recorded: %s", self.action, error)
                return
            _report(self.action, error)
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


_Wrapper = Callable[[Callable[..., Any], object, tuple[Any, ...], dict[str, Any]], Any]


def _function_wrapper(
    fn: FunctionType, wrapper: _Wrapper, call: Callable[..., Any]
) -> wrapt.FunctionWrapper[Any, Any]:
    """``wrapt.FunctionWrapper(fn, wrapper)`` with a cheaper direct call.

    Called directly (not as a bound method), wrapt's ``FunctionWrapper``
    looks up ``fn.__self__`` on every call in case ``fn`` is a bound method;
    for a plain function that raises and swallows an ``AttributeError``,
    about 60 % of the wrapper's own cost. A plain function has no
    ``__self__``, so this subclass's ``__call__`` is ``call(self, *args,
    **kwargs)``, which does what ``wrapper(fn, None, args, kwargs)`` does.
    Reading anything off the proxy costs as much as the lookup it saves, so
    ``call`` gets its state from its closure, and the class is made for this
    one function (~2 KB and ~30 µs, once, at decoration). Binding as a
    method, and everything else, is wrapt's own.
    """
    cls = type(
        "AuditFunctionWrapper",
        (wrapt.FunctionWrapper,),
        {"__slots__": (), "__call__": call, "__module__": __name__},
    )
    return cls(fn, wrapper)  # type: ignore[no-any-return]


def _no_arguments(
    instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> dict[str, Any]:
    return {}


class _Plan:
    """What one decorated function needs per call, worked out once.

    The per-call paths are closures over what was worked out (``sync_wrapper``,
    ``async_wrapper``, ``finish``): reading a closure cell is cheaper than an
    attribute, and this is the ``@audit`` hot path.
    """

    __slots__ = ("async_wrapper", "binder", "direct_call", "is_async", "sync_wrapper")

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
        binder = self.binder = Binder(inner, takes_instance)
        target = self._resolver("target", decl.target)
        actor = self._resolver("actor", decl.actor)
        group = self._resolver("group", decl.group)
        metadata_spec = decl.metadata
        if isinstance(metadata_spec, (list, tuple)):
            getters = [
                (name, make_resolver("metadata", name, binder, result_allowed=True))
                for name in metadata_spec
            ]
            metadata_spec = lambda **kw: {n: get(kw, kw.get(RESULT)) for n, get in getters}  # noqa: E731
        metadata = self._resolver("metadata", metadata_spec)
        snapshot = (
            make_resolver("snapshot", decl.snapshot, binder, result_allowed=False)
            if decl.snapshot is not None
            else None
        )
        needs_args = any(r is not None for r in (target, actor, group, metadata, snapshot))
        bind = binder.bind if needs_args else _no_arguments
        fill = binder.fill if needs_args else None
        count = len(binder.names)
        # target=lambda tweet_id: ...: called straight from the bound arguments
        target_fn, target_param = single_parameter(decl.target, binder) or (None, "")
        action, action_type, fields = decl.action, decl.action_type, decl.fields
        include_unchanged, emit_on_error = decl.include_unchanged, decl.on_error == "emit"

        def finish(
            bound: dict[str, Any], before: Snapshot, result: Any, exc: BaseException | None
        ) -> None:
            """Build the event from the call and emit it; report what goes wrong."""
            try:
                extra = _metadata_from("metadata", metadata(bound, result)) if metadata else None
                if snapshot is not None or exc is not None:  # most calls: no dict to throw away
                    more = {} if extra is None else extra
                    if snapshot is not None:
                        after = capture(snapshot(bound, None), fields)
                        more.update(diff(before, after, include_unchanged=include_unchanged))
                    if exc is not None:
                        more["outcome"] = "failure"
                        more["error"] = type(exc).__qualname__
                    extra = more
                event = _make_event(
                    action,
                    action_type,
                    target_fn(bound[target_param])
                    if target_fn is not None
                    else target(bound, result)
                    if target
                    else None,
                    actor(bound, result) if actor else None,
                    group(bound, result) if group else None,
                    None,
                    extra,
                    None,
                )
            except Exception as error:
                if exc is not None:  # never replace the call's own exception
                    logger.error("audit_instrument: event %r not recorded: %s", action, error)
                    return
                _report(action, error)
                return
            signals.emit_built(event)

        def begin(
            instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[dict[str, Any], Snapshot] | None:
            """Bind the arguments and take the "before" snapshot; None if that failed."""
            try:
                bound = bind(instance, args, kwargs)
                return bound, (
                    _NO_SNAPSHOT if snapshot is None else capture(snapshot(bound, None), fields)
                )
            except Exception as error:
                _report(action, error)  # raises in strict mode, before the call
                return None

        def sync_wrapper(
            wrapped: Callable[..., Any],
            instance: object,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            if not _receivers.receivers:
                if not settings.warned_no_receivers:
                    _warn_discarded()
                return wrapped(*args, **kwargs)
            started = begin(instance, args, kwargs)
            if started is None:
                return wrapped(*args, **kwargs)
            bound, before = started
            try:
                result = wrapped(*args, **kwargs)
            except Exception as exc:
                if emit_on_error:
                    finish(bound, before, None, exc)
                raise
            finish(bound, before, result, None)
            return result

        def direct_call(_proxy: object, *args: Any, **kwargs: Any) -> Any:
            """``sync_wrapper(fn, None, args, kwargs)``, one frame shorter where it
            matters: a plain function without snapshot, called directly."""
            if not _receivers.receivers:
                return sync_wrapper(fn, None, args, kwargs)
            try:
                if fill is not None and not kwargs and len(args) == count:
                    bound = fill(args)
                else:
                    bound = bind(None, args, kwargs)
            except Exception as error:
                _report(action, error)  # raises in strict mode, before the call
                return fn(*args, **kwargs)
            try:
                result = fn(*args, **kwargs)
            except Exception as exc:
                if emit_on_error:
                    finish(bound, _NO_SNAPSHOT, None, exc)
                raise
            finish(bound, _NO_SNAPSHOT, result, None)
            return result

        async def async_wrapper(
            wrapped: Callable[..., Any],
            instance: object,
            args: tuple[Any, ...],
            kwargs: dict[str, Any],
        ) -> Any:
            if not _receivers.receivers:
                if not settings.warned_no_receivers:
                    _warn_discarded()
                return await wrapped(*args, **kwargs)
            started = begin(instance, args, kwargs)
            if started is None:
                return await wrapped(*args, **kwargs)
            bound, before = started
            try:
                result = await wrapped(*args, **kwargs)
            except Exception as exc:
                if emit_on_error:
                    finish(bound, before, None, exc)
                raise
            finish(bound, before, result, None)
            return result

        wrapper = async_wrapper if self.is_async else sync_wrapper

        def direct_wrapper(_proxy: object, *args: Any, **kwargs: Any) -> Any:
            return wrapper(fn, None, args, kwargs)

        self.sync_wrapper = sync_wrapper
        self.async_wrapper = async_wrapper
        fast = not self.is_async and snapshot is None
        self.direct_call = direct_call if fast else direct_wrapper

    def _resolver(self, label: str, spec: object) -> ResolverFn | None:
        if spec is None:
            return None
        return make_resolver(label, spec, self.binder, result_allowed=True)
