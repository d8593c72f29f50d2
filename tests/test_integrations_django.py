"""Django middleware: sync through Django's test client, async through AsyncClient and uvicorn."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
import support.django_site  # noqa: F401  (configures Django)
from django.contrib.auth.models import AnonymousUser, User
from django.core.handlers.asgi import ASGIHandler
from django.http import JsonResponse, StreamingHttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from django.utils.asyncio import async_unsafe
from django.utils.deprecation import MiddlewareMixin
from django.utils.functional import SimpleLazyObject
from support.servers import serve_asgi

from audit_instrument import AuditConfigError, audit, audit_actor, configure, current_context
from audit_instrument.integrations.django import AuditMiddleware
from audit_instrument.senders import MemorySender

DOC = ("doc_1", "Quarterly report")


# -- the app: header "authentication" with Django's real user classes ----------------------------


def _user(request: Any) -> User | AnonymousUser:
    number = request.META.get("HTTP_X_USER")
    if number is None:
        return AnonymousUser()
    n = int(number)
    return User(id=n, username=f"user{n}", email=f"user{n}@example.com")


@async_unsafe  # like a real session/user lookup: refuses to run on the event loop
def _load_user_from_database(request: Any) -> User | AnonymousUser:
    return _user(request)


class HeaderAuthMiddleware(MiddlewareMixin):
    """Stands in for AuthenticationMiddleware: lazy ``request.user`` and ``request.auser()``."""

    def process_request(self, request: Any) -> None:
        request.user = SimpleLazyObject(lambda: _load_user_from_database(request))

        async def auser() -> User | AnonymousUser:
            return _user(request)

        request.auser = auser


def organization(request: Any) -> str:
    number = request.META.get("HTTP_X_USER")
    return f"org_{int(number) % 5}" if number is not None else "org_public"


@audit("doc.read", "R", target="doc", metadata=["rid", "step"])
def read_doc(doc: tuple[str, str], rid: str, step: str) -> None:
    return None


def _context_json() -> JsonResponse:
    ctx = current_context()
    return JsonResponse({"actor_id": ctx.actor_id, "actor_name": ctx.actor_name,
                         "group": ctx.group, "location": ctx.location,
                         "user_agent": ctx.user_agent})


def doc_view(request: Any) -> JsonResponse:
    read_doc(DOC, request.GET["rid"], "sync-view")
    return _context_json()


async def adoc_view(request: Any) -> JsonResponse:
    await asyncio.sleep(0)
    read_doc(DOC, request.GET["rid"], "async-view")
    return _context_json()


def stream_view(request: Any) -> StreamingHttpResponse:
    def chunks() -> Iterator[str]:
        for n in range(3):
            read_doc(DOC, "stream", f"chunk{n}")
            yield f"chunk{n}\n"
        read_doc(DOC, "stream", "done")

    return StreamingHttpResponse(chunks(), content_type="text/plain")


async def astream_view(request: Any) -> StreamingHttpResponse:
    async def chunks() -> AsyncIterator[str]:
        for n in range(3):
            read_doc(DOC, "astream", f"chunk{n}")
            yield f"chunk{n}\n"
            await asyncio.sleep(0)
        read_doc(DOC, "astream", "done")

    return StreamingHttpResponse(chunks(), content_type="text/plain")


urlpatterns = [
    path("doc", doc_view),
    path("adoc", adoc_view),
    path("stream", stream_view),
    path("astream", astream_view),
]

_MIDDLEWARE = [
    f"{__name__}.HeaderAuthMiddleware",
    "audit_instrument.integrations.django.AuditMiddleware",
]


@pytest.fixture(autouse=True)
def _django_app() -> Iterator[None]:
    with override_settings(
        ROOT_URLCONF=__name__,
        MIDDLEWARE=_MIDDLEWARE,
        AUDIT_INSTRUMENT={"GROUP": f"{__name__}.organization"},
    ):
        yield


@pytest.fixture
def memory() -> MemorySender:
    sender = MemorySender()
    configure(sender)
    return sender


# -- sync: Django's test client -------------------------------------------------------------------


def test_sync_request_binds_the_django_user(memory: MemorySender) -> None:
    response = Client().get("/doc?rid=1", headers={"x-user": "7", "user-agent": "browser/1"})
    assert response.json() == {
        "actor_id": "7", "actor_name": "user7@example.com", "group": "org_2",
        "location": "127.0.0.1", "user_agent": "browser/1",
    }
    assert [(e.actor_id, e.group, e.metadata["step"]) for e in memory] == [
        ("7", "org_2", "sync-view")
    ]
    assert current_context().actor_id is None  # nothing leaks into this thread


def test_anonymous_user_means_no_actor() -> None:
    response = Client().get("/doc?rid=1")
    assert response.json()["actor_id"] is None
    assert response.json()["group"] == "org_public"


def test_sync_streaming_response_keeps_the_context_until_the_last_chunk(
    memory: MemorySender,
) -> None:
    with audit_actor(id="outer"):
        response = Client().get("/stream", headers={"x-user": "3"})
        assert len(memory) == 0  # the body runs when it is iterated
        chunks = []
        for chunk in response.streaming_content:
            chunks.append(chunk)
            assert current_context().actor_id == "outer"  # restored between chunks
        response.close()
    assert chunks == [b"chunk0\n", b"chunk1\n", b"chunk2\n"]
    assert [(e.metadata["step"], e.actor_id) for e in memory] == [
        ("chunk0", "3"), ("chunk1", "3"), ("chunk2", "3"), ("done", "3")
    ]


def test_trusted_proxies_from_settings() -> None:
    spoofed = {"x-user": "1", "x-forwarded-for": "6.6.6.6, 203.0.113.7"}
    assert Client().get("/doc?rid=1", headers=spoofed).json()["location"] == "127.0.0.1"
    conf = {"TRUSTED_PROXIES": ["127.0.0.1"]}
    with override_settings(AUDIT_INSTRUMENT=conf):
        assert Client().get("/doc?rid=1", headers=spoofed).json()["location"] == "203.0.113.7"


def custom_actor(request: Any) -> dict[str, str]:
    return {"id": "svc_" + request.META.get("HTTP_X_SERVICE", "none"), "name": "Service"}


def test_actor_resolver_from_a_dotted_path() -> None:
    with override_settings(AUDIT_INSTRUMENT={"ACTOR": f"{__name__}.custom_actor"}):
        body = Client().get("/doc?rid=1", headers={"x-service": "billing"}).json()
    assert (body["actor_id"], body["actor_name"], body["group"]) == (
        "svc_billing", "Service", None
    )


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ({"ACTOR": "no.such.module.actor"}, "ACTOR"),
        ({"GROUP": 42}, "GROUP"),
        ({"TRUSTED_PROXIES": ["not-an-ip"]}, "trusted_proxies"),
        ({"ACTORS": "typo"}, "unknown keys"),
    ],
)
def test_bad_settings_are_config_errors(conf: dict[str, Any], message: str) -> None:
    with override_settings(AUDIT_INSTRUMENT=conf), pytest.raises(AuditConfigError, match=message):
        AuditMiddleware(lambda request: None)


# -- async: AsyncClient and a real ASGI server ----------------------------------------------------


async def test_async_request_uses_auser_not_the_lazy_sync_user(memory: MemorySender) -> None:
    # request.user here would raise SynchronousOnlyOperation on the event loop
    response = await AsyncClient().get("/adoc?rid=1", headers={"x-user": "4"})
    assert response.json()["actor_id"] == "4"
    assert [(e.actor_id, e.group) for e in memory] == [("4", "org_4")]


async def test_async_streaming_response_keeps_the_context(memory: MemorySender) -> None:
    response = await AsyncClient().get("/astream", headers={"x-user": "2"})
    chunks = [chunk async for chunk in response.streaming_content]
    assert chunks == [b"chunk0\n", b"chunk1\n", b"chunk2\n"]
    assert [(e.metadata["step"], e.actor_id) for e in memory] == [
        ("chunk0", "2"), ("chunk1", "2"), ("chunk2", "2"), ("done", "2")
    ]
    assert current_context().actor_id is None


@pytest.mark.filterwarnings("ignore:StreamingHttpResponse must consume synchronous iterators")
async def test_django_under_uvicorn_concurrent_sync_and_async_views(
    memory: MemorySender,
) -> None:
    with override_settings(AUDIT_INSTRUMENT={"GROUP": f"{__name__}.organization",
                                             "TRUSTED_PROXIES": ["127.0.0.1"]}):
        app = ASGIHandler()  # what get_asgi_application() returns; reads settings now
    with serve_asgi(app, lifespan="off") as url:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:

            async def one(i: int) -> None:
                view = "doc" if i % 2 else "adoc"
                headers = {"x-user": str(i % 10), "user-agent": f"agent/{i}",
                           "x-forwarded-for": f"198.51.100.{i}"}
                body = (await client.get(f"/{view}?rid={i}", headers=headers)).json()
                assert (body["actor_id"], body["location"], body["user_agent"]) == (
                    str(i % 10), f"198.51.100.{i}", f"agent/{i}"
                )

            await asyncio.gather(*(one(i) for i in range(100)))
            for stream in ("stream", "astream"):
                async with client.stream("GET", f"/{stream}", headers={"x-user": "8"}) as r:
                    assert [line async for line in r.aiter_lines()][-1] == "chunk2"

    by_step: dict[str, int] = {}
    for event in memory:
        step = str(event.metadata["step"])
        by_step[step] = by_step.get(step, 0) + 1
        rid = str(event.metadata["rid"])
        if rid.isdigit():
            i = int(rid)
            assert (event.actor_id, event.group, event.location, event.user_agent) == (
                str(i % 10), f"org_{i % 10 % 5}", f"198.51.100.{i}", f"agent/{i}"
            )
        else:
            assert (event.actor_id, event.group) == ("8", "org_3")
    assert by_step == {"sync-view": 50, "async-view": 50, "chunk0": 2, "chunk1": 2,
                       "chunk2": 2, "done": 2}
