"""Requests/s of a minimal uvicorn app, plain vs. AuditMiddleware + one ``@audit`` event.

Run:  python benchmarks/bench_asgi.py          (needs only: pip install -e '.[test]')

Both apps are served by uvicorn, each in its own process, at the same time;
a stdlib asyncio HTTP/1.1 keep-alive load generator runs in a third process
(faster than an httpx client, so the server is what is measured). Rounds
alternate plain/instrumented (ABBA) so machine noise mostly cancels out; the
median requests/s of each and their ratio are printed. Target: ratio >= 0.9.
The instrumented app binds actor, group, location and user agent from each
request and records one event into a MemorySender (emptied between rounds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from typing import Any

PATH = "/doc/doc_1"


# -- the apps (in the server process) --------------------------------------------------------


def _apps() -> dict[str, Any]:
    from audit_instrument import audit, configure
    from audit_instrument.integrations.asgi import AuditMiddleware
    from audit_instrument.senders import MemorySender

    memory = MemorySender()
    configure(memory)
    body = b'{"ok":true}'
    start = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
    }
    done = {"type": "http.response.body", "body": body}

    async def plain(scope: Any, receive: Any, send: Any) -> None:
        await send(start)
        await send(done)

    @audit("doc.read", "R", target=lambda doc_id: (doc_id, "Quarterly report"))
    def read_doc(doc_id: str) -> None:
        return None

    async def handler(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/__events":  # how many events, then start afresh
            count = str(len(memory)).encode()
            memory.clear()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-length", str(len(count)).encode())]})
            await send({"type": "http.response.body", "body": count})
            return
        read_doc(scope["path"].rsplit("/", 1)[-1])
        await send(start)
        await send(done)

    def user(scope: Any) -> object:  # as a session lookup would: from the request
        for name, value in scope["headers"]:
            if name == b"x-user":
                return {"id": value.decode(), "email": "user@example.com"}
        return None

    audited = AuditMiddleware(handler, actor=user, group="org_1", trusted_proxies=["127.0.0.1"])
    return {"plain": plain, "audited": audited}


def _serve(variant: str) -> None:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
    sock.bind(("127.0.0.1", 0))
    print(sock.getsockname()[1], flush=True)
    config = uvicorn.Config(_apps()[variant], log_level="warning", access_log=False,
                            lifespan="off", proxy_headers=False)
    uvicorn.Server(config).run(sockets=[sock])


# -- the load generator (in its own process) -------------------------------------------------


async def _load(port: int, seconds: float, connections: int, warmup: float) -> dict[str, float]:
    request = (
        f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: bench/1.0\r\n"
        "X-User: user_1\r\nX-Forwarded-For: 203.0.113.7\r\n\r\n"
    ).encode()
    counting = False
    count = 0
    stop = False

    async def worker() -> None:
        nonlocal count
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not stop:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if counting:
                count += 1
        writer.close()

    tasks = [asyncio.create_task(worker()) for _ in range(connections)]
    await asyncio.sleep(warmup)
    counting, started = True, time.perf_counter()
    await asyncio.sleep(seconds)
    counting, elapsed = False, time.perf_counter() - started
    stop = True
    await asyncio.gather(*tasks)
    return {"requests": count, "seconds": elapsed, "rps": count / elapsed}


def _run_load(port: int, args: argparse.Namespace) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--load", str(port), "--seconds", str(args.seconds),
         "--connections", str(args.connections)],
        check=True, capture_output=True, text=True,
    ).stdout
    return float(json.loads(out)["rps"])


def _events(port: int) -> int:
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /__events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
    return int(data.split(b"\r\n\r\n", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=8, help="rounds per variant (ABBA order)")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured seconds per round")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--serve", choices=["plain", "audited"], help=argparse.SUPPRESS)
    parser.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return
    if args.load:
        print(json.dumps(asyncio.run(_load(args.load, args.seconds, args.connections, 0.3))))
        return

    servers = {
        variant: subprocess.Popen(
            [sys.executable, __file__, "--serve", variant],
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        for variant in ("plain", "audited")
    }
    try:
        ports = {variant: int(proc.stdout.readline()) for variant, proc in servers.items()}  # type: ignore[union-attr]
        results: dict[str, list[float]] = {"plain": [], "audited": []}
        events: list[int] = []
        order = ["plain", "audited", "audited", "plain"]
        for round_ in range(args.rounds * 2):
            variant = order[round_ % 4]
            rps = _run_load(ports[variant], args)
            results[variant].append(rps)
            if variant == "audited":
                events.append(_events(ports["audited"]))
            print(f"  round {round_ + 1:2d}  {variant:8s} {rps:9,.0f} req/s", flush=True)
    finally:
        for proc in servers.values():
            proc.terminate()
            proc.wait(10)

    plain = statistics.median(results["plain"])
    audited = statistics.median(results["audited"])
    ratio = audited / plain
    print(f"plain app                         median {plain:9,.0f} req/s")
    print(f"AuditMiddleware + @audit event    median {audited:9,.0f} req/s "
          f"({min(events):,}..{max(events):,} events recorded per round)")
    print(f"ratio instrumented/plain          {ratio:.3f}  (target >= 0.90: "
          f"{'met' if ratio >= 0.9 else 'NOT met'})")


if __name__ == "__main__":
    main()
