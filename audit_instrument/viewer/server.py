"""The standalone viewer: ``python -m audit_instrument serve [DB]``, on the standard library alone.

A threaded :mod:`wsgiref` server runs :class:`~.wsgi.WSGIViewer` behind a
guard that

* answers only to the host names it serves (the ``Host`` header is checked,
  so a web page whose domain is made to resolve to 127.0.0.1 — DNS
  rebinding — cannot read the log through the visitor's browser);
* on a non-loopback address, asks for an access token: given with
  ``Authorization: Bearer <token>``, or once as ``?token=`` (it then becomes
  a ``SameSite=Strict``, ``HttpOnly`` cookie and the address is cleaned).

The caller reads every group. Reads are recorded in the store itself, with
the local user (loopback) or the token's holder as the actor.
"""

from __future__ import annotations

import getpass
import hmac
import ipaddress
import secrets
import socket
import threading
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.cookies import SimpleCookie
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qsl, urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from ..errors import AuditConfigError
from ..store import AuditStore
from ._access import ALL_GROUPS
from .core import CSP, Viewer
from .wsgi import StartResponse, WSGIViewer

__all__ = ["COOKIE", "Guard", "StandaloneServer", "is_loopback", "make_server"]

COOKIE = "audit_viewer_token"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or address to bind) is this machine's loopback only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _plain(start_response: StartResponse, status: int, text: str,
           *headers: tuple[str, str]) -> list[bytes]:
    start_response(f"{status} {HTTPStatus(status).phrase}", [
        ("Content-Type", "text/plain; charset=utf-8"), ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"), ("Cache-Control", "no-store"), *headers,
    ])
    return [text.encode("utf-8")]


class Guard:
    """WSGI middleware: the ``Host`` check and, if ``token`` is set, the access token."""

    def __init__(self, app: Callable[..., Iterable[bytes]], *, hosts: Iterable[str],
                 token: str | None) -> None:
        self.app = app
        self.hosts = frozenset(host.lower() for host in hosts)
        self.token = token

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        host = environ.get("HTTP_HOST", "").lower()
        if host not in self.hosts:
            return _plain(
                start_response, 421,
                f"This audit log viewer does not answer to the host {host!r} (a protection "
                "against DNS rebinding). Open it by the address the serve command printed, "
                "or restart it with --allow-host NAME.\n",
            )
        if self.token is None:
            return self.app(environ, start_response)
        given = self._given(environ)
        query = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        in_url = next((value for name, value in query if name == "token"), None)
        if in_url is not None and self._matches(in_url):
            rest = urlencode([(name, value) for name, value in query if name != "token"])
            path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "/")
            cookie = f"{COOKIE}={in_url}; Path=/; HttpOnly; SameSite=Strict"
            location = path + ("?" + rest if rest else "")
            return _plain(start_response, 303, "", ("Location", location),
                          ("Set-Cookie", cookie))
        if given is None or not self._matches(given):
            return _plain(
                start_response, 401,
                "This audit log viewer needs its access token: open the address the serve "
                "command printed (it ends in ?token=...), or send Authorization: Bearer "
                "<token>.\n",
                ("WWW-Authenticate", 'Bearer realm="audit log"'),
            )
        return self.app(environ, start_response)

    def _matches(self, given: str) -> bool:
        assert self.token is not None
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode("utf-8"))

    @staticmethod
    def _given(environ: dict[str, Any]) -> str | None:
        header = str(environ.get("HTTP_AUTHORIZATION", ""))
        if header.lower().startswith("bearer "):
            return header[7:].strip()
        cookies = SimpleCookie()
        try:
            cookies.load(environ.get("HTTP_COOKIE", ""))
        except Exception:  # a malformed cookie header is no token
            return None
        morsel = cookies.get(COOKIE)
        value: str = morsel.value if morsel is not None else ""
        return value or None


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class StandaloneServer:
    """A running standalone viewer: ``url`` to open, :meth:`serve_forever`, :meth:`close`."""

    def __init__(self, server: _Server, viewer: Viewer, store: AuditStore, url: str,
                 token: str | None) -> None:
        self.server = server
        self.viewer = viewer
        self.store = store
        self.url = url
        self.token = token
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def start(self) -> StandaloneServer:
        """Serve on a thread of its own (for tests and scripts)."""
        self._thread = threading.Thread(target=self.serve_forever, name="audit viewer",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, wait for the verify thread, close the store."""
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(10)
        self.server.server_close()
        self.viewer.chain.wait(30)
        self.store.close()

    def __enter__(self) -> StandaloneServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_server(
    store: AuditStore, *, host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
    allow_hosts: Iterable[str] = (),
) -> StandaloneServer:
    """Bind the standalone viewer of ``store`` (it takes the store over and closes it).

    A non-loopback ``host`` needs ``token`` (:func:`new_token` makes one).
    """
    loopback = is_loopback(host)
    if not loopback and not token:
        raise AuditConfigError(
            f"--host {host} is reachable from other machines: the viewer then needs an "
            "access token (AUDIT_VIEWER_TOKEN, --token-file, or let serve make one)"
        )
    user = getpass.getuser()
    machine = socket.gethostname()

    def actor(environ: dict[str, Any]) -> tuple[str, str]:
        if token:
            return "viewer_token", "holder of the viewer's access token"
        return f"local:{user}", f"{user}@{machine}"

    viewer = Viewer(store, authorize=lambda environ: ALL_GROUPS, actor=actor, record=store.send,
                    group="audit_log")
    server_class = _Server6 if ":" in host.strip("[]") else _Server
    bind = host.strip("[]")
    try:
        server = server_class((bind, port), _QuietHandler)
    except OSError as error:
        raise AuditConfigError(f"cannot listen on {host}:{port} ({error.strerror})") from error
    actual = int(server.server_address[1])
    shown = f"[{bind}]" if ":" in bind else bind
    names = {"127.0.0.1", "localhost", "[::1]", shown}
    if not loopback:
        names |= {machine, socket.getfqdn()}
    names |= set(allow_hosts)
    hosts = {f"{name}:{actual}" for name in names} | ({*names} if actual == 80 else set())
    server.set_app(Guard(WSGIViewer(viewer), hosts=hosts, token=token or None))
    wildcard = bind in ("0.0.0.0", "::")
    url = f"http://{machine if wildcard else shown}:{actual}/"
    return StandaloneServer(server, viewer, store, url, token or None)


def new_token() -> str:
    """A fresh access token."""
    return secrets.token_urlsafe(24)
