"""ASGI middleware on real Starlette and FastAPI apps served by uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextvars
import sys
import threading
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, BaseUser
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from support.servers import serve_asgi
from support.waiting import wait_for

from audit_instrument import audit, audit_actor, audit_context, configure, current_context
from audit_instrument.integrations.asgi import AuditMiddleware
from audit_instrument.senders import MemorySender

DOC = ("doc_1", "Quarterly report")


class _User(BaseUser):
    """A Starlette user as an AuthenticationBackend would return it."""

    def __init__(self, number: int) -> None:
        self.id = f"user_{number}"
        self.email = f"user{number}@example.com"
        self.organization = f"org_{number % 5}"

    @property
    def is_authenticated(self) -> bool:
        return True

    @property
    def display_name(self) -> str:
        return self.email

    @property
    def identity(self) -> str:
        return self.id


class _HeaderAuth(AuthenticationBackend):
    """Authenticates ``X-User: <n>``; no header is an anonymous request."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        number = conn.headers.get("x-user")
        if number is None:
            return None
        return AuthCredentials(["authenticated"]), _User(int(number))


def _organization(scope: Any) -> str | None:
    user = scope.get("user")
    return getattr(user, "organization", None)


@audit("doc.read", "R", target="doc", metadata=["rid", "step"])
async def read_doc(doc: tuple[str, str], rid: str, step: str) -> None:
    await asyncio.sleep(0)  # give other requests the loop mid-call


@audit("doc.read", "R", target="doc", metadata=["rid", "step"])
def read_doc_sync(doc: tuple[str, str], rid: str, step: str) -> None:
    return None


async def _doc(request: Request) -> JSONResponse:
    rid = request.query_params["rid"]
    await read_doc(DOC, rid, "before")
    await asyncio.sleep(0)
    await run_in_threadpool(read_doc_sync, DOC, rid, "threadpool")
    await asyncio.to_thread(read_doc_sync, DOC, rid, "to_thread")
    await asyncio.create_task(read_doc(DOC, rid, "task"))
    await read_doc(DOC, rid, "after")
    ctx = current_context()
    return JSONResponse({"actor_id": ctx.actor_id, "location": ctx.location,
                         "user_agent": ctx.user_agent})


async def _stream(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[str]:
        for n in range(3):
            read_doc_sync(DOC, "stream", f"chunk{n}")
            yield f"chunk{n}\n"
            await asyncio.sleep(0)
        read_doc_sync(DOC, "stream", "done")  # runs after the last chunk was sent

    return StreamingResponse(chunks(), media_type="text/plain")


async def _sync_stream(request: Request) -> StreamingResponse:
    def chunks() -> Iterator[str]:  # Starlette iterates it in the threadpool
        for n in range(2):
            read_doc_sync(DOC, "sync-stream", f"chunk{n}")
            yield f"chunk{n}\n"
        read_doc_sync(DOC, "sync-stream", "done")

    return StreamingResponse(chunks(), media_type="text/plain")


async def _whoami(request: Request) -> JSONResponse:
    ctx = current_context()
    return JSONResponse({"actor_id": ctx.actor_id, "location": ctx.location})


async def _boom(request: Request) -> JSONResponse:
    raise RuntimeError("handler failed")


async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json({"actor_id": current_context().actor_id})
    await websocket.close()


def _starlette(**options: Any) -> Starlette:
    options.setdefault("group", _organization)
    return Starlette(
        routes=[
            Route("/doc", _doc),
            Route("/stream", _stream),
            Route("/sync-stream", _sync_stream),
            Route("/whoami", _whoami),
            Route("/boom", _boom),
            WebSocketRoute("/ws", _ws),
        ],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=_HeaderAuth()),
            Middleware(AuditMiddleware, **options),  # inside auth: scope["user"] is set
        ],
    )


def _by_request(memory: MemorySender) -> dict[str, list[Any]]:
    events: dict[str, list[Any]] = defaultdict(list)
    for event in memory:
        events[str(event.metadata["rid"])].append(event)
    return events


async def test_500_concurrent_requests_by_50_users_never_cross_talk() -> None:
    memory = MemorySender()
    configure(memory, system_actor=("system", "Nightly job"))
    app = _starlette(trusted_proxies=["127.0.0.1"])
    expected: dict[str, tuple[str, str, str, str]] = {}
    with serve_asgi(app) as url:
        limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

            async def one(i: int) -> None:
                user = i % 50
                headers = {
                    "x-user": str(user),
                    "user-agent": f"agent/{i}",
                    "x-forwarded-for": f"6.6.6.6, 198.51.{i // 256}.{i % 256}",
                }
                expected[str(i)] = (
                    f"user_{user}", f"org_{user % 5}", f"198.51.{i // 256}.{i % 256}",
                    f"agent/{i}",
                )
                response = await client.get("/doc", params={"rid": str(i)}, headers=headers)
                assert response.status_code == 200
                body = response.json()
                assert (body["actor_id"], body["location"], body["user_agent"]) == (
                    expected[str(i)][0], expected[str(i)][2], expected[str(i)][3]
                )

            await asyncio.gather(*(one(i) for i in range(500)))
            # a later request on the same pooled connections, with nobody logged in
            anonymous = await client.get("/whoami", headers={"user-agent": "anon"})
            assert anonymous.json()["actor_id"] is None

    events = _by_request(memory)
    assert len(memory) == 500 * 5
    assert set(events) == set(expected)
    for rid, (actor_id, group, location, user_agent) in expected.items():
        steps = sorted(str(e.metadata["step"]) for e in events[rid])
        assert steps == ["after", "before", "task", "threadpool", "to_thread"]
        for event in events[rid]:
            assert (event.actor_id, event.group, event.location, event.user_agent) == (
                actor_id, group, location, user_agent
            ), f"request {rid}: {event}"
            assert event.actor_name == f"{actor_id.replace('_', '')}@example.com"

    # after the requests, this thread has no actor: an event falls back to the system actor
    assert current_context().actor_id is None
    with audit_context(group="org_jobs"), audit("report.build", "C", target=DOC):
        pass
    assert (memory[-1].actor_id, memory[-1].location) == ("system", "")


async def test_streaming_response_keeps_the_context_until_the_last_chunk() -> None:
    memory = MemorySender()
    configure(memory)
    with serve_asgi(_starlette()) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            for path in ("/stream", "/sync-stream"):
                headers = {"x-user": "7", "user-agent": "streamer"}
                async with client.stream("GET", path, headers=headers) as response:
                    chunks = [line async for line in response.aiter_lines()]
                assert chunks[-1].startswith("chunk")
    steps = [(e.metadata["rid"], e.metadata["step"], e.actor_id, e.user_agent) for e in memory]
    assert steps == [
        ("stream", "chunk0", "user_7", "streamer"),
        ("stream", "chunk1", "user_7", "streamer"),
        ("stream", "chunk2", "user_7", "streamer"),
        ("stream", "done", "user_7", "streamer"),
        ("sync-stream", "chunk0", "user_7", "streamer"),
        ("sync-stream", "chunk1", "user_7", "streamer"),
        ("sync-stream", "done", "user_7", "streamer"),
    ]


@pytest.mark.parametrize(
    ("trusted", "expected"),
    [
        ((), "127.0.0.1"),  # nothing trusted: the header is the client's word only
        (["10.0.0.0/8"], "127.0.0.1"),  # our peer is not one of the trusted proxies
        (["127.0.0.1"], "203.0.113.7"),  # peer is our proxy: right-most untrusted hop
    ],
)
async def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored(
    trusted: list[str], expected: str
) -> None:
    with serve_asgi(_starlette(trusted_proxies=trusted)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.get(
                "/whoami", headers={"x-user": "1", "x-forwarded-for": "6.6.6.6, 203.0.113.7"}
            )
    assert response.json() == {"actor_id": "user_1", "location": expected}


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # two header lines are one list: the right-most untrusted hop is the client
        ([("x-forwarded-for", "203.0.113.7"), ("x-forwarded-for", "10.0.0.5")], "203.0.113.7"),
        # another header repeated, one X-Forwarded-For
        ([("accept", "text/html"), ("accept", "*/*"), ("x-forwarded-for", "198.51.100.4")],
         "198.51.100.4"),
    ],
)
async def test_repeated_headers_are_read_like_one(
    headers: list[tuple[str, str]], expected: str
) -> None:
    app = _starlette(trusted_proxies=["127.0.0.1", "10.0.0.0/8"])
    with serve_asgi(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            response = await client.get("/whoami", headers=[("x-user", "1"), *headers])
    assert response.json() == {"actor_id": "user_1", "location": expected}


async def test_context_is_restored_after_the_request_and_when_the_app_raises() -> None:
    app = _starlette()
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 5000))
    # ASGITransport runs the app in this very task: a leak would show here
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        with audit_actor(id="outer", group="org_outer"):
            response = await client.get("/whoami", headers={"x-user": "3"})
            assert response.json() == {"actor_id": "user_3", "location": "192.0.2.10"}
            assert current_context().actor_id == "outer"
            with pytest.raises(RuntimeError, match="handler failed"):
                await client.get("/boom", headers={"x-user": "4"})
            ctx = current_context()
            assert (ctx.actor_id, ctx.group, ctx.location) == ("outer", "org_outer", None)


async def test_lifespan_scope_passes_through_untouched() -> None:
    seen: list[tuple[Any, Any, Any, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope, receive, send, current_context()))

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        return None

    scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {"user": "someone"}}
    await AuditMiddleware(app, group="org_1")(scope, receive, send)
    assert seen == [(scope, receive, send, current_context())]
    assert seen[0][3].actor_id is None and seen[0][3].group is None


async def test_lifespan_runs_under_uvicorn_with_the_middleware() -> None:
    started = threading.Event()

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        started.set()
        yield

    app = Starlette(routes=[Route("/whoami", _whoami)], lifespan=lifespan,
                    middleware=[Middleware(AuditMiddleware)])
    with serve_asgi(app, lifespan="on") as url:
        assert started.is_set()
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/whoami")).json()["location"] == "127.0.0.1"


async def test_websocket_connections_are_bound_too() -> None:
    # no websocket library for uvicorn here: drive the Starlette app over raw ASGI
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbox.put({"type": "websocket.connect"})
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket", "asgi": {"version": "3.0"}, "path": "/ws", "raw_path": b"/ws",
        "root_path": "", "scheme": "ws", "query_string": b"", "client": ("192.0.2.5", 4000),
        "server": ("127.0.0.1", 80), "subprotocols": [],
        "headers": [(b"host", b"test"), (b"x-user", b"9"), (b"user-agent", b"ws-client")],
    }
    await _starlette()(scope, inbox.get, send)
    assert [m["type"] for m in sent] == ["websocket.accept", "websocket.send", "websocket.close"]
    assert sent[1]["text"] == '{"actor_id":"user_9"}'


async def test_custom_async_actor_resolver_and_constant_group() -> None:
    async def actor(scope: Any) -> object:
        await asyncio.sleep(0)
        for name, value in scope["headers"]:
            if name == b"x-api-client":
                return {"id": value.decode(), "name": "API client"}
        return None

    memory = MemorySender()
    configure(memory)
    app = Starlette(routes=[Route("/doc", _doc)],
                    middleware=[Middleware(AuditMiddleware, actor=actor, group="org_api")])
    with serve_asgi(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            await client.get("/doc", params={"rid": "1"}, headers={"x-api-client": "cli_1"})
    assert {(e.actor_id, e.actor_name, e.group) for e in memory} == {
        ("cli_1", "API client", "org_api")
    }


# -- FastAPI: request.state.user, sync endpoints and dependencies in the threadpool ----------


class _StateAuth:
    """An outer pure-ASGI auth middleware that sets ``request.state.user``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"x-user":
                    number = int(value)
                    scope.setdefault("state", {})["user"] = {
                        "id": f"user_{number}", "email": f"user{number}@example.com",
                        "org": f"org_{number % 5}",
                    }
        await self.app(scope, receive, send)


def _fastapi() -> FastAPI:
    app = FastAPI()

    @audit("session.check", "R", metadata=["rid"])
    def check_session(rid: str) -> None:
        return None

    def sync_dependency(request: Request) -> str:  # FastAPI runs it in the threadpool
        rid = request.query_params["rid"]
        check_session(rid)
        return rid

    @app.get("/sync")
    def sync_endpoint(rid: str = Depends(sync_dependency)) -> dict[str, str | None]:
        read_doc_sync(DOC, rid, "sync-endpoint")
        return {"actor_id": current_context().actor_id, "thread": threading.current_thread().name}

    @app.get("/background")
    async def background(rid: str, tasks: BackgroundTasks) -> dict[str, str]:
        tasks.add_task(read_doc_sync, DOC, rid, "background")  # runs after the response
        return {"rid": rid}

    app.add_middleware(
        AuditMiddleware, group=lambda scope: scope["state"]["user"]["org"]
    )
    app.add_middleware(_StateAuth)  # added last = outermost: runs before AuditMiddleware
    return app


async def test_fastapi_sync_endpoints_and_dependencies_carry_the_actor() -> None:
    memory = MemorySender()
    configure(memory)
    with serve_asgi(_fastapi()) as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def one(i: int) -> None:
                response = await client.get("/sync", params={"rid": str(i)},
                                            headers={"x-user": str(i % 20)})
                assert response.json()["actor_id"] == f"user_{i % 20}"
                assert response.json()["thread"] != threading.main_thread().name

            await asyncio.gather(*(one(i) for i in range(100)))
            await client.get("/background", params={"rid": "bg"}, headers={"x-user": "4"})
            wait_for(lambda: any(e.metadata.get("step") == "background" for e in memory))

    assert len(memory) == 201
    for event in memory:
        rid = str(event.metadata["rid"])
        number = 4 if rid == "bg" else int(rid) % 20
        assert (event.actor_id, event.group) == (f"user_{number}", f"org_{number % 5}")
    assert sorted(e.action for e in memory if e.metadata["rid"] == "7") == [
        "doc.read", "session.check"
    ]


# -- emitting from the event loop does no I/O on it --------------------------------------------

_watching: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "audit_io_watch", default=None
)
_IO_EVENTS = ("open", "socket.", "subprocess.", "os.system", "os.exec", "sqlite3.", "http.")
_hook_installed = False


def _record_io(event: str, args: tuple[Any, ...]) -> None:
    seen = _watching.get()
    if seen is not None and event.startswith(_IO_EVENTS):
        seen.append(event)


async def test_emitting_from_an_async_handler_does_no_io_on_the_event_loop() -> None:
    global _hook_installed
    if not _hook_installed:  # audit hooks can't be removed; this one is inert when unwatched
        sys.addaudithook(_record_io)
        _hook_installed = True
    memory = MemorySender()
    configure(memory)
    report: dict[str, Any] = {}

    async def handler(request: Request) -> PlainTextResponse:
        seen: list[str] = []
        token = _watching.set(seen)
        try:
            await read_doc(DOC, "io", "loop")
        finally:
            _watching.reset(token)
        report.update(io=seen, thread=threading.get_ident(), emitted=len(memory))
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", handler)],
                    middleware=[Middleware(AuditMiddleware, actor=lambda s: ("u1", "U"),
                                           group="org_1")])
    with serve_asgi(app) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/")).text == "ok"
    # the event was delivered inline, before the response, with no file or socket touched
    assert report["emitted"] == 1 and report["io"] == []
    assert memory[0].actor_id == "u1"
