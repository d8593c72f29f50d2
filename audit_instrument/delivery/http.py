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

import encodings.idna  # noqa: F401
import http
import ipaddress
import json
import re
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

# Imported here (encodings.idna above too), before any worker thread runs, rather
# than lazily by httpx and the socket module on a worker's first request: an
# import in progress in one thread while another forks leaves the child a
# half-initialised module ("unknown encoding: idna", "partially initialized
# module 'httpcore'").
import certifi  # noqa: F401
import httpcore  # noqa: F401
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
    """No answer: the request timed out or the connection failed (worth retrying).

    ``kind`` names what went wrong in the engine's error message.
    """

    def __init__(self, message: str, *, timeout: bool = False, kind: str | None = None) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.kind = kind or ("request timed out" if timeout else "request connection failed")


class Poster(Protocol):
    """What the engine sends requests through."""

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer: ...

    def thread_done(self) -> None:
        """The calling thread sends no more requests."""
        ...

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
    """POST through httpx: each worker thread has its own keep-alive connection.

    One :class:`httpx.HTTPTransport` (a pool of one connection) per thread,
    all sharing one TLS context and proxy: httpcore 1.0's pool does work
    quadratic in its connections on every request (encode/httpcore#1035),
    which at 70 connections cost 2-4 ms of CPU per request here
    (``benchmarks/bench_delivery.py``, ``requests_per_second=1000``); a pool
    of one does none. A ``transport`` given by the caller is shared by all.
    """

    def __init__(self, base_url: str, *, timeout: float, proxy: str | None = None,
                 transport: httpx.BaseTransport | None = None) -> None:
        self._base_url = base_url.rstrip("/")
        self._urls: dict[str, httpx.URL] = {}
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}
        self._shared = transport
        self._proxy = proxy
        self._tls: ssl.SSLContext | None = None  # made once, on first use
        self._local = threading.local()
        self._lock = threading.Lock()
        self._own: dict[int, httpx.BaseTransport] = {}  # per thread
        self._closed = False

    def _transport(self) -> httpx.BaseTransport:
        if self._shared is not None:
            return self._shared
        transport: httpx.BaseTransport | None = self._local.__dict__.get("transport")
        if transport is None:
            with self._lock:
                if self._closed:
                    raise NoAnswerError("the HTTP client is closed")
                if self._tls is None:
                    self._tls = (
                        httpx.create_ssl_context(trust_env=True)  # SSL_CERT_FILE/DIR
                        if self._base_url.startswith("https:") else
                        # plain http to loopback never uses TLS: a context that trusts
                        # nothing stands in, without loading a CA bundle (~0.1 s)
                        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
                transport = httpx.HTTPTransport(
                    verify=self._tls, proxy=self._proxy,
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
                self._own[threading.get_ident()] = transport
            self._local.transport = transport
        return transport

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        url = self._urls.get(path)
        if url is None:  # parsed once per path, not per request
            url = self._urls[path] = httpx.URL(self._base_url + path)
        request = httpx.Request("POST", url, content=body, headers=headers,
                                extensions=self._extensions)
        try:
            response = self._transport().handle_request(request)
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

    def thread_done(self) -> None:
        """The calling thread sends no more: close its connection."""
        transport = self._local.__dict__.pop("transport", None)
        if transport is not None:
            with self._lock:
                self._own.pop(threading.get_ident(), None)
            transport.close()

    def close(self) -> None:
        """Close every connection (requests in flight fail or are abandoned)."""
        if self._shared is not None:
            self._shared.close()
            return
        with self._lock:
            self._closed = True
            transports, self._own = list(self._own.values()), {}
        for transport in transports:
            transport.close()


def make_poster(base_url: str, *, timeout: float,
                transport: httpx.BaseTransport | None = None) -> HttpxPoster:
    """The poster for ``base_url``: over ``transport`` if given, else over
    connections of its own through the proxy :func:`route` chose."""
    where = route(base_url)
    return HttpxPoster(where.base_url, timeout=timeout,
                       proxy=None if transport is not None else where.proxy, transport=transport)
