"""Binding a call's arguments by name, and the resolvers that read them.

``@audit(target=..., metadata=..., snapshot=...)`` takes either a parameter
name (``"tweet"``, or ``"result"`` for the return value) or a callable whose
parameters are named after the decorated function's (plus ``result``). The
declaration is checked against the function's signature when the decorator
is applied, so a typo fails at import time. Each declaration compiles to a
small closure ``(bound_arguments, result) -> value`` for the hot path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from .errors import AuditValidationError

RESULT = "result"
ResolverFn = Callable[[dict[str, Any], Any], Any]
_P = inspect.Parameter
_VAR = (_P.VAR_POSITIONAL, _P.VAR_KEYWORD)


class Binder:
    """Maps ``(instance, args, kwargs)`` of a call to ``{parameter: value}``.

    Functions with only ordinary parameters are bound with ``zip`` (several
    times cheaper than :meth:`inspect.Signature.bind`); others through the
    signature. ``takes_instance`` is ``None`` for plain functions: wrapt
    tells per call whether it was bound as a method.
    """

    __slots__ = ("defaults", "names", "open_keywords", "signature", "simple", "takes_instance")

    def __init__(self, fn: Callable[..., Any], takes_instance: bool | None) -> None:
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        self.names = tuple(p.name for p in params if p.kind not in _VAR)
        self.simple = all(p.kind not in (*_VAR, _P.POSITIONAL_ONLY) for p in params)
        self.open_keywords = any(p.kind is _P.VAR_KEYWORD for p in params)
        self.defaults = tuple((p.name, p.default) for p in params if p.default is not _P.empty)
        self.takes_instance = takes_instance

    def bind(
        self, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        """The call's arguments by parameter name, defaults filled in."""
        if instance is not None and self.takes_instance is not False and self.names:
            args = (instance, *args)
        if self.simple:
            bound = dict(zip(self.names, args))
            if kwargs:
                bound.update(kwargs)
            for name, default in self.defaults:
                if name not in bound:
                    bound[name] = default
            return bound
        ba = self.signature.bind(*args, **kwargs)
        ba.apply_defaults()
        out: dict[str, Any] = {}
        for name, value in ba.arguments.items():
            if self.signature.parameters[name].kind is _P.VAR_KEYWORD:
                out.update(value)
            else:
                out[name] = value
        return out


def _has(binder: Binder, name: str, result_allowed: bool) -> bool:
    return name in binder.names or binder.open_keywords or (result_allowed and name == RESULT)


def _available(binder: Binder, result_allowed: bool) -> str:
    return ", ".join(binder.names + ((RESULT,) if result_allowed else ()))


def make_resolver(label: str, spec: object, binder: Binder, *, result_allowed: bool) -> ResolverFn:
    """Compile a declaration into ``(bound, result) -> value``, checking it now.

    ``spec`` is a parameter name, a callable over parameters by name, or any
    other value (returned as it is).
    """
    if isinstance(spec, str):
        if not _has(binder, spec, result_allowed):
            raise AuditValidationError(
                label,
                f"names no parameter of the function (has: {_available(binder, result_allowed)})",
                spec,
            )
        if spec == RESULT and RESULT not in binder.names:
            return lambda bound, result: result
        return lambda bound, result: bound.get(spec)
    if not callable(spec):
        return lambda bound, result: spec
    fn: Callable[..., Any] = spec
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin without a signature: give it everything
        params = [inspect.Parameter("kwargs", _P.VAR_KEYWORD)]
    takes = tuple(p.name for p in params if p.kind not in _VAR)
    missing = [
        p.name
        for p in params
        if p.kind not in _VAR and p.default is _P.empty and not _has(binder, p.name, result_allowed)
    ]
    if missing:
        raise AuditValidationError(
            label,
            f"the callable asks for {missing}, which the function does not have "
            f"(has: {_available(binder, result_allowed)})",
        )
    wants_result = result_allowed and RESULT not in binder.names
    if any(p.kind is _P.VAR_KEYWORD for p in params):
        if wants_result:

            def pass_all(bound: dict[str, Any], result: Any) -> Any:
                return fn(**bound, result=result)

            return pass_all
        return lambda bound, result: fn(**bound)
    if len(params) == 1 and params[0].kind is _P.POSITIONAL_OR_KEYWORD and takes[0] in binder.names:
        only = takes[0]  # the usual target=lambda tweet_id: ...
        return lambda bound, result: fn(bound[only])
    gives_result = wants_result and RESULT in takes
    names = tuple(n for n in takes if n != RESULT or not gives_result)

    def by_name(bound: dict[str, Any], result: Any) -> Any:
        kwargs = {n: bound[n] for n in names if n in bound}
        if gives_result:
            kwargs[RESULT] = result
        return fn(**kwargs)

    return by_name
