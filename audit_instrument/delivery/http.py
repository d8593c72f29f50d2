"""How the engine POSTs: a small keep-alive connection pool, or any httpx transport.

The engine needs one thing from HTTP: ``post(path, body, headers) -> Answer``.
Two implementations:

* :class:`PooledPoster` (the default): keep-alive ``http.client`` connections
  shared by the engine's threads. ``benchmarks/bench_delivery.py`` measured
  ~165 µs of CPU per request on loopback against ~450 µs for httpx's
  transport and ~750 µs for ``httpx.Client``: with the GIL, CPU per request
  is what bounds a Python process's delivery rate.
* :class:`HttpxPoster`: any :class:`httpx.BaseTransport` — used when a proxy
  applies (from ``HTTPS_PROXY`` and friends) or when the caller passes
  ``transport=`` (custom TLS, mounts, test transports).

Both raise :class:`NoAnswerError` for timeouts and connection errors,
which the engine retries.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import threading
import urllib.request
from collections.abc import Mapping
from typing import Any, NamedTuple, Protocol

import httpx

__all__ = ["Answer", "HttpxPoster", "PooledPoster", "Poster", "NoAnswerError", "make_poster"]


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
        return http.client.responses.get(self.status, "")


class NoAnswerError(Exception):
    """No answer: the request timed out or the connection failed (worth retrying)."""

    def __init__(self, message: str, *, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


class Poster(Protocol):
    """What the engine sends requests through."""

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer: ...

    def close(self) -> None: ...


def _tls_context() -> ssl.SSLContext:
    try:
        import certifi  # httpx's own CA bundle, installed with it
    except ImportError:  # pragma: no cover - httpx depends on certifi
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class PooledPoster:
    """Keep-alive HTTP/1.1 connections to one origin, shared safely by threads.

    At most ``max_connections`` are kept idle; ``timeout`` applies to the
    connect and to each read. :meth:`close` also shuts down connections in
    use, so a request hanging on a dead server ends at once.
    """

    def __init__(self, base_url: str, *, timeout: float, max_connections: int) -> None:
        url = httpx.URL(base_url)
        self._https = url.scheme == "https"
        self._host = url.host
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.raw_path.decode("ascii").rstrip("/")
        self._timeout = timeout
        self._max_idle = max_connections
        self._context = _tls_context() if self._https else None
        self._lock = threading.Lock()
        self._idle: list[http.client.HTTPConnection] = []
        self._busy: set[http.client.HTTPConnection] = set()
        self._closed = False

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._closed:
                raise NoAnswerError("the connection pool is closed")
            if self._idle:
                conn = self._idle.pop()
                reused = True
            else:
                conn = (http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                                    context=self._context) if self._https else
                        http.client.HTTPConnection(self._host, self._port, timeout=self._timeout))
                reused = False
            self._busy.add(conn)
        return conn, reused

    def _give_back(self, conn: http.client.HTTPConnection, keep: bool) -> None:
        with self._lock:
            self._busy.discard(conn)
            if keep and not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """POST ``body`` to ``path``; a stale keep-alive connection is replaced once."""
        for _ in range(2):
            conn, reused = self._connection()
            try:
                conn.request("POST", self._prefix + path, body=body, headers=dict(headers))
                response = conn.getresponse()
                data = response.read()
            except TimeoutError as exc:
                self._give_back(conn, keep=False)
                raise NoAnswerError(f"timed out after {self._timeout:g}s", timeout=True) from exc
            except (OSError, http.client.HTTPException) as exc:
                self._give_back(conn, keep=False)
                stale = reused and isinstance(exc, (http.client.RemoteDisconnected,
                                                    ConnectionResetError, BrokenPipeError))
                if stale:  # the server closed an idle connection: try a fresh one
                    continue
                raise NoAnswerError(f"{type(exc).__name__}: {exc}") from exc
            self._give_back(conn, keep=not response.will_close)
            return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                          data)
        raise NoAnswerError("the connection was closed by the server twice")

    def close(self) -> None:
        """Close idle connections and cut those in use (their requests fail at once)."""
        with self._lock:
            self._closed = True
            idle, busy = self._idle, list(self._busy)
            self._idle = []
        for conn in idle:
            conn.close()
        for conn in busy:
            sock = conn.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class HttpxPoster:
    """Send through an :class:`httpx.BaseTransport` (proxies, custom transports)."""

    def __init__(self, base_url: str, transport: httpx.BaseTransport, *, timeout: float) -> None:
        self._base_url = base_url.rstrip("/")
        self._transport = transport
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}

    def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        request = httpx.Request("POST", self._base_url + path, content=body,
                                headers=dict(headers), extensions=self._extensions)
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
    """The poster for ``base_url``: ``transport`` if given, httpx through a proxy if
    the environment sets one for this host, else a :class:`PooledPoster`."""
    if transport is not None:
        return HttpxPoster(base_url, transport, timeout=timeout)
    url = httpx.URL(base_url)
    host = url.host
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    proxy = None
    if not loopback and not urllib.request.proxy_bypass(host):
        proxy = urllib.request.getproxies().get(url.scheme)
    if proxy:
        limits = httpx.Limits(max_connections=max_connections,
                              max_keepalive_connections=max_connections)
        return HttpxPoster(base_url, httpx.HTTPTransport(limits=limits, proxy=proxy),
                           timeout=timeout)
    return PooledPoster(base_url, timeout=timeout, max_connections=max_connections)
