"""WSGI middleware on a real Flask app, served by werkzeug on 127.0.0.1 and via its test client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.util import FileWrapper

import httpx
import pytest
from flask import Flask, Response, request, send_file
from support.servers import serve_wsgi

from audit_instrument import audit, audit_actor, configure, current_context
from audit_instrument.integrations.wsgi import AuditMiddleware
from audit_instrument.senders import MemorySender

DOC = ("doc_1", "Quarterly report")


@dataclass
class _User:
    id: str
    email: str
    organization: str


def _user_from(environ: dict[str, Any]) -> _User | None:
    number = environ.get("HTTP_X_USER")
    if number is None:
        return None
    n = int(number)
    return _User(f"user_{n}", f"user{n}@example.com", f"org_{n % 5}")


def _group(environ: dict[str, Any]) -> str | None:
    user = _user_from(environ)
    return user.organization if user else None


@audit("doc.read", "R", target="doc", metadata=["rid", "step"])
def read_doc(doc: tuple[str, str], rid: str, step: str) -> None:
    return None


def _flask(**options: Any) -> Flask:
    app = Flask(__name__)

    @app.get("/doc")
    def doc() -> dict[str, str | None]:
        read_doc(DOC, request.args["rid"], "view")
        ctx = current_context()
        return {"actor_id": ctx.actor_id, "location": ctx.location, "user_agent": ctx.user_agent}

    @app.get("/stream")
    def stream() -> Response:
        def chunks() -> Iterator[str]:  # iterated by the server after the view returned
            for n in range(3):
                read_doc(DOC, "stream", f"chunk{n}")
                yield f"chunk{n}\n"
            read_doc(DOC, "stream", "done")

        return Response(chunks(), mimetype="text/plain")

    options.setdefault("actor", _user_from)
    options.setdefault("group", _group)
    app.wsgi_app = AuditMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


async def test_concurrent_requests_on_the_real_server_keep_their_own_context() -> None:
    memory = MemorySender()
    configure(memory)
    with serve_wsgi(_flask(trusted_proxies=["127.0.0.1"])) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def one(i: int) -> None:
                headers = {"x-user": str(i % 20), "user-agent": f"agent/{i}",
                           "x-forwarded-for": f"198.51.100.{i}"}
                response = await client.get("/doc", params={"rid": str(i)}, headers=headers)
                assert response.json() == {"actor_id": f"user_{i % 20}",
                                           "location": f"198.51.100.{i}",
                                           "user_agent": f"agent/{i}"}

            await asyncio.gather(*(one(i) for i in range(200)))
    assert len(memory) == 200
    for event in memory:
        i = int(str(event.metadata["rid"]))
        assert (event.actor_id, event.group, event.location, event.user_agent) == (
            f"user_{i % 20}", f"org_{i % 20 % 5}", f"198.51.100.{i}", f"agent/{i}"
        )


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [((), "127.0.0.1"), (["10.0.0.0/8"], "127.0.0.1"), (["127.0.0.1"], "203.0.113.7")],
)
def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    trusted: list[str], expected: str
) -> None:
    with serve_wsgi(_flask(trusted_proxies=trusted)) as url:
        response = httpx.get(f"{url}/doc?rid=1",
                             headers={"x-user": "1", "x-forwarded-for": "6.6.6.6, 203.0.113.7"})
    assert response.json()["location"] == expected


def test_streamed_body_is_produced_in_the_request_context_chunk_by_chunk() -> None:
    memory = MemorySender()
    configure(memory)
    client = _flask().test_client()
    with audit_actor(id="outer", group="org_outer"):
        response = client.get("/stream", headers={"x-user": "7"}, buffered=False)
        # the view has returned; werkzeug pulled the first chunk to see start_response
        assert len(memory) == 1 and current_context().actor_id == "outer"
        chunks = []
        for chunk in response.response:
            chunks.append(chunk)
            assert current_context().actor_id == "outer"  # restored between chunks
        response.close()
        assert current_context().actor_id == "outer"
    assert chunks == [b"chunk0\n", b"chunk1\n", b"chunk2\n"]
    assert [(e.metadata["step"], e.actor_id, e.group) for e in memory] == [
        ("chunk0", "user_7", "org_2"), ("chunk1", "user_7", "org_2"),
        ("chunk2", "user_7", "org_2"), ("done", "user_7", "org_2"),
    ]


def test_streaming_over_the_real_server() -> None:
    memory = MemorySender()
    configure(memory)
    with serve_wsgi(_flask()) as url, httpx.stream(
        "GET", f"{url}/stream", headers={"x-user": "3", "user-agent": "curl/8"}
    ) as response:
        lines = list(response.iter_lines())
    assert lines == ["chunk0", "chunk1", "chunk2"]
    assert {(e.actor_id, e.user_agent, e.location) for e in memory} == {
        ("user_3", "curl/8", "127.0.0.1")
    }
    assert len(memory) == 4


def test_default_actor_is_remote_user() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(current_context().actor_id).encode()]

    middleware = AuditMiddleware(app)

    def with_remote_user(environ: dict[str, Any], start_response: Any) -> Any:
        environ["REMOTE_USER"] = "alice"  # what an auth server / middleware sets
        return middleware(environ, start_response)

    with serve_wsgi(with_remote_user) as url:
        assert httpx.get(url).text == "alice"
    with serve_wsgi(middleware) as url:
        assert httpx.get(url).text == "None"  # anonymous: no actor


class _Body:
    """A response body whose close() emits an event, as a cleanup hook might."""

    def __init__(self) -> None:
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        yield b"ok"

    def close(self) -> None:
        self.closed = True
        read_doc(DOC, "close", "close")


def test_close_runs_in_the_request_context_even_without_iteration() -> None:
    memory = MemorySender()
    configure(memory)
    body = _Body()

    def app(environ: dict[str, Any], start_response: Any) -> _Body:
        start_response("200 OK", [])
        return body

    middleware = AuditMiddleware(app, actor=lambda environ: ("u1", "Ann"), group="org_1")
    result = middleware({"REMOTE_ADDR": "192.0.2.1"}, lambda *a: None)
    assert current_context().actor_id is None
    result.close()  # type: ignore[attr-defined]  # PEP 3333: the server must call it
    assert body.closed and current_context().actor_id is None
    assert [(e.actor_id, e.location) for e in memory] == [("u1", "192.0.2.1")]


def test_context_is_restored_when_the_app_raises() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        assert current_context().actor_id == "u1"
        raise RuntimeError("handler failed")

    middleware = AuditMiddleware(app, actor=lambda environ: ("u1", "Ann"))
    with audit_actor(id="outer"):
        with pytest.raises(RuntimeError, match="handler failed"):
            middleware({"REMOTE_ADDR": "192.0.2.1"}, lambda *a: None)
        assert current_context().actor_id == "outer"


def test_nothing_leaks_into_the_caller_after_a_request() -> None:
    client = _flask().test_client()  # runs the app in this thread
    assert client.get("/doc?rid=1", headers={"x-user": "5"}).json["actor_id"] == "user_5"
    ctx = current_context()
    assert (ctx.actor_id, ctx.group, ctx.location, ctx.user_agent) == (None, None, None, None)


def test_a_file_wrapper_body_reaches_the_server_unwrapped(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    path.write_bytes(b"id,body\n1,hello\n")

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/csv")])
        return environ["wsgi.file_wrapper"](path.open("rb"), 8192)

    middleware = AuditMiddleware(app, actor=lambda environ: ("u1", "Ann"))
    environ = {"REMOTE_ADDR": "192.0.2.1", "wsgi.file_wrapper": FileWrapper}
    body = middleware(environ, lambda *a: None)
    assert type(body) is FileWrapper  # the server's own type: it may sendfile() it
    assert b"".join(body) == b"id,body\n1,hello\n"
    body.close()  # type: ignore[attr-defined]
    assert current_context().actor_id is None


def test_flask_send_file_is_served_through_the_middleware(tmp_path: Path) -> None:
    path = tmp_path / "report.csv"
    path.write_bytes(b"id,body\n1,hello\n")
    app = Flask(__name__)

    @app.get("/report")
    def report() -> Response:
        return send_file(path)

    app.wsgi_app = AuditMiddleware(app.wsgi_app, actor=_user_from)  # type: ignore[method-assign]
    with serve_wsgi(app) as url:
        answer = httpx.get(f"{url}/report", headers={"x-user": "2"})
    assert answer.status_code == 200 and answer.content == b"id,body\n1,hello\n"
