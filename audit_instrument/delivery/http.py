"""How the engine POSTs: one httpx transport, and the one rule for where requests may go.

The engine needs one thing from HTTP: ``post(path, body, headers) -> Answer``
(the :class:`Poster` seam). :func:`make_poster` gives it an
:class:`HttpxPoster` over one shared :class:`httpx.HTTPTransport` whose
connection pool is sized to the engine's in-flight cap, or over the
transport the caller passed (``transport=``: custom TLS, mounts, tests).
TLS verification reads ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` like httpx does.

:func:`route` is the single rule deciding whether a base URL is allowed
and whether its requests go through a proxy, so the two can never disagree:

* ``https://`` to any host: through the proxy the environment names for it
  (``HTTPS_PROXY``, else ``ALL_PROXY``; ``NO_PROXY`` respected), else direct;
* plain ``http://`` only to a literal loopback address (``127.0.0.0/8``,
  ``::1``) or ``localhost`` itself — not ``*.localhost``, which a resolver
  or proxy may send anywhere — and loopback is always reached directly,
  never through a proxy, so nothing sent in the clear leaves the machine;
* a user name or password in the URL is refused (the API key goes in a
  header; credentials in a URL end up in logs).

>>> route("http://127.0.0.1:8080").proxy is None
True
"""

from __future__ import annotations

import http
import ipaddress
import json
import re
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import httpx

from ..errors import AuditConfigError

if TYPE_CHECKING:
    from ..event import AuditEvent

__all__ = [
    "Answer", "Destination", "HttpxPoster", "NoAnswerError", "Poster", "Route", "make_poster",
    "route",
]


class Answer(NamedTuple):
    """A server's answer: status, headers (lower-case names) and body."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` if it is not)."""
        return json.loads(self.body)

    @property
    def reason(self) -> str:
        try:
            return http.HTTPStatus(self.status).phrase
        except ValueError:
            return ""


class NoAnswerError(Exception):
    """No answer: the request timed out or the connection failed (worth retrying)."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class Poster(Protocol):
    """What the engine sends requests through."""

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer: ...

    def close(self) -> None: ...


class Destination(Protocol):
    """What the engine needs from an HTTP sender (e.g. :class:`~audit_instrument.WorkOS`).

    It builds the request for an event and reads the server's error message;
    the engine does the rest.."""

    def request_parts(self, event: AuditEvent) -> tuple[str, bytes, Mapping[str, str]]:
        """``(path, body, headers)`` of the POST that delivers ``event``."""
        ...

    def error_message(self, response: Answer) -> str:
        """The server's explanation of a failed answer, for errors and dead letters."""
        ...


class Route(NamedTuple):
    """Where requests to a base URL go (see :func:`route`)."""

    base_url: str
    """The base URL without a trailing slash."""
    proxy: str | None
    """The proxy to send through, or ``None`` for a direct connection."""


_USERINFO = re.compile(r"(//)[^/@]*@")


def redact_url(text: str) -> str:
    """``text`` with any ``user:password@`` part of a URL replaced by ``***@``."""
    return _USERINFO.sub(r"\1***@", text)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a literal loopback IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def route(base_url: str) -> Route:
    """The one rule for where requests to ``base_url`` may go, and how (module docstring).

    Raises :class:`~audit_instrument.AuditConfigError` for a URL that breaks
    it; the message never repeats a password.
    """
    shown = redact_url(str(base_url))
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise AuditConfigError(
            f"base_url is not a URL: {shown!r} ({redact_url(str(exc))})") from None
    if url.userinfo:
        raise AuditConfigError(
            f"base_url must not contain a user name or password ({shown!r}): the API key "
            f"is sent in the Authorization header")
    host = url.host
    if url.scheme == "https" and host:
        proxy = None if is_loopback(host) else _environment_proxy(host)
        return Route(str(base_url).rstrip("/"), proxy)
    if url.scheme == "http" and is_loopback(host):
        return Route(str(base_url).rstrip("/"), None)
    raise AuditConfigError(
        f"base_url must use https (plain http only to a loopback address such as "
        f"127.0.0.1, [::1] or localhost), got {shown!r}"
    )


def _environment_proxy(host: str) -> str | None:
    # The standard library reads HTTPS_PROXY / https_proxy / ALL_PROXY and
    # NO_PROXY (and the system settings on macOS and Windows).
    if urllib.request.proxy_bypass(host):
        return None
    proxies = urllib.request.getproxies()
    return proxies.get("https") or proxies.get("all") or None


class HttpxPoster:
    """POST through an :class:`httpx.BaseTransport` (one pool shared by the workers)."""

    def __init__(self, base_url: str, transport: httpx.BaseTransport, *, timeout: float) -> None:
        self._base_url = base_url.rstrip("/")
        self._transport = transport
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        request = httpx.Request("POST", self._base_url + path, content=body,
                                headers=headers, extensions=self._extensions)
        try:
            response = self._transport.handle_request(request)
            try:
                data = response.read()
            finally:
                response.close()
        except httpx.TimeoutException as exc:
            raise NoAnswerError(f"{type(exc).__name__}: {exc}", timeout=True) from exc
        except httpx.TransportError as exc:
            raise NoAnswerError(f"{type(exc).__name__}: {exc}") from exc
        return Answer(response.status_code,
                      {k.lower(): v for k, v in response.headers.items()}, data)

    def close(self) -> None:
        self._transport.close()


def make_poster(base_url: str, *, timeout: float, max_connections: int,
                transport: httpx.BaseTransport | None = None) -> Poster:
    """The poster for ``base_url``: over ``transport`` if given, else over one
    :class:`httpx.HTTPTransport` pooling up to ``max_connections`` connections,
    through the proxy :func:`route` chose."""
    where = route(base_url)
    if transport is None:
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        transport = httpx.HTTPTransport(limits=limits, proxy=where.proxy, trust_env=True)
    return HttpxPoster(where.base_url, transport, timeout=timeout)
