"""The standalone viewer (``serve``): loopback by default, the Host check against DNS
rebinding, the access token off loopback, reads recorded in the store, the command."""

from __future__ import annotations

import argparse
import getpass
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.store import fill
from support.waiting import wait_for

from audit_instrument import AuditConfigError
from audit_instrument.cli.serve import TOKEN_ENV, _token
from audit_instrument.store import AuditStore
from audit_instrument.viewer.server import StandaloneServer, is_loopback, make_server

TOKEN = "a-test-token-0123456789"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "audit.db"
    fill(path, 12)
    return path


@pytest.fixture
def running(db: Path) -> Iterator[StandaloneServer]:
    with make_server(AuditStore(db), port=0).start() as server:
        yield server


def test_loopback_serves_and_records_reads_as_the_local_user(running: StandaloneServer,
                                                             db: Path) -> None:
    assert running.url == f"http://127.0.0.1:{running.port}/"
    page = httpx.get(running.url)
    assert page.status_code == 200 and "tweet_4" in page.text
    views = list(running.store.iter_events(action="audit_log.view"))
    assert [v.event.actor_id for v in views] == [f"local:{getpass.getuser()}"]
    assert views[0].event.location == "127.0.0.1"


@pytest.mark.parametrize("host", ["evil.example:{port}", "evil.example", "127.0.0.1",
                                  "127.0.0.1.evil.example:{port}", ""])
def test_a_foreign_host_header_is_refused(running: StandaloneServer, host: str) -> None:
    answer = httpx.get(running.url, headers={"Host": host.format(port=running.port)})
    assert answer.status_code == 421 and "DNS rebinding" in answer.text
    assert "tweet" not in answer.text


def test_the_local_names_are_answered(running: StandaloneServer) -> None:
    for name in ("localhost", "127.0.0.1", "LOCALHOST"):
        answer = httpx.get(running.url, headers={"Host": f"{name}:{running.port}"})
        assert answer.status_code == 200, name


def test_an_access_token_guards_every_page(db: Path) -> None:
    with make_server(AuditStore(db), port=0, token=TOKEN).start() as server, \
            httpx.Client() as client:
        url = server.url
        for path in ("", "event?id=x", "api/events", "export.csv", "chart.svg"):
            denied = client.get(url + path)
            assert denied.status_code == 401 and "tweet" not in denied.text, path
        assert client.get(url, params={"token": "wrong-token-0123456789"}).status_code == 401
        entry = client.get(url, params={"token": TOKEN, "actor": "user_1"})
        assert entry.status_code == 303 and entry.headers["location"] == "/?actor=user_1"
        cookie = entry.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        page = client.get(url, params={"actor": "user_1"})  # the cookie now
        assert page.status_code == 200 and "tweet_" in page.text
        bearer = httpx.get(url + "api/events", headers={"Authorization": f"Bearer {TOKEN}"})
        assert bearer.status_code == 200 and len(bearer.json()["events"]) >= 12
        views = list(server.store.iter_events(action="audit_log.view"))
        assert {v.event.actor_id for v in views} == {"viewer_token"}


def test_a_non_loopback_address_needs_a_token() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.0.0.2") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    assert not is_loopback("example.com")


def test_binding_off_loopback_without_a_token_is_refused(db: Path) -> None:
    store = AuditStore(db)
    try:
        with pytest.raises(AuditConfigError, match="access token"):
            make_server(store, host="0.0.0.0", port=0)
    finally:
        store.close()


def test_the_token_comes_from_a_file_the_environment_or_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)

    def ask(**values: object) -> tuple[str | None, bool]:
        return _token(argparse.Namespace(**{"host": "127.0.0.1", "token_file": None, **values}))

    assert ask() == (None, False)
    made, fresh = ask(host="0.0.0.0")
    assert fresh and made is not None and len(made) >= 32
    file = tmp_path / "token"
    file.write_text(TOKEN + "\n")
    assert ask(host="0.0.0.0", token_file=str(file)) == (TOKEN, False)
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    assert ask(host="0.0.0.0") == (TOKEN, False)
    monkeypatch.setenv(TOKEN_ENV, "short")
    from audit_instrument.cli import CommandError

    with pytest.raises(CommandError, match="16-200 characters"):
        ask()


def test_the_serve_command_says_it_is_loopback_only_and_stops_on_ctrl_c(db: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "audit_instrument", "serve", str(db), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={k: v for k, v in os.environ.items() if k != TOKEN_ENV},
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert "loopback only: other machines cannot connect" in lines[0]
        url = lines[1].removeprefix("Open: ").strip()
        assert url.startswith("http://127.0.0.1:") and "token" not in url
        assert "recorded" in lines[2]
        assert httpx.get(url, timeout=30).status_code == 200
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert "stopped" in (process.stderr.read() if process.stderr else "")
    with AuditStore(db, readonly=True) as store:
        assert store.count(action="audit_log.view") == 1 and store.verify().ok


def test_the_serve_command_refuses_bad_values(db: Path, tmp_path: Path) -> None:
    from audit_instrument.cli import main

    assert main(["serve", str(db), "--port", "70000"]) == 2
    assert main(["serve", str(tmp_path / "missing" / "x.db")]) == 2
    assert main(["serve", str(tmp_path / "typo.db")]) == 2
    assert not (tmp_path / "typo.db").exists()
    assert main(["serve", str(db), "--token-file", str(tmp_path / "none")]) == 2


def test_the_verify_thread_is_waited_for_on_close(db: Path) -> None:
    server = make_server(AuditStore(db), port=0).start()
    httpx.get(server.url)
    server.close()
    wait_for(lambda: server.viewer.chain.view(refresh=False).running is False, timeout=5)
