"""Hostile servers and hostile configuration: capped waits, workers that never die, no secret
leaving through a proxy, a URL or an error message."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from support.events import USER_LOGIN, make_event
from support.waiting import wait_for
from support.workos import API_KEY, FAST
from support.workos_server import Fault, WorkOSServer

from audit_instrument import AuditConfigError, DeliveryError, stats
from audit_instrument.delivery import RetryPolicy, parse_retry_after, route
from audit_instrument.senders.workos import WorkOS

MakeWorkOS = Callable[..., WorkOS]

HOSTILE_WAITS = ["inf", "1e10", "31536000", "Fri, 31 Dec 9999 23:59:59 GMT", "1e400",
                 "9" * 5000, "nan", "-inf", "Fri, 31 Dec 99999 23:59:59 GMT"]


# -- server-supplied waits ----------------------------------------------------------------
@pytest.mark.parametrize("value", HOSTILE_WAITS)
def test_server_waits_are_read_defensively_and_capped(value: str) -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=2.0)
    wait = policy.server_wait(value)
    assert wait is None or 0.0 <= wait <= 2.0
    parsed = parse_retry_after(value)
    assert parsed is None or parsed >= 0.0


@pytest.mark.parametrize("status", [429, 503])
@pytest.mark.parametrize("value", ["inf", "1e10", "31536000", "Fri, 31 Dec 9999 23:59:59 GMT"])
def test_a_huge_retry_after_neither_kills_workers_nor_pauses_for_long(
    server: WorkOSServer, make_workos: MakeWorkOS, value: str, status: int
) -> None:
    server.script(Fault("status", status=status, retry_after=value))
    workos = make_workos(max_in_flight=1)  # one worker: if it died, nothing would follow
    handles = workos.create_events([make_event(n) for n in range(20)])
    assert workos.flush(10) == 0  # FAST caps every wait at 50 ms
    assert all(h.delivered for h in handles)
    assert server.accepted_count == 20


# -- a worker never dies of an exception ----------------------------------------------------
class _Exploding(httpx.BaseTransport):
    """A transport whose first ``count`` requests raise a bug, not a network error."""

    def __init__(self, count: int) -> None:
        self.inner = httpx.HTTPTransport()
        self.left = count

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.left > 0:
            self.left -= 1
            raise RuntimeError("a bug in a transport")
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def test_an_exception_in_a_request_fails_that_event_and_the_worker_carries_on(
    server: WorkOSServer, make_workos: MakeWorkOS, caplog: pytest.LogCaptureFixture
) -> None:
    workos = make_workos(max_in_flight=1, transport=_Exploding(3))
    with caplog.at_level(logging.ERROR, "audit_instrument"):
        handles = workos.create_events([make_event(n) for n in range(10)])
        assert workos.flush(10) == 0
    errors = [h.exception(0) for h in handles]
    assert all(isinstance(e, DeliveryError) and "a bug in a transport" in str(e)
               for e in errors[:3])
    assert all(h.delivered for h in handles[3:])  # the one worker lived on
    assert stats().failures["delivery request"] == 3  # counted ...
    assert sum("a bug in a transport" in r.getMessage() for r in caplog.records) == 1  # logged once


def test_an_exception_outside_the_request_is_caught_by_the_worker_loop(
    server: WorkOSServer, make_workos: MakeWorkOS
) -> None:
    workos = make_workos(max_in_flight=1)
    workos.create_event(make_event(0)).result(5)  # the worker is running
    pacer = workos.engine._pacer
    real = pacer.wait_turn
    calls = 0

    def explode_once(stopped: threading.Event) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise OverflowError("timestamp out of range")
        return real(stopped)

    pacer.wait_turn = explode_once  # type: ignore[method-assign]
    first = workos.create_event(make_event(1))
    assert isinstance(first.exception(5), DeliveryError)  # settled, not left hanging
    later = workos.create_events([make_event(n) for n in range(2, 12)])
    assert workos.flush(10) == 0
    assert all(h.delivered for h in later)
    assert stats().failures["delivery worker"] == 1


# -- the loopback rule and the proxy decision: one function ----------------------------------
class FakeProxy:
    """A proxy on 127.0.0.1 that records what reaches it and answers 502."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.seen.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone would not
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
        assert not self.thread.is_alive()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeProxy]:
    fake = FakeProxy()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy",
                 "all_proxy"):
        monkeypatch.setenv(name, fake.url)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    yield fake
    fake.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_plain_http_to_loopback_never_goes_through_a_proxy(
    server: WorkOSServer, proxy: FakeProxy, host: str
) -> None:
    secret = "sk_live_never_to_a_proxy"
    server.api_key = secret
    workos = WorkOS(secret, base_url=f"http://{host}:{server.port}", retry=FAST)
    try:
        workos.create_event(USER_LOGIN).result(timeout=5)
    finally:
        workos.shutdown(2)
    assert server.accepted_count == 1
    assert proxy.seen == []


@pytest.mark.parametrize("url", ["http://audit.localhost:9999", "http://localhost.example.com",
                                 "http://127.0.0.1.nip.io", "http://[::ffff:10.0.0.1]:80"])
def test_plain_http_to_a_name_that_only_looks_local_is_refused(proxy: FakeProxy, url: str) -> None:
    with pytest.raises(AuditConfigError, match="https"):
        WorkOS(API_KEY, base_url=url)
    assert proxy.seen == []


def test_https_goes_through_the_environments_proxy_as_a_tunnel(proxy: FakeProxy) -> None:
    secret = "sk_live_inside_the_tunnel"
    workos = WorkOS(secret, base_url="https://audit.example.test", retry=FAST, deadline=0.5)
    try:
        error = workos.create_event(USER_LOGIN).exception(timeout=10)
    finally:
        workos.shutdown(1)
    assert isinstance(error, DeliveryError)
    wait_for(lambda: proxy.seen)
    assert proxy.seen[0].startswith(b"CONNECT audit.example.test:443 ")
    assert not any(secret.encode() in seen for seen in proxy.seen)


@pytest.mark.parametrize(
    ("url", "proxy_used"),
    [("https://api.workos.com", True), ("https://localhost:8443", False),
     ("http://127.0.0.2:80", False), ("http://[::1]:80", False)])
def test_route_decides_the_proxy(proxy: FakeProxy, url: str, proxy_used: bool) -> None:
    assert (route(url).proxy == proxy.url) is proxy_used


def test_no_proxy_is_respected_for_https(proxy: FakeProxy, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "internal.example.test")
    assert route("https://audit.internal.example.test").proxy is None


# -- credentials and keys never leave in the clear ---------------------------------------------
@pytest.mark.parametrize("url", ["https://user:P4SSWORD@api.workos.com",
                                 "http://user:P4SSWORD@127.0.0.1:9", "https://P4SSWORD@host"])
def test_userinfo_in_base_url_is_refused_without_repeating_it(url: str) -> None:
    with pytest.raises(AuditConfigError, match="user name or password") as caught:
        WorkOS(API_KEY, base_url=url)
    assert "P4SSWORD" not in str(caught.value) and "P4SSWORD" not in repr(caught.value)


@pytest.mark.parametrize("key", ["sk_live_abc\r\nX-Injected: 1", "sk_live_abc\n", "sk_live\x00abc",
                                 "sk_live abc", "sk_live_abc\x7f", "sk_live_é"])
def test_api_key_with_control_characters_is_refused_without_repeating_it(
    key: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(AuditConfigError, match="API key") as caught:
            WorkOS(key, base_url="http://127.0.0.1:9")
    for text in (str(caught.value), repr(caught.value), caplog.text):
        assert "sk_live" not in text


def test_repr_of_sender_engine_and_outbox_never_shows_the_key(tmp_path: Any) -> None:
    secret = "sk_live_secret_in_repr"
    workos = WorkOS(secret, base_url="http://127.0.0.1:9", outbox=tmp_path / "o.db")
    try:
        texts = [repr(workos), repr(workos.engine), repr(workos.outbox), str(vars(workos))]
    finally:
        workos.shutdown(0)
    assert not any(secret in text for text in texts)
