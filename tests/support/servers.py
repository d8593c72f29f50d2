"""Real servers on 127.0.0.1 (random port) for the integration tests.

Each runs in a thread started by the test and is stopped, and its thread
joined, when the ``with`` block ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from werkzeug.serving import make_server

from .waiting import wait_for


@contextmanager
def serve_asgi(app: Any, **options: Any) -> Iterator[str]:
    """Serve ``app`` with uvicorn; yields the base URL.

    ``proxy_headers`` is off: the tests decide which proxies to trust, not
    uvicorn (which would otherwise believe X-Forwarded-For from 127.0.0.1).
    """
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        proxy_headers=False,
        access_log=False,
        **options,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), timeout=15)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        assert not thread.is_alive(), "uvicorn did not stop"


@contextmanager
def serve_wsgi(app: Callable[..., Any]) -> Iterator[str]:
    """Serve ``app`` with werkzeug's threaded development server; yields the base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="werkzeug-test", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.socket.getsockname()[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(15)
        assert not thread.is_alive(), "werkzeug server did not stop"
