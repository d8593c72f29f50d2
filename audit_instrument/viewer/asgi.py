"""The viewer as an ASGI application, for Starlette and FastAPI (``app.mount``).

``authorize`` and ``actor`` receive Starlette's ``Request`` (FastAPI's is
the same class) and may be ``async``. The viewer's reads run on Starlette's
thread pool, downloads stream from it, so the event loop never waits on
the store.

>>> from audit_instrument.viewer import asgi_app
>>> app.mount("/audit", asgi_app(store, authorize=authorize))   # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ..errors import AuditConfigError
from .core import Viewer, ViewRequest, ViewResponse

try:
    from starlette.concurrency import iterate_in_threadpool, run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
except ImportError as error:  # pragma: no cover - starlette is there wherever FastAPI is
    raise AuditConfigError(
        "the ASGI viewer needs Starlette (pip install starlette, or FastAPI)"
    ) from error

__all__ = ["ASGIViewer"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _view_request(request: Request) -> ViewRequest:
    scope = request.scope
    root = str(scope.get("root_path", "")).rstrip("/")
    path = str(scope.get("path", ""))
    if root and path.startswith(root):  # Starlette keeps the whole path in "path"
        path = path[len(root):]
    query: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        query.setdefault(name, value)
    headers = request.headers
    return ViewRequest(
        method=request.method.upper(), path=path, query=query, root=root,
        client=request.client.host if request.client else "",
        user_agent=headers.get("user-agent", ""), host=headers.get("host", ""),
        origin=headers.get("origin"), fetch_site=headers.get("sec-fetch-site"),
    )


def _starlette(response: ViewResponse) -> Response:
    headers = {name: value for name, value in response.headers if name != "Content-Type"}
    media = dict(response.headers).get("Content-Type")
    if isinstance(response.body, bytes):
        return Response(response.body, response.status, headers, media_type=media)
    return StreamingResponse(iterate_in_threadpool(response.body), response.status, headers,
                             media_type=media)


class ASGIViewer:
    """An ASGI application serving ``viewer``."""

    def __init__(self, viewer: Viewer) -> None:
        self.viewer = viewer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan and websockets: nothing to do here
            return
        request = Request(scope, receive)
        view = _view_request(request)
        if not view.path:
            response: Response = Response(status_code=308,
                                          headers={"Location": view.root + "/"})
        else:
            answer, actor = (await self.viewer.ask_async(request)
                             if self.viewer.needs_authorization(view.path) else (None, None))
            result = await run_in_threadpool(self.viewer.handle, view, answer, actor)
            response = _starlette(result)
        await response(scope, receive, send)
