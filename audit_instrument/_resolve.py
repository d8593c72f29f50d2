"""Binding a call's arguments by name, and the resolvers that read them.

``@audit(target=..., metadata=..., snapshot=...)`` takes either a parameter
name (``"tweet"``, or ``"result"`` for the return value) or a callable whose
parameters are named after the decorated function's (plus ``result``). The
declaration is checked against the function's signature when the decorator
is applied, so a typo fails at import time.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from .errors import AuditValidationError

RESULT = "result"
_VAR = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class Binder:
    """Maps ``(instance, args, kwargs)`` of a call to ``{parameter: value}``.

    The common case (no ``*args``/``**kwargs`` in the signature) avoids
    :meth:`inspect.Signature.bind`, which costs several microseconds.
    """

    __slots__ = ("defaults", "names", "signature", "simple", "takes_instance")

    def __init__(self, fn: Callable[..., Any], takes_instance: bool | None) -> None:
        self.signature = inspect.signature(fn)
        params = list(self.signature.parameters.values())
        self.names = tuple(p.name for p in params if p.kind not in _VAR)
        self.simple = not any(p.kind in _VAR for p in params) and not any(
            p.kind is inspect.Parameter.POSITIONAL_ONLY for p in params
        )
        self.defaults = tuple(
            (p.name, p.default) for p in params if p.default is not inspect.Parameter.empty
        )
        # None: decided per call (a plain function may be bound as a method)
        self.takes_instance = takes_instance

    def bind(self, instance: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
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
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            else:
                out[name] = value
        return out

    @property
    def available(self) -> frozenset[str]:
        params = self.signature.parameters.values()
        names = {p.name for p in params}
        return frozenset(names)

    @property
    def open_keywords(self) -> bool:
        return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self.signature.parameters.values())


class Resolver:
    """One ``target=`` / ``actor=`` / ``metadata=`` / ``snapshot=`` declaration."""

    __slots__ = ("fn", "label", "name", "pass_all", "required", "takes", "wants_result")

    def __init__(self, label: str, spec: str | Callable[..., Any]) -> None:
        self.label = label
        self.name: str | None = None
        self.fn: Callable[..., Any] | None = None
        self.takes: tuple[str, ...] = ()
        self.required: tuple[str, ...] = ()
        self.pass_all = False
        if isinstance(spec, str):
            if not spec.isidentifier():
                raise AuditValidationError(label, "a parameter name must be an identifier", spec)
            self.name = spec
            self.wants_result = spec == RESULT
            return
        if not callable(spec):
            raise AuditValidationError(
                label, "must be a parameter name or a callable over the call's arguments", spec
            )
        self.fn = spec
        try:
            params = inspect.signature(spec).parameters.values()
        except (TypeError, ValueError):
            params = ()  # builtins without a signature: pass everything
            self.pass_all = True
        self.takes = tuple(p.name for p in params if p.kind not in _VAR)
        self.pass_all = self.pass_all or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params
        )
        self.required = tuple(
            p.name
            for p in params
            if p.kind not in _VAR and p.default is inspect.Parameter.empty
        )
        self.wants_result = self.pass_all or RESULT in self.takes

    def check(self, binder: Binder, *, result_allowed: bool) -> None:
        """Fail at decoration time if this resolver asks for what the call lacks."""
        available = set(binder.available)
        if result_allowed:
            available.add(RESULT)
        if self.name is not None:
            if self.name not in available and not binder.open_keywords:
                raise AuditValidationError(
                    self.label,
                    f"names no parameter of the function (has: {', '.join(sorted(available))})",
                    self.name,
                )
            return
        missing = [n for n in self.required if n not in available]
        if missing and not binder.open_keywords:
            raise AuditValidationError(
                self.label,
                f"callable asks for {missing} that the function does not have "
                f"(has: {', '.join(sorted(available))}); add **_ to ignore the rest",
            )

    def __call__(self, bound: Mapping[str, Any], result: Any = None, *, done: bool = False) -> Any:
        if self.name is not None:
            if self.name == RESULT and done and RESULT not in bound:
                return result
            return bound.get(self.name)
        assert self.fn is not None
        if self.pass_all:
            kwargs = dict(bound)
        else:
            kwargs = {n: bound[n] for n in self.takes if n in bound}
        if done and self.wants_result and RESULT not in bound:
            kwargs[RESULT] = result
        return self.fn(**kwargs)
