"""What the ASGI, WSGI and Django middlewares share.

Each middleware reads four things from its request — the user, the peer
address with ``X-Forwarded-For``, the ``User-Agent`` — and hands them to a
:class:`RequestBinder`, which turns them into one binding of the audit
context (what ``audit_actor(...)`` would bind, built without its argument
checks, as this runs on every request). Resolvers supplied by the user are called here, with their
failures logged (raised in strict mode), so a broken resolver never turns a
request into a 500.
"""

from __future__ import annotations

import functools
import inspect
import ipaddress
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

from ..config import settings
from ..context import AuditContext, _current, _new_context, resolve_party
from ..errors import AuditConfigError

__all__ = ["RequestBinder", "RequestBlock", "TrustedProxies", "user_party"]

logger = logging.getLogger("audit_instrument")

Req = TypeVar("Req")
T = TypeVar("T")
R = TypeVar("R")
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


_MAX_CACHED = 4096
_MAX_CACHED_HEADER = 256  # requests with longer X-Forwarded-For or User-Agent: not cached
_MAX_HOP = 64  # no IP address with port and brackets is longer: not cached, not an IP


@functools.lru_cache(maxsize=_MAX_CACHED)
def _parse_address(text: str) -> _Address | None:
    """An IP from a peer or ``X-Forwarded-For`` entry; ports and brackets removed.

    Cached: :mod:`ipaddress` parsing costs microseconds, and the same proxies
    and clients come back request after request.
    """
    text = text.strip()
    if text.startswith("["):  # "[2001:db8::1]:443"
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # "203.0.113.7:8080"
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """The peers allowed to tell us the client's address in ``X-Forwarded-For``.

    Give addresses or networks (``"10.0.0.0/8"``, ``"::1"``), or ``"*"`` to
    trust every peer (only when the app is reachable through proxies alone).
    With none, ``X-Forwarded-For`` is ignored and the peer address is the
    client's: a header any client can write proves nothing.

    >>> proxies = TrustedProxies(["10.0.0.0/8"])
    >>> proxies.client_ip("10.0.0.2", "198.51.100.9, 203.0.113.7, 10.0.0.1")
    '203.0.113.7'
    >>> proxies.client_ip("192.0.2.1", "198.51.100.9")   # untrusted peer: header ignored
    '192.0.2.1'
    """

    __slots__ = ("_enabled", "_everyone", "_hop", "_networks", "_seen")

    def __init__(self, proxies: Iterable[str] | str = ()) -> None:
        if isinstance(proxies, str):
            proxies = proxies.split(",")
        networks: list[_Network] = []
        self._everyone = False
        for entry in proxies:
            if not isinstance(entry, str):
                raise AuditConfigError(
                    f"trusted_proxies takes IP addresses or networks as strings, not {entry!r}"
                )
            entry = entry.strip()
            if entry == "*":
                self._everyone = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise AuditConfigError(
                    f"trusted_proxies: {entry!r} is not an IP address or network "
                    "(e.g. '10.0.0.1', '10.0.0.0/8', '::1', or '*')"
                ) from None
        self._networks = tuple(networks)
        self._enabled = self._everyone or bool(self._networks)
        self._hop = functools.lru_cache(maxsize=_MAX_CACHED)(self._classify)
        self._seen: dict[tuple[str, str], str] = {}

    def __bool__(self) -> bool:
        return self._enabled

    def __repr__(self) -> str:
        shown = ["*"] if self._everyone else [str(n) for n in self._networks]
        return f"TrustedProxies({shown!r})"

    def _classify(self, text: str) -> tuple[str | None, bool]:
        """``(normalised address or None, trusted?)``; cached per instance."""
        address = _parse_address(text)
        if address is None:
            return None, False
        return str(address), self._everyone or any(address in n for n in self._networks)

    def client_ip(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: the right-most hop not added by a trusted proxy.

        ``X-Forwarded-For`` is read only when ``peer`` is trusted; it is then
        walked from the right (the hop nearest to us) past trusted proxies.
        An entry that is not an IP stops the walk at the last verified hop.
        Answers for short headers are remembered (a few thousand): the same
        proxies and clients come back request after request.
        """
        if not forwarded_for or peer is None or not self._enabled:
            return peer
        key = (peer, forwarded_for)
        seen = self._seen.get(key)
        if seen is not None:
            return seen
        found = self._walk(peer, forwarded_for)
        if found is not None and len(forwarded_for) <= _MAX_CACHED_HEADER:
            if len(self._seen) >= _MAX_CACHED:
                self._seen.clear()
            self._seen[key] = found
        return found

    def _walk(self, peer: str, forwarded_for: str) -> str | None:
        closest, trusted = self._hop(peer)
        if closest is None or not trusted:
            return peer
        for hop in reversed(forwarded_for.split(",")):
            address, trusted = self._hop(hop) if len(hop) <= _MAX_HOP else (None, False)
            if address is None:
                break
            closest = address
            if not trusted:
                break
        return closest


def _attribute(user: object, name: str) -> object:
    try:
        return getattr(user, name, None)
    except NotImplementedError:  # Starlette's BaseUser leaves these abstract
        return None


def user_party(user: object) -> tuple[str, str] | None:
    """``(id, name)`` of a framework's user object; ``None`` for anonymous users.

    Understands anything :func:`~audit_instrument.context.resolve_party`
    does (``id`` + ``email``/``name``/``username``, mappings, ``(id, name)``),
    Django users (``is_authenticated``, ``pk``) and Starlette users
    (``identity``, ``display_name``). A plain string is taken as both id and
    name (``REMOTE_USER``).
    """
    kind = type(user)
    if kind is tuple or kind is dict:
        return resolve_party(user)
    if user is None:
        return None
    if isinstance(user, str):
        return (user, user) if user else None
    if _attribute(user, "is_authenticated") is False:
        return None
    party = resolve_party(user)
    if party is not None:
        return party
    ident = _attribute(user, "pk") or _attribute(user, "identity") or _attribute(
        user, "display_name"
    )
    if ident is None or ident == "":
        return None
    name = _attribute(user, "display_name") or ident
    return str(ident), str(name)


def _resolver_failed(label: str) -> None:
    """In an ``except`` block around a user-supplied resolver: log (re-raise when strict)."""
    if settings.strict:
        raise  # the resolver's exception, which the caller is handling
    logger.exception("audit_instrument: the middleware's %s resolver failed", label)


async def settle(label: str, value: object) -> object:
    """Await ``value`` if a resolver returned an awaitable (async resolvers)."""
    if not inspect.isawaitable(value):
        return value
    try:
        return await value
    except Exception:
        if settings.strict:
            raise
        logger.exception("audit_instrument: the middleware's %s resolver failed", label)
        return None


class RequestBinder(Generic[Req]):
    """Turns one request into the audit-context binding for its lifetime.

    ``actor`` and ``group`` are the user's resolvers, called with the
    framework's request object (ASGI scope, WSGI environ, Django request);
    ``actor`` returns a user (see :func:`user_party`) and ``group`` a string
    (or ``group`` is a constant string). Without ``group`` the group bound
    outside the request, if any, is kept.
    """

    __slots__ = ("_bound", "actor", "group", "proxies")

    def __init__(
        self,
        *,
        actor: Callable[[Req], object] | None,
        group: str | Callable[[Req], str | None] | None,
        trusted_proxies: Iterable[str] | str,
    ) -> None:
        if actor is not None and not callable(actor):
            raise AuditConfigError(f"actor= takes a callable over the request, not {actor!r}")
        if group is not None and not (isinstance(group, str) or callable(group)):
            raise AuditConfigError(
                f"group= takes a string or a callable over the request, not {group!r}"
            )
        self.actor = actor
        self.group = group
        self.proxies = TrustedProxies(trusted_proxies)
        self._bound: dict[
            tuple[tuple[str, str] | None, str | None, str | None, object, object], AuditContext
        ] = {}

    def user(self, request: Req, default: Callable[[Req], object]) -> object:
        """The request's user, from the ``actor`` resolver or ``default``; ``None`` if it failed."""
        try:
            return (self.actor or default)(request)
        except Exception:
            _resolver_failed("actor")
            return None

    def context(
        self,
        request: Req,
        user: object,
        peer: str | None,
        forwarded_for: str | bytes | None,
        user_agent: str | bytes | None,
    ) -> AuditContext:
        """This request's audit context: what ``audit_actor(user, group=...,
        location=..., user_agent=...)`` would bind, built directly, as this
        runs on every request. Without a group, the one bound outside is kept.
        Header values may be raw bytes (ASGI), decoded as Latin-1 when needed.

        Contexts are frozen, so the last few thousand are kept and shared by
        requests with the same actor, group, peer and headers: the same users
        come back from the same addresses, and building one costs more than
        finding it.
        """
        try:
            party = user_party(user)
        except Exception:
            if settings.strict:
                raise
            logger.exception(
                "audit_instrument: could not read an actor from a %s", type(user).__name__
            )
            party = None
        group = self.group
        if group is None:
            group = _current.get().group
        elif not isinstance(group, str):
            try:
                resolved = group(request)
            except Exception:
                _resolver_failed("group")
                resolved = None
            group = None if resolved is None else str(resolved)
        key = (party, group, peer, forwarded_for, user_agent)
        bound = self._bound.get(key)
        if bound is None:
            actor_id, actor_name = party if party is not None else (None, None)
            location = self.proxies.client_ip(peer, _text(forwarded_for))
            bound = _new_context(actor_id, actor_name, group, location, _text(user_agent))
            if len(self._bound) >= _MAX_CACHED:
                self._bound.clear()
            if (forwarded_for is None or len(forwarded_for) <= _MAX_CACHED_HEADER) and (
                user_agent is None or len(user_agent) <= _MAX_CACHED_HEADER
            ):
                self._bound[key] = bound
        return bound


def _text(value: str | bytes | None) -> str | None:
    """A header value as text: bytes are Latin-1 (HTTP's), as ASGI servers leave them."""
    return value.decode("latin-1") if isinstance(value, bytes) else value


class RequestBlock:
    """Binds one request's :class:`AuditContext`; resets it on exit, also on error.

    Usage (WSGI and Django; ASGI sets the contextvar itself)::

        with RequestBlock(binder.context(request, user, peer, forwarded_for, agent)):
            response = app(request)
    """

    __slots__ = ("_bound", "_token")

    def __init__(self, bound: AuditContext) -> None:
        self._bound = bound

    def __enter__(self) -> AuditContext:
        self._token = _current.set(self._bound)
        return self._bound

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)


def call_in(bound: AuditContext, fn: Callable[..., R], *args: Any) -> R:
    """Call ``fn(*args)`` with ``bound`` as the audit context, then restore the caller's."""
    token = _current.set(bound)
    try:
        return fn(*args)
    finally:
        _current.reset(token)


def steps_in(bound: AuditContext, iterator: Iterator[T]) -> Iterator[T]:
    """Yield each item of ``iterator``, produced with ``bound`` as the audit context.

    The caller's context is restored between items; closing is left to the caller.
    """
    while True:
        token = _current.set(bound)
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        finally:
            _current.reset(token)
        yield chunk


def iterate_in(bound: AuditContext, iterable: Iterable[T]) -> Iterator[T]:
    """Yield from ``iterable`` with ``bound`` as the audit context of each step.

    For response bodies iterated after the middleware returned (WSGI, Django
    streaming): every chunk is produced, and the body closed, with the
    request's context; the caller's context is restored between chunks.
    """
    iterator = iter(iterable)
    try:
        yield from steps_in(bound, iterator)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            call_in(bound, close)


async def aiterate_in(bound: AuditContext, iterable: Any) -> AsyncIterator[Any]:
    """The ``async for`` twin of :func:`iterate_in`."""
    iterator = aiter(iterable)
    try:
        while True:
            token = _current.set(bound)
            try:
                chunk = await anext(iterator)
            except StopAsyncIteration:
                return
            finally:
                _current.reset(token)
            yield chunk
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            token = _current.set(bound)
            try:
                await aclose()
            finally:
                _current.reset(token)
